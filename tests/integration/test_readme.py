"""Every command in README.md is run here (or, where it cannot run on this machine, checked).

How each kind is exercised:
- ``make up`` (with its ``VAR=value`` prefix): ``make -n up`` must run ``visionq up``; then
  the same ``visionq up`` runs for real, with the prefix's variables, on a free port, from an
  empty ``TORCH_HOME`` with downloads off (a fresh laptop without weights), until ready.
- ``curl``, ``visionq predict`` and the ```` ```python ```` blocks run against that stack, in
  a folder holding ``cat.jpg`` and ``photos/``, with ``127.0.0.1:8000`` rewritten to its port.
- ``make test``: ``make -n test`` (running it here would recurse into this very test).
- ``visionq compose``, ``cat > .env``: run in a scratch folder.
- ``docker compose``, ``kubectl``: no Docker, GPU or cluster here; the files they name must
  exist and parse (tests/unit/test_deploy_*.py check their content).
- ``visionq bench``: run with a one-second window; lines that differ only in ``--quick``,
  ``--out`` and ``--chart`` (which that window and tmp paths replace) run the same bench, so
  it runs once for them; a line that only adds ``--fast-decode`` (one more phase after the
  same ones) stands for the line without it, and its report must hold both lines' phases;
  every line must parse. The ``--api-workers`` line is run by
  tests/integration/test_bench_cpu.py (with a window of its own, checking what this file
  checks and the CPU figures), so that bench is not paid for twice.
A command that matches none of these fails the test, so a new README command needs a runner.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from services.common.redis_server import free_port
from tests.images import encode, jpeg, make_image
from tests.integration.stack import ROOT

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
_ENV_PREFIX = re.compile(r"^((?:[A-Z_]+=\S+\s+)*)(.*)$")


def blocks(lang: str) -> list[str]:
    """The bodies of README's fenced blocks in ``lang``."""
    return [body for kind, body in _FENCE.findall(README.read_text()) if kind == lang]


def commands() -> list[str]:
    """Every shell command: comments dropped, heredocs kept whole."""
    out: list[str] = []
    for body in blocks("bash"):
        lines = iter(body.splitlines())
        for line in lines:
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if not line or line.startswith("#"):
                continue
            heredoc = re.search(r"<<'?(\w+)'?", line)
            if heredoc:
                rest = []
                for more in lines:
                    rest.append(more)
                    if more.strip() == heredoc.group(1):
                        break
                line = "\n".join([line, *rest])
            out.append(line)
    return out


def kind(command: str) -> str:
    """Which runner exercises ``command``."""
    body = _ENV_PREFIX.match(command)
    rest = body.group(2) if body else command
    for name, pattern in [
        ("make_up", r"make up( ARGS=.*)?$"),
        ("make_test", r"make test$"),
        ("against_stack", r"curl |\.venv/bin/visionq predict "),
        ("scratch", r"\.venv/bin/visionq compose |cat > \.env <<"),
        ("static", r"docker compose |kubectl "),
        ("bench", r"\.venv/bin/visionq bench"),
        ("decode_check", r"\.venv/bin/python -m models\.imaging\.fast_decode_check "),
        ("celery", r"\.venv/bin/celery -A services\.common\.celery_app "),
    ]:
        if re.match(pattern, rest):
            return name
    return "unknown"


def test_every_command_has_a_runner() -> None:
    found = commands()
    assert any(kind(c) == "make_up" for c in found) and any("predict" in c for c in found)
    unknown = [c for c in found if kind(c) == "unknown"]
    assert not unknown, f"README commands no test runs; add a runner here: {unknown}"


def test_make_targets_are_what_the_readme_says() -> None:
    for target, expected in [("up", ["visionq up"]), ("test", ["ruff check", "mypy", "pytest"])]:
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        for text in expected:
            assert text in dry.stdout, (target, dry.stdout)


