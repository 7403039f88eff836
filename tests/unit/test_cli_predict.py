"""``visionq predict``: file collection and the client against a fake API on loopback."""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.cli.main import main
from services.cli.predict import PredictOptions, Unreachable, collect_images, predict_files
from services.cli.predict_output import JsonlSink
from services.cli.predict_summary import Summary
from services.common.errors import ConfigError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff fake")
    return path


def test_collect_recurses_folders_and_skips_non_images(tmp_path: Path) -> None:
    a = _touch(tmp_path / "imgs" / "a.jpg")
    b = _touch(tmp_path / "imgs" / "sub" / "deeper" / "b.PNG")
    c = _touch(tmp_path / "imgs" / "sub" / "c.webp")
    d = _touch(tmp_path / "imgs" / "d.jpeg")
    _touch(tmp_path / "imgs" / "notes.txt")
    _touch(tmp_path / "imgs" / "sub" / "model.pt")
    explicit = _touch(tmp_path / "raw.bin")
    found = collect_images([tmp_path / "imgs", explicit, a])
    assert sorted(found) == sorted([a, b, c, d, explicit])
    assert len(found) == 5  # a named twice counts once


def test_collect_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        collect_images([tmp_path / "nope"])


class _FakeApi(BaseHTTPRequestHandler):
    seen_fields: list[dict[str, bool]] = []  # noqa: RUF012 - shared by the handler threads

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.path == "/v1/predict"
        assert self.headers["Content-Type"].startswith("multipart/form-data")
        match = re.search(rb'name="file"; filename="([^"]+)"', body)
        assert match is not None
        name = match.group(1).decode()
        type(self).seen_fields.append(
            {"model": b'name="model"' in body, "top_k": b'name="top_k"' in body}
        )
        if "bad" in name:
            status = 400
            answer: dict[str, object] = {
                "error": {"code": "invalid_image", "message": "cannot decode"}
            }
        else:
            status = 200
            prediction = {"filename": name, "job_id": "j-" + name, "top_k": [], "timings": {}}
            answer = {"model": "m", "predictions": [prediction]}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        # visionq predict asks once what the API serves before it uploads anything.
        if self.path == "/healthz":
            data = json.dumps({"status": "ok"}).encode()
        else:
            assert self.path == "/v1/models", self.path
            models = [{"name": "m", "task": "classification", "default": True}]
            data = json.dumps({"models": models}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeApi.seen_fields = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_predict_files_writes_one_line_per_file(tmp_path: Path, fake_api: str) -> None:
    files = [_touch(tmp_path / f"img{i}.jpg") for i in range(5)] + [_touch(tmp_path / "bad.png")]
    out, progress = io.StringIO(), io.StringIO()
    opts = PredictOptions(url=fake_api, model="m", top_k=3, concurrency=3)
    summary = predict_files(files, opts, JsonlSink(out), progress)
    failed = summary.failed
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert failed == 1
    assert len(records) == 6
    by_name = {r["filename"]: r for r in records}
    assert by_name["bad.png"]["error"]["code"] == "invalid_image"
    assert by_name["img3.jpg"]["job_id"] == "j-img3.jpg"
    assert by_name["img3.jpg"]["path"] == str(tmp_path / "img3.jpg")
    assert all(f == {"model": True, "top_k": True} for f in _FakeApi.seen_fields)
    assert "6/6" in progress.getvalue()
    assert summary.line().startswith("predict: 5 done, 1 failed (invalid_image 1)")


def test_predict_command_exit_codes(
    tmp_path: Path, fake_api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _touch(tmp_path / "ok" / "a.jpg")
    _touch(tmp_path / "ok" / "b.png")
    out = tmp_path / "results.jsonl"
    assert main(["predict", str(tmp_path / "ok"), "--url", fake_api, "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2
    _touch(tmp_path / "ok" / "bad.jpg")
    assert main(["predict", str(tmp_path / "ok"), "--url", fake_api]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and sum("error" in json.loads(x) for x in lines) == 1


def test_predict_stops_when_the_api_goes_away(tmp_path: Path) -> None:
    images = [_touch(tmp_path / f"a{i}.jpg") for i in range(5)]
    out = io.StringIO()
    opts = PredictOptions(url="http://127.0.0.1:9", timeout_s=1.0, retries=0, concurrency=1)
    summary = Summary(total=5)
    with pytest.raises(Unreachable):
        predict_files(images, opts, JsonlSink(out), io.StringIO(), summary=summary)
    assert out.getvalue() == ""  # nothing written: every file is left for --resume
    assert summary.not_sent == 5


def test_predict_without_images_exits_2(tmp_path: Path) -> None:
    _touch(tmp_path / "notes.txt")
    assert main(["predict", str(tmp_path)]) == 2
