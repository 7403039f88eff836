"""Every bad input gets its contract error and disturbs nothing: no job, no crash."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator

import httpx
import pytest
import redis
from PIL import Image

from services.common.redis_server import RedisServer
from tests.conftest import IDLE_MODEL, TEST_MODEL
from tests.images import encode, jpeg, make_image, png_declaring
from tests.integration.helpers import error_code, files, predict, submit
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


def _job_keys(stack: Stack) -> int:
    client = redis.Redis.from_url(stack.redis_url)
    return sum(1 for _ in client.scan_iter(match="vq:job:*", count=500))


def _ico() -> bytes:
    buf = io.BytesIO()
    make_image(1, (32, 32)).save(buf, format="ICO")
    return buf.getvalue()


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_UPLOADS = [
    ("text", b"just some text, not an image", 415, "unsupported_media_type"),
    ("html", b"<html><body>hi</body></html>", 415, "unsupported_media_type"),
    ("ico", _ico(), 415, "unsupported_media_type"),
    ("empty", b"", 400, "invalid_image"),
    ("truncated_jpeg", _half(jpeg(5)), 400, "invalid_image"),
    ("truncated_png", _half(encode(make_image(5), "PNG")), 400, "invalid_image"),
    ("truncated_webp", _half(encode(make_image(5), "WEBP")), 400, "invalid_image"),
    ("pixel_bomb_png", png_declaring(30000, 30000), 413, "payload_too_large"),
]


@pytest.fixture()
def no_new_jobs(stack: Stack) -> Iterator[None]:
    before = _job_keys(stack)
    yield
    assert _job_keys(stack) == before, "a rejected request left a job behind"


@pytest.mark.parametrize(
    ("name", "data", "status", "code"), BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS]
)
def test_bad_upload_is_refused(
    stack: Stack, no_new_jobs: None, name: str, data: bytes, status: int, code: str
) -> None:
    resp = predict(stack.url, files((f"{name}.jpg", data)))
    assert resp.status_code == status, resp.text
    assert error_code(resp) == code
    assert resp.json()["error"]["message"]


MIXED = [
    ("good.jpg", jpeg(1)),
    ("bad.txt", b"nope"),
    ("cut.jpg", _half(jpeg(5))),
    ("bomb.png", png_declaring(30000, 30000)),
    ("also_good.jpg", jpeg(2)),
]
REFUSED = {
    "bad.txt": "unsupported_media_type",
    "cut.jpg": "invalid_image",
    "bomb.png": "payload_too_large",
}


def test_bad_files_among_good_ones_get_their_own_error_in_the_200(stack: Stack) -> None:
    before = _job_keys(stack)
    resp = predict(stack.url, files(*MIXED))
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert [p["filename"] for p in preds] == [name for name, _ in MIXED]  # upload order
    for pred in preds:
        if pred["filename"] in REFUSED:
            assert pred["error"]["code"] == REFUSED[pred["filename"]]
            assert pred["filename"] in pred["error"]["message"]
            assert "job_id" not in pred
        else:
            assert "error" not in pred and len(pred["top_k"]) == 5
    assert _job_keys(stack) == before + 2  # only the good files became jobs


def test_jobs_route_follows_the_same_rule(stack: Stack) -> None:
    data = {"model": TEST_MODEL}
    resp = httpx.post(f"{stack.url}/v1/jobs", files=files(*MIXED), data=data, timeout=30)
    assert resp.status_code == 202, resp.text
    jobs = resp.json()["jobs"]
    assert [j["filename"] for j in jobs] == [name for name, _ in MIXED]
    assert {j["filename"]: j["error"]["code"] for j in jobs if "error" in j} == REFUSED
    assert all("job_id" in j for j in jobs if j["filename"] not in REFUSED)


def test_every_file_bad_is_the_first_files_error(stack: Stack, no_new_jobs: None) -> None:
    resp = predict(stack.url, files(("bad.txt", b"nope"), ("cut.jpg", _half(jpeg(5)))))
    assert resp.status_code == 415
    err = resp.json()["error"]
    assert err["filename"] == "bad.txt"
    assert [r["error"]["code"] for r in err["refused"]] == [
        "unsupported_media_type",
        "invalid_image",
    ]


def test_unknown_model_is_404(stack: Stack, no_new_jobs: None) -> None:
    resp = predict(stack.url, files(("a.jpg", jpeg(1))), model="no_such_model")
    assert resp.status_code == 404
    assert error_code(resp) == "model_not_found"
    assert "'no_such_model' is not served" in resp.json()["error"]["message"]
    # A 100 KB model name is named, not echoed whole.
    resp = predict(stack.url, files(("a.jpg", jpeg(1))), model="m" * 100_000)
    assert resp.status_code == 404
    message = resp.json()["error"]["message"]
    assert len(message) < 400 and "(100000 chars)" in message


@pytest.mark.parametrize(
    "form",
    [{"top_k": "0"}, {"top_k": "abc"}, {"timeout": "-1"}],
    ids=["top_k0", "top_k_text", "timeout"],
)
def test_bad_fields_are_422(stack: Stack, no_new_jobs: None, form: dict[str, str]) -> None:
    resp = predict(stack.url, files(("a.jpg", jpeg(1))), **form)
    assert resp.status_code == 422
    assert error_code(resp) == "validation_error"


def test_no_file_is_422(stack: Stack, no_new_jobs: None) -> None:
    resp = httpx.post(
        f"{stack.url}/v1/predict", data={"model": TEST_MODEL}, files={"x": ("a", b"1")}
    )
    assert resp.status_code == 422


def test_json_body_is_415(stack: Stack, no_new_jobs: None) -> None:
    resp = httpx.post(f"{stack.url}/v1/predict", json={"file": "abc"})
    assert resp.status_code == 415


def test_too_many_files_is_413(stack: Stack, no_new_jobs: None) -> None:
    parts = files(*[(f"{i}.jpg", jpeg(1, (32, 32))) for i in range(40)])
    resp = predict(stack.url, parts)
    assert resp.status_code == 413
    assert error_code(resp) == "payload_too_large"


def test_oversized_body_with_content_length_is_413(stack: Stack, no_new_jobs: None) -> None:
    big = jpeg(1, (64, 64)) + b"\x00" * (3 * 1024 * 1024)
    resp = predict(stack.url, files(("big.png", big)))
    assert resp.status_code == 413
    assert error_code(resp) == "payload_too_large"


def test_oversized_chunked_body_is_413(stack: Stack, no_new_jobs: None) -> None:
    # No Content-Length: the limit must hold while streaming, without buffering it all.
    boundary = "vqboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(64):
            yield b"\xff" * 65536  # 4 MiB in all, twice the limit

    resp = httpx.post(
        f"{stack.url}/v1/predict",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        timeout=30,
    )
    assert resp.status_code == 413
    assert error_code(resp) == "payload_too_large"


def test_corrupt_image_fails_only_its_own_job(stack: Stack) -> None:
    # Passes the header and trailer checks, fails to decode in the worker.
    good = jpeg(11)
    data = bytearray(jpeg(12))
    middle = len(data) // 2
    data[middle : middle + 500] = b"\xff" * 500
    resp = predict(stack.url, files(("good.jpg", good), ("corrupt.jpg", bytes(data))))
    assert resp.status_code == 200, resp.text
    good_pred, bad_pred = resp.json()["predictions"]
    assert len(good_pred["top_k"]) == 5
    assert bad_pred["error"]["code"] == "invalid_image"
    # Alone, the same image is a 400 with its job id, and the worker keeps serving.
    alone = predict(stack.url, files(("corrupt.jpg", bytes(data))))
    assert alone.status_code == 400
    assert error_code(alone) == "invalid_image"
    (job_id,) = alone.json()["error"]["job_ids"]
    record = httpx.get(f"{stack.url}/v1/jobs/{job_id}").json()
    assert record["status"] == "failed"
    assert record["timings"]["deliveries"] == 1  # failed once, not redelivered in a loop
    assert predict(stack.url, files(("after.jpg", good))).status_code == 200


def test_queue_full_is_429_with_retry_after(
    redis_server: RedisServer, stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    small = Stack(redis_server.url, tmp_path_factory.mktemp("small"), dict(stack.env))
    # Other tests may have left cancelled jobs' messages in this unconsumed queue.
    already = redis.Redis.from_url(redis_server.url).llen(f"gpu.{IDLE_MODEL}")
    small.env["VISIONQ_QUEUE_MAX_DEPTH"] = str(already + 3)
    try:
        small.start_api()
        ids = submit(
            small.url, files(*[(f"{i}.jpg", jpeg(i, (64, 64))) for i in range(3)]), model=IDLE_MODEL
        )
        resp = predict(small.url, files(("x.jpg", jpeg(1, (64, 64)))), model=IDLE_MODEL)
        assert resp.status_code == 429
        assert error_code(resp) == "queue_full"
        assert int(resp.headers["retry-after"]) >= 1
        for job_id in ids:
            assert httpx.delete(f"{small.url}/v1/jobs/{job_id}").status_code == 200
    finally:
        small.stop_all()


def test_filename_is_sanitised(stack: Stack) -> None:
    resp = predict(stack.url, files(("../../etc/pass\x07wd.jpg", jpeg(13))))
    assert resp.status_code == 200
    name = resp.json()["predictions"][0]["filename"]
    assert name.endswith("wd.jpg")
    assert "/" not in name and ".." not in name and "\x07" not in name


def test_api_survives_a_client_that_hangs_up(stack: Stack) -> None:
    sock = socket.create_connection(("127.0.0.1", stack.api_port))
    sock.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
    )
    sock.close()
    assert predict(stack.url, files(("a.jpg", jpeg(14)))).status_code == 200


def _unused() -> Image.Image:  # keeps PIL import honest for type checkers
    return make_image(0)


def _rejected(stack: Stack, reason: str) -> float:
    line = f'visionq_jobs_rejected_total{{model="{TEST_MODEL}",reason="{reason}"}} '
    text = httpx.get(f"{stack.url}/metrics").text
    found = [ln for ln in text.splitlines() if ln.startswith(line)]
    assert found, f"{line!r} missing: the series must exist from start-up"
    return float(found[0].split()[-1])


def test_refusals_are_counted_by_reason(stack: Stack) -> None:
    cases = [
        ("unsupported_media_type", b"not an image at all"),
        ("invalid_image", _half(jpeg(6))),
        ("payload_too_large", png_declaring(30000, 30000)),
    ]
    before = {reason: _rejected(stack, reason) for reason, _ in cases}
    for reason, data in cases:
        resp = predict(stack.url, files(("x.bin", data)), model=TEST_MODEL)
        assert error_code(resp) == reason
    for reason, _ in cases:
        assert _rejected(stack, reason) == before[reason] + 1, reason
    assert "_created" not in httpx.get(f"{stack.url}/metrics").text
