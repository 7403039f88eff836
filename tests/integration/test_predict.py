"""The happy paths over real HTTP, a real worker process and a real redis-server."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

from tests.conftest import IDLE_MODEL, TEST_MODEL, TINY_LABELS, TINY_MODEL
from tests.images import encode, jpeg, make_image
from tests.integration.helpers import files, job, predict, submit, wait_jobs
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_predict_each_format(stack: Stack, fmt: str) -> None:
    data = encode(make_image(7, (200, 300)), fmt)
    resp = predict(stack.url, files((f"x.{fmt.lower()}", data)), top_k=3)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == TEST_MODEL
    (pred,) = body["predictions"]
    assert pred["filename"] == f"x.{fmt.lower()}"
    assert len(pred["top_k"]) == 3
    scores = [entry["score"] for entry in pred["top_k"]]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(e["label"], str) and e["label"] for e in pred["top_k"])
    assert pred["timings"]["batch_size"] >= 1
    assert pred["timings"]["inference_ms"] > 0


def test_jobs_then_poll(stack: Stack) -> None:
    ids = submit(stack.url, files(("a.jpg", jpeg(1)), ("b.jpg", jpeg(2))), top_k=2)
    records = wait_jobs(stack.url, ids)
    for record in records:
        assert record["status"] == "succeeded", record
        assert len(record["result"]["top_k"]) == 2
        assert record["timings"]["queued_ms"] >= 0
    # The image bytes are dropped when the job ends; the record stays until its TTL.
    client = stack_redis(stack)
    assert all(client.exists(f"vq:img:{i}") == 0 for i in ids)
    assert all(client.ttl(f"vq:job:{i}") > 0 for i in ids)


def stack_redis(stack: Stack) -> object:
    import redis

    return redis.Redis.from_url(stack.redis_url)


def test_unknown_job_is_404(stack: Stack) -> None:
    resp = httpx.get(f"{stack.url}/v1/jobs/{'0' * 32}")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "job_not_found"


def test_cancel_queued_job(stack: Stack) -> None:
    # No worker consumes the idle model, so its job stays queued until cancelled.
    ids = submit(stack.url, files(("a.jpg", jpeg(3))), model=IDLE_MODEL)
    assert job(stack.url, ids[0])["status"] == "queued"
    resp = httpx.delete(f"{stack.url}/v1/jobs/{ids[0]}")
    assert resp.status_code == 200, resp.text
    assert job(stack.url, ids[0])["status"] == "cancelled"
    again = httpx.delete(f"{stack.url}/v1/jobs/{ids[0]}")
    assert again.status_code == 409


def test_cannot_cancel_finished_job(stack: Stack) -> None:
    ids = submit(stack.url, files(("a.jpg", jpeg(4))))
    wait_jobs(stack.url, ids)
    resp = httpx.delete(f"{stack.url}/v1/jobs/{ids[0]}")
    assert resp.status_code == 409
    assert job(stack.url, ids[0])["status"] == "succeeded"


def _concurrent_predicts(url: str, images: list[bytes]) -> list[dict[str, object]]:
    def one(i: int) -> dict[str, object]:
        resp = predict(url, files((f"img{i}.jpg", images[i])), top_k=5)
        assert resp.status_code == 200, resp.text
        pred: dict[str, object] = resp.json()["predictions"][0]
        return pred

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(one, range(len(images))))


def test_concurrent_uploads_form_batches(stack: Stack) -> None:
    images = [jpeg(100 + i) for i in range(16)]
    sizes: list[int] = []
    for _ in range(3):  # a few rounds: batching depends on arrival timing
        preds = _concurrent_predicts(stack.url, images)
        sizes += [int(p["timings"]["batch_size"]) for p in preds]  # type: ignore[index]
    assert max(sizes) > 1, sizes


def _direct_topk(weights: Path, images: list[bytes], k: int) -> list[tuple[list[int], list[float]]]:
    """The same model called directly in this process, with torchvision's own transforms."""
    model = mobilenet_v3_small()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    transform = MobileNet_V3_Small_Weights.DEFAULT.transforms()
    out = []
    with torch.no_grad():
        for data in images:
            x = transform(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)
            probs = torch.softmax(model(x), dim=1)[0]
            scores, idx = probs.topk(k)
            out.append((idx.tolist(), scores.tolist()))
    return out


def test_batched_and_single_equal_direct(stack: Stack, seeded_weights: Path) -> None:
    images = [jpeg(200 + i, (320 + 16 * i, 240)) for i in range(16)]
    expected = _direct_topk(seeded_weights, images, 5)
    batched = _concurrent_predicts(stack.url, images)
    singles = []
    for i, data in enumerate(images[:4]):
        resp = predict(stack.url, files((f"s{i}.jpg", data)), top_k=5)
        singles.append(resp.json()["predictions"][0])
    assert any(int(p["timings"]["batch_size"]) > 1 for p in batched)  # type: ignore[index]
    assert all(int(p["timings"]["batch_size"]) == 1 for p in singles)
    for pred, (idx, scores) in zip(batched + singles, expected + expected[:4], strict=True):
        got = pred["top_k"]
        assert [e["index"] for e in got] == idx  # type: ignore[index, union-attr]
        np.testing.assert_allclose([e["score"] for e in got], scores, atol=1e-4)  # type: ignore[index, union-attr]


