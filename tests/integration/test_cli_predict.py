"""`visionq predict` end to end: the real command against the real stack."""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.common.redis_server import free_port
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
    assert second.returncode == 1, second.stderr  # broken.jpg had no row: sent, fails
    assert "2 done, 1 failed (invalid_image 1), 1 skipped" in second.stderr
    third = _predict(stack, photos.parent, "photos", "--out", str(out), "--resume")
    # A file that is itself bad is done: not sent again, and the run is clean.
    assert third.returncode == 0, third.stderr
    assert "0 done, 0 failed, 4 skipped" in third.stderr
    assert sorted(str(r["filename"]) for r in _jsonl(out)) == [
        "a.jpg",
        "b.png",
        "broken.jpg",
        "c.webp",
    ]


def test_one_row_per_file_transient_retried_permanent_only_on_request(
    stack: Stack, photos: Path
) -> None:
    out = photos.parent / "results.csv"
    first = _predict(stack, photos.parent, "photos", "--out", str(out), "--model", TEST_MODEL)
    assert first.returncode == 1, first.stderr
    rows = list(csv.DictReader(out.open()))
    # A transient failure (as a timeout or a 503 leaves it) for a.jpg, written twice.
    for row in rows:
        if row["filename"] == "a.jpg":
            row.update(status="failed", error_code="timeout", label="", score="", top_k="")
    with out.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + [r for r in rows if r["filename"] == "a.jpg"])
    again = _predict(stack, photos.parent, "photos", "--out", str(out), "--resume")
    assert again.returncode == 0, again.stderr
    assert "1 done, 0 failed, 3 skipped" in again.stderr  # only a.jpg was sent
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["filename"] for r in rows) == ["a.jpg", "b.png", "broken.jpg", "c.webp"]
    assert {r["filename"]: r["status"] for r in rows}["a.jpg"] == "ok"
    forced = _predict(
        stack, photos.parent, "photos", "--out", str(out), "--resume", "--retry-failed"
    )
    assert forced.returncode == 1, forced.stderr
    assert "0 done, 1 failed (invalid_image 1), 3 skipped" in forced.stderr
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["filename"] for r in rows) == ["a.jpg", "b.png", "broken.jpg", "c.webp"]


def test_summary_names_failed_files_and_counts_non_images(stack: Stack, tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    for i in range(7):
        (root / f"bad{i}.jpg").write_bytes(_corrupt())
    (root / "good.jpg").write_bytes(jpeg(1, (64, 64)))
    (root / "notes.txt").write_text("x")
    (root / "model.pt").write_bytes(b"x")
    out = tmp_path / "r.jsonl"
    run = _predict(stack, tmp_path, "mixed", "--out", str(out))
    assert run.returncode == 1, run.stderr
    assert "1 done, 7 failed (invalid_image 7), 2 non-image files skipped" in run.stderr
    failed_line = next(line for line in run.stderr.splitlines() if line.startswith("failed: "))
    assert failed_line.count("(invalid_image)") == 5 and "mixed/bad" in failed_line
    assert f"... and 2 more: every failed file is in {out}" in run.stderr
    # The bar's last rate and the summary's are one figure, over one clock.
    rates = re.findall(r"([0-9.]+) images/s", run.stderr)
    assert len(rates) >= 2 and rates[-1] == rates[-2], run.stderr


FILES = 600


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_the_summary_and_the_resume_command(stack: Stack, tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    # Enough files that the interrupt lands mid-run even on a loaded machine (a 200-file run
    # once finished before a descheduled test process sent its SIGINT).
    for i in range(FILES):
        (root / f"img{i:03d}.jpg").write_bytes(jpeg(i, (32, 32)))
    out = tmp_path / "r.jsonl"
    args = ["predict", "many", "--out", str(out), "--concurrency", "1", "--url", stack.url]
    cmd = [sys.executable, "-m", "services.cli.main", *args]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    # A shell without job control starts background commands with SIGINT ignored, and
    # Python then keeps it ignored: the run under test gets the terminal's default back.
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
    )
    deadline = time.monotonic() + 120
    while not (out.exists() and len(out.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "predict: " in err and " done, 0 failed" in err
    expected = shlex.join(["visionq", *args, "--resume"])
    assert f"interrupted; to continue: {expected}" in err
    # The printed command finishes the job, one row per file.
    resumed = _predict(stack, tmp_path, *args[1:-2], "--resume")  # _predict adds --url
    assert resumed.returncode == 0, resumed.stderr
    assert len(_jsonl(out)) == FILES
    assert len({r["path"] for r in _jsonl(out)}) == FILES


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
    for i in range(19):
        (tmp_path / f"a{i}.jpg").write_bytes(jpeg(i, (64, 64)))
    port = free_port()  # nothing listens there
    cmd = [sys.executable, "-m", "services.cli.main", "predict", ".", "--out", "r.jsonl",
           "--url", f"http://127.0.0.1:{port}"]  # fmt: skip
    start = time.monotonic()
    run = subprocess.run(cmd, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr  # once, not once per file
    assert f"cannot reach the API at http://127.0.0.1:{port}" in lines[0]
    assert "ConnectError" in lines[0]
    assert not (tmp_path / "r.jsonl").exists() or not (tmp_path / "r.jsonl").read_text()
    assert time.monotonic() - start < 15  # was 17.6 s for 19 files


def test_request_level_mistakes_stop_the_run_once(stack: Stack, tmp_path: Path) -> None:
    # A wrong model, a bad param or a URL that is no visionq API would fail every file the
    # same way: the run says so once and sends nothing more.
    for i in range(6):
        (tmp_path / f"a{i}.jpg").write_bytes(jpeg(i, (64, 64)))
    run = _predict(stack, tmp_path, ".", "--model", "nosuch", "--out", "m.jsonl")
    assert run.returncode == 2, run.stderr
    assert "model 'nosuch' is not served" in run.stderr and TEST_MODEL in run.stderr
    assert not (tmp_path / "m.jsonl").exists() or not (tmp_path / "m.jsonl").read_text()
    run = _predict(stack, tmp_path, ".", "--param", "top_k=0", "--out", "p.jsonl")
    assert run.returncode == 2, run.stderr
    assert "validation_error" in run.stderr and "nothing else sent" in run.stderr
    assert len(_jsonl(tmp_path / "p.jsonl")) < 6
    port = free_port()
    foreign = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        cmd = [sys.executable, "-m", "services.cli.main", "predict", ".", "--out", "f.jsonl",
               "--url", f"http://127.0.0.1:{port}"]  # fmt: skip
        run = subprocess.run(cmd, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)},
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        foreign.terminate()
        foreign.wait(timeout=10)
    assert run.returncode == 2, run.stderr
    assert "did not answer GET /v1/models as a visionq API does" in run.stderr
    assert not (tmp_path / "f.jsonl").exists() or not (tmp_path / "f.jsonl").read_text()


def test_every_option_has_help() -> None:
    from services.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, p in sub.choices.items()
        for action in p._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert not missing
