"""`visionq predict` end to end: the real command against the real stack."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_MODEL
from tests.images import encode, jpeg, make_image
from tests.integration.stack import ROOT, Stack

pytestmark = pytest.mark.integration


def _corrupt() -> bytes:
    # Passes the API's header and trailer checks, fails to decode in the worker.
    data = bytearray(jpeg(12))
    data[len(data) // 2 : len(data) // 2 + 500] = b"\xff" * 500
    return bytes(data)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder tree: three images at various depths, a corrupt JPEG and a text file."""
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.jpg").write_bytes(jpeg(1, (64, 64)))
    (root / "sub" / "b.png").write_bytes(encode(make_image(2, (64, 48)), "PNG"))
    (root / "sub" / "deeper" / "c.webp").write_bytes(encode(make_image(3, (64, 64)), "WEBP"))
    (root / "sub" / "broken.jpg").write_bytes(_corrupt())
    (root / "notes.txt").write_text("not an image")
    return root


def _predict(stack: Stack, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "services.cli.main", "predict", *args, "--url", stack.url]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def _jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_folder_to_csv_with_failures(stack: Stack, photos: Path) -> None:
    out = photos.parent / "results.csv"
    run = _predict(stack, photos.parent, "photos", "--out", str(out), "--top-k", "2",
                   "--model", TEST_MODEL, "--concurrency", "3")  # fmt: skip
    assert run.returncode == 1, run.stderr  # one image failed
    rows = {row["filename"]: row for row in csv.DictReader(out.open())}
    assert sorted(rows) == ["a.jpg", "b.png", "broken.jpg", "c.webp"]  # notes.txt skipped
    assert rows["broken.jpg"]["status"] == "failed"
    assert rows["broken.jpg"]["error_code"] == "invalid_image"
    for name in ("a.jpg", "b.png", "c.webp"):
        assert rows[name]["status"] == "ok" and rows[name]["model"] == TEST_MODEL
        assert rows[name]["top_k"].count("=") == 2 and float(rows[name]["score"]) > 0
    assert "3 done, 1 failed (invalid_image 1)" in run.stderr
    assert "images/s" in run.stderr


def test_resume_sends_only_what_is_not_done(stack: Stack, photos: Path) -> None:
    out = photos.parent / "results.jsonl"
    first = _predict(stack, photos.parent, "photos", "--out", str(out))
    assert first.returncode == 1, first.stderr
    records = _jsonl(out)
    assert len(records) == 4
    # An interrupted run: the first good record kept, the next one cut half way.
    good = next(r for r in records if "error" not in r)
    lines = [json.dumps(good), json.dumps(records[1] if records[1] != good else records[2])]
    out.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    second = _predict(stack, photos.parent, "photos", "--out", str(out), "--resume")
    assert second.returncode == 1, second.stderr  # broken.jpg fails again
    assert "2 done, 1 failed (invalid_image 1), 1 skipped" in second.stderr
    (photos / "sub" / "broken.jpg").unlink()
    third = _predict(stack, photos.parent, "photos", "--out", str(out), "--resume")
    assert third.returncode == 0, third.stderr
    assert "0 done, 0 failed, 3 skipped" in third.stderr
    done = [r for r in _jsonl_lenient(out) if "error" not in r]
    assert sorted(str(r["filename"]) for r in done) == ["a.jpg", "b.png", "c.webp"]


def _jsonl_lenient(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # the half line the "interrupted" run left
    return out


def test_glob_and_stdout(stack: Stack, photos: Path) -> None:
    run = _predict(stack, photos.parent, "photos/**/*.png", "photos/*.jpg")
    assert run.returncode == 0, run.stderr
    names = sorted(str(r["filename"]) for r in map(json.loads, run.stdout.splitlines()))
    assert names == ["a.jpg", "b.png"]


def test_no_images_and_unreachable_server(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    assert _predict(stack, tmp_path, ".").returncode == 2
    (tmp_path / "a.jpg").write_bytes(jpeg(1, (64, 64)))
    cmd = [sys.executable, "-m", "services.cli.main", "predict", "a.jpg",
           "--url", "http://127.0.0.1:9", "--retries", "0"]  # fmt: skip
    run = subprocess.run(cmd, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 1
    assert json.loads(run.stdout)["error"]["code"] == "connection_error"