def test_models_route(stack: Stack) -> None:
    body = httpx.get(f"{stack.url}/v1/models").json()
    by_name = {m["name"]: m for m in body["models"]}
    assert by_name[TEST_MODEL]["live_workers"] == 1
    assert by_name[TEST_MODEL]["input_size"] == 224
    assert by_name[TEST_MODEL]["weights"]["source"] == "file"
    assert by_name[IDLE_MODEL]["live_workers"] == 0


def test_health_and_metrics(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/healthz").status_code == 200
    assert httpx.get(f"{stack.url}/readyz").status_code == 200
    predict(stack.url, files(("m.jpg", jpeg(9))))
    text = httpx.get(f"{stack.url}/metrics").text
    assert 'visionq_http_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert f'visionq_queue_depth{{model="{TEST_MODEL}"}}' in text
    assert f'visionq_jobs_submitted_total{{model="{TEST_MODEL}"}}' in text


def test_custom_torchscript_model_with_labels_file(stack: Stack) -> None:
    resp = predict(stack.url, files(("t.png", encode(make_image(3), "PNG"))), model=TINY_MODEL)
    assert resp.status_code == 200, resp.text
    top = resp.json()["predictions"][0]["top_k"]
    assert len(top) == 5
    assert all(e["label"] == TINY_LABELS[e["index"]] for e in top)
    scores = [e["score"] for e in top]
    assert scores == sorted(scores, reverse=True)
    assert 0 < sum(scores) <= 1.0 + 1e-6  # five softmax scores of ten classes


def test_worker_metrics_on_its_own_port(stack: Stack) -> None:
    predict(stack.url, files(("w.jpg", jpeg(21))))
    text = httpx.get(f"http://127.0.0.1:{stack.worker_metrics_port}/metrics").text
    count = f'visionq_batch_size_count{{device="cpu",model="{TEST_MODEL}",task="classification"}}'
    assert count in text
    assert 'visionq_worker_up{device="cpu"} 1.0' in text
    assert "visionq_jobs_completed_total{" in text
    # No GPU here: the GPU series are absent, not fake zeros.
    assert "visionq_gpu_memory_allocated_bytes{" not in text


def test_models_route_counts_both_lanes(stack: Stack) -> None:
    def lanes() -> dict[str, int]:
        body = httpx.get(f"{stack.url}/v1/models").json()
        entry = next(m for m in body["models"] if m["name"] == IDLE_MODEL)
        assert entry["queue_depth"] == sum(entry["queue_depth_by_lane"].values())
        by_lane: dict[str, int] = entry["queue_depth_by_lane"]
        return by_lane

    before = lanes()
    resp = httpx.post(
        f"{stack.url}/v1/batches",
        files=files(("a.jpg", jpeg(31, (64, 64))), ("b.jpg", jpeg(32, (64, 64)))),
        data={"model": IDLE_MODEL},
    )
    assert resp.status_code == 201, resp.text
    after = lanes()
    assert after["bulk"] == before["bulk"] + 2
    assert after["interactive"] == before["interactive"]
    assert httpx.delete(f"{stack.url}/v1/batches/{resp.json()['batch_id']}").status_code == 200


def test_a_deadline_missed_is_504_even_when_the_job_ended_expired_in_time(stack: Stack) -> None:
    """With a timeout of a millisecond the worker reaches the job after its deadline and ends
    it ``expired`` (README, "Delivery rules") -- often before the API's wait gives up. Either
    way the waiting client gets 504 with the job id, never a 200 that only looks fine."""
    for seed in range(4):
        resp = predict(stack.url, files(("late.jpg", jpeg(seed, (96, 96)))), timeout=0.001)
        assert resp.status_code == 504, resp.text
        assert resp.json()["error"]["code"] == "timeout"
        (job_id,) = resp.json()["error"]["job_ids"]
        (record,) = wait_jobs(stack.url, [job_id], timeout=60)
        assert record["status"] == "expired"
    # With a refused file beside it: still 504 (the refusal's entry is no answer), and the
    # refusal is listed as a 4xx lists it.
    for seed in range(6):
        parts = files(("late.jpg", jpeg(seed, (96, 96))), ("notes.txt", b"not an image"))
        resp = predict(stack.url, parts, timeout=0.001)
        assert resp.status_code == 504, resp.text
        error = resp.json()["error"]
        assert len(error["job_ids"]) == 1
        assert [r["filename"] for r in error["refused"]] == ["notes.txt"]
        assert error["refused"][0]["error"]["code"] == "unsupported_media_type"