def test_make_up_passes_args_through() -> None:
    with_args = [c for c in commands() if kind(c) == "make_up" and "ARGS=" in c]
    assert with_args, "the README shows how to run on another port with make up ARGS=..."
    for command in with_args:
        args = shlex.split(command)
        dry = subprocess.run(["make", "-n", *args[1:]], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        given = args[-1].split("=", 1)[1]
        assert f"visionq up {given}" in dry.stdout, dry.stdout


# The embedded Redis of each README stack, by the stack's URL (from its "visionq is up" line).
STACK_REDIS: dict[str, str] = {}


@pytest.fixture(scope="module")
def readme_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``visionq up`` as ``make up`` runs it, with the README's variables; its URL."""
    prefixes = {
        c.rsplit("make up", 1)[0].strip()
        for c in commands()
        if kind(c) == "make_up" and "ARGS=" not in c
    }
    (prefix,) = prefixes - {""}  # the quick start's VISIONQ_ALLOW_RANDOM_WEIGHTS=1
    tmp = tmp_path_factory.mktemp("readme")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
    env.update(dict(pair.split("=", 1) for pair in prefix.split()))
    # A fresh laptop: no cached weights, no network for them.
    env.update({"TORCH_HOME": str(tmp / "torch"), "VISIONQ_ALLOW_DOWNLOAD": "0"})
    env.update({"VISIONQ_METRICS_PORT": "0", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"})
    port = free_port()
    log = tmp / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "up", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "visionq is up" not in log.read_text(errors="replace"):
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        found = re.search(r"Redis at (redis://\S+)", log.read_text(errors="replace"))
        assert found, log.read_text()
        STACK_REDIS[f"http://127.0.0.1:{port}"] = found.group(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder like a user's: cat.jpg and photos/ with images in subfolders."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "cat.jpg").write_bytes(jpeg(1))
    (folder / "photos" / "trip").mkdir(parents=True)
    for i in range(3):
        (folder / "photos" / f"p{i}.jpg").write_bytes(jpeg(10 + i, (64, 64)))
    (folder / "photos" / "trip" / "beach.png").write_bytes(encode(make_image(5), "PNG"))
    (folder / "photos" / "readme.txt").write_text("not an image")
    return folder


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def _localise(command: str, url: str) -> list[str]:
    text = command.replace("http://127.0.0.1:8000", url)
    args = shlex.split(text)
    if args[0] == ".venv/bin/visionq":
        args = [sys.executable, "-m", "services.cli.main", *args[1:], "--url", url]
    return args


@pytest.mark.parametrize("command", [c for c in commands() if kind(c) == "against_stack"])
def test_command_against_the_stack(command: str, readme_stack: str, workdir: Path) -> None:
    run = _run(_localise(command, readme_stack), workdir)
    assert run.returncode == 0, (command, run.stdout, run.stderr)
    if command.startswith("curl"):
        assert '"predictions"' in run.stdout and '"top_k"' in run.stdout, run.stdout
    else:
        assert "4 done, 0 failed" in run.stderr or "4 skipped" in run.stderr, run.stderr


def test_python_blocks_run(readme_stack: str, workdir: Path) -> None:
    for code in blocks("python"):
        script = code.replace("http://127.0.0.1:8000", readme_stack)
        run = _run([sys.executable, "-c", script], workdir)
        assert run.returncode == 0, (run.stdout, run.stderr)
        assert "415 unsupported_media_type" in run.stdout, run.stdout


def test_upload_page_is_served(readme_stack: str) -> None:
    resp = httpx.get(readme_stack + "/")
    assert resp.status_code == 200 and "<title>visionq</title>" in resp.text


@pytest.mark.parametrize("command", [c for c in commands() if kind(c) == "scratch"])
def test_scratch_commands(command: str, tmp_path: Path) -> None:
    (tmp_path / "deploy" / "prometheus" / "targets").mkdir(parents=True)
    if command.startswith(".venv/bin/visionq"):
        args = [sys.executable, "-m", "services.cli.main", *shlex.split(command)[1:]]
    else:
        args = ["bash", "-c", command]
    run = _run(args, tmp_path)
    assert run.returncode == 0, run.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written, f"{command} wrote nothing"
    for path in written:
        if path.suffix in (".yml", ".yaml"):
            assert yaml.safe_load(path.read_text()) is not None


@pytest.mark.parametrize("command", [c for c in commands() if kind(c) == "static"])
def test_static_commands_name_real_files(command: str) -> None:
    args = shlex.split(command)
    files = [args[i + 1] for i, a in enumerate(args) if a in ("-f", "-k")]
    for name in files:
        path = ROOT / name
        target = path / "kustomization.yaml" if path.is_dir() else path
        assert target.is_file(), f"{command}: {target} is missing"
        assert yaml.safe_load(target.read_text()), target


# The README's bench commands, run with a one-second window instead of their minutes.
_SHORT_BENCH = ["--concurrency", "1", "--seconds", "1", "--warmup", "0", "--count", "4",
                "--batch-sizes", "1", "--no-unbatched"]  # fmt: skip


def bench_args(command: str) -> list[str]:
    """The README bench command's arguments as run here, before the short window and paths.

    ``--quick`` goes (it would override the short window) and ``--out``/``--chart`` are
    overridden: a command that differs from another only in those runs the same bench.
    """
    args = [a for a in shlex.split(command)[1:] if a != "--quick"]
    for flag in ("--out", "--chart"):
        while flag in args:
            at = args.index(flag)
            del args[at : at + 2]
    return args


def run_elsewhere(command: str) -> bool:
    """A bench line tests/integration/test_bench_cpu.py runs (and checks as here)."""
    return "--api-workers" in shlex.split(command)


def check_bench_output(stdout: str, out: Path, chart: Path) -> None:
    """What every README bench run (but --events-cost) must print and write."""
    assert "raw limit:" in stdout and "served" in stdout, stdout[-2000:]
    assert json.loads(out.read_text())["served"][0]["completed"] > 0
    assert chart.read_bytes()[:4] == b"\x89PNG"


def _distinct_bench_commands() -> list[str]:
    """One README bench command per distinct run (the first README line that gives it).

    ``--fast-decode`` only appends its phase to the same run, so a line with it also runs
    the line without it: where both are in the README, only the one with it runs.
    """
    seen: dict[tuple[str, ...], str] = {}
    for command in [c for c in commands() if kind(c) == "bench" and not run_elsewhere(c)]:
        args = bench_args(command)
        key = tuple(a for a in args if a != "--fast-decode")
        if key not in seen or ("--fast-decode" in args and "--fast-decode" not in seen[key]):
            seen[key] = command
    return list(seen.values())


def test_bench_commands_parse() -> None:
    # Every bench line, including one whose run another line's run stands for, must parse.
    from services.cli.main import build_parser

    for command in [c for c in commands() if kind(c) == "bench"]:
        args = build_parser().parse_args(shlex.split(command)[1:])
        assert args.command == "bench", command


@pytest.mark.parametrize("command", _distinct_bench_commands())
def test_bench_commands(command: str, tmp_path: Path) -> None:
    args = bench_args(command)
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    args += [*_SHORT_BENCH, "--out", str(out), "--chart", str(chart)]
    if "--events-cost" in args:
        args += ["--repeat", "1"]  # events on and off once each; the README's is for figures
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
    env.update({"PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "VISIONQ_ALLOW_DOWNLOAD": "0"})
    run = subprocess.run([sys.executable, "-m", "services.cli.main", *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=240, env=env)  # fmt: skip
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-2000:])
    if "--events-cost" in args:
        runs = json.loads(out.read_text())["runs"]
        assert [len(runs["on"]), len(runs["off"])] == [1, 1], runs
        assert all(p["completed"] > 0 and p["redis_cpu_ms_per_image"] > 0
                   for p in runs["on"] + runs["off"]), runs  # fmt: skip
        return
    check_bench_output(run.stdout, out, chart)
    if "--fast-decode" in args:  # the line without it ran too: its phases came first
        report = json.loads(out.read_text())
        assert [p for p in ("raw", "served", "fast") if report.get(p)] == ["raw", "served", "fast"]
        assert report["fast"][0]["completed"] > 0


@pytest.mark.parametrize("command", [c for c in commands() if kind(c) == "decode_check"])
def test_decode_check_commands(command: str, tmp_path: Path) -> None:
    # As written, on 12 images instead of 300, its JSON into a scratch folder.
    args = shlex.split(command)[1:]
    for flag, value in (("--count", "12"), ("--json", str(tmp_path / "check.json"))):
        args[args.index(flag) + 1] = value
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=240, env=env)  # fmt: skip
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-2000:])
    assert "top-1 agreement" in run.stdout
    assert json.loads((tmp_path / "check.json").read_text())["images"] == 12


@pytest.mark.parametrize("command", [c for c in commands() if kind(c) == "celery"])
def test_celery_commands(command: str, readme_stack: str) -> None:
    # Run as written against the README stack's Redis. A shutdown is sent to a worker that
    # does not exist, so the stack keeps its worker (tests/faults/test_celery_tools.py
    # shuts a real one down); it must still reach the broker and get Celery's no-reply.
    text = command.replace(".venv/bin/celery", f"{sys.executable} -m celery")
    shutdown = " control shutdown" in text
    if shutdown:
        text = re.sub(r"--destination \S+", "--destination nobody@nowhere", text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
    env.update(PYTHONPATH=str(ROOT), VISIONQ_REDIS_URL=STACK_REDIS[readme_stack])
    run = subprocess.run(["bash", "-c", text], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=env)  # fmt: skip
    if shutdown:
        assert run.returncode == 69 and "No nodes replied" in run.stderr, run.stderr
        return
    assert run.returncode == 0, (command, run.stdout, run.stderr)
    # Node names carry the pid, so two workers on one host never share one.
    assert re.search(r"visionq-cpu-0-\d+@", run.stdout), run.stdout
