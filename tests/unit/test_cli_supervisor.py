"""The supervisor: back-off restarts, clean stop, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.cli.supervisor import ChildSpec, Supervisor, describe_returncode, worker_spec

PY = sys.executable


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate: Callable[[], object], within_s: float = 15.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _wait_file(path: Path, within_s: float = 15.0) -> str:
    assert _wait_for(lambda: path.exists() and path.read_text().strip(), within_s), path
    return path.read_text().strip()


def _checked(sup: Supervisor, exits: int) -> bool:
    sup.check()
    return len(sup.exits) >= exits


def test_restart_with_doubling_backoff_capped() -> None:
    sup = Supervisor(
        backoff_initial_s=0.01, backoff_max_s=0.04, stable_after_s=60, poll_interval_s=0.005
    )
    sup.add(ChildSpec("crasher", [PY, "-c", "import sys; sys.exit(3)"]))
    try:
        assert _wait_for(lambda: _checked(sup, 5))
    finally:
        sup.stop()
    delays = [e.restart_delay_s for e in sup.exits[:5]]
    assert delays == [0.01, 0.02, 0.04, 0.04, 0.04]
    assert all(e.returncode == 3 and e.name == "crasher" for e in sup.exits)


def test_backoff_resets_after_a_stable_run() -> None:
    sup = Supervisor(backoff_initial_s=0.01, backoff_max_s=1.0, stable_after_s=0.0)
    sup.add(ChildSpec("crasher", [PY, "-c", "raise SystemExit(1)"]))
    try:
        assert _wait_for(lambda: _checked(sup, 3))
    finally:
        sup.stop()
    assert [e.restart_delay_s for e in sup.exits[:3]] == [0.01, 0.01, 0.01]


def test_no_restart_when_not_asked() -> None:
    sup = Supervisor(backoff_initial_s=0.01)
    sup.add(ChildSpec("once", [PY, "-c", "pass"], restart=False))
    assert _wait_for(lambda: bool(sup.check()))
    assert sup.exits[0].restart_delay_s is None
    assert sup.pids() == {}
    sup.stop()


def test_describe_returncode() -> None:
    assert describe_returncode(3) == "exit code 3"
    assert describe_returncode(-signal.SIGKILL) == "signal SIGKILL"


def test_stop_terminates_kills_stubborn_and_grandchildren(tmp_path: Path) -> None:
    grandchild_pid = tmp_path / "grandchild"
    spawner = textwrap.dedent(
        f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(grandchild_pid)!r}, "w").write(str(p.pid))
        time.sleep(60)
        """
    )
    ready = tmp_path / "stubborn-ready"
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(ready)!r}, 'w').write('1'); time.sleep(60)"
    )
    sup = Supervisor(stop_timeout_s=0.5)
    polite = sup.add(ChildSpec("polite", [PY, "-c", "import time; time.sleep(60)"]))
    deaf = sup.add(ChildSpec("stubborn", [PY, "-c", stubborn]))
    parent = sup.add(ChildSpec("spawner", [PY, "-c", spawner]))
    grandchild = int(_wait_file(grandchild_pid))
    _wait_file(ready)
    assert all(_alive(pid) for pid in (polite, deaf, parent, grandchild))
    sup.stop()
    for pid in (polite, deaf, parent):
        assert not _alive(pid)
    assert _wait_for(lambda: not _alive(grandchild))
    assert sup.exits == []  # stopping is not a crash


def test_stop_ends_the_front_stage_before_the_back_stage_gets_sigterm(tmp_path: Path) -> None:
    # The API (stage 0) must finish the requests it serves while the workers still run:
    # the worker writes the time its SIGTERM came, the API the time it exited.
    log = tmp_path / "order"
    child = (
        "import signal, sys, time\n"
        "name, linger = sys.argv[1], float(sys.argv[2])\n"
        "def bye(*_):\n"
        "    time.sleep(linger)\n"
        f"    open({str(log)!r}, 'a').write(f'{{name}} {{time.monotonic()}}\\n')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        f"open({str(tmp_path)!r} + '/' + name, 'w').write('1')\n"
        "time.sleep(60)\n"
    )
    sup = Supervisor(stop_timeout_s=10)
    sup.add(ChildSpec("worker", [PY, "-c", child, "worker", "0"]))
    sup.add(ChildSpec("api", [PY, "-c", child, "api", "0.5"], stop_stage=0))
    _wait_file(tmp_path / "worker")
    _wait_file(tmp_path / "api")
    sup.stop()
    ended = [line.split()[0] for line in log.read_text().splitlines()]
    assert ended == ["api", "worker"]


def test_run_returns_zero_on_sigterm_and_children_die_with_killed_supervisor(
    tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import sys
        from services.cli.supervisor import ChildSpec, Supervisor
        sup = Supervisor(poll_interval_s=0.02)
        sup.install_signal_handlers()
        a = sup.add(ChildSpec("a", [sys.executable, "-c", "import time; time.sleep(60)"]))
        b = sup.add(ChildSpec("b", [sys.executable, "-c", "import time; time.sleep(60)"]))
        open({str(pids)!r}, "w").write(f"{{a}} {{b}}")
        sys.exit(sup.run())
        """
    )
    # A polite stop: SIGTERM to the supervisor stops its children and exits 0.
    proc = subprocess.Popen([PY, "-c", script])
    children = [int(p) for p in _wait_file(pids).split()]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not any(_alive(pid) for pid in children)
    # A brutal stop: SIGKILL of the supervisor still takes its children down (PDEATHSIG).
    pids.unlink()
    proc = subprocess.Popen([PY, "-c", script])
    children = [int(p) for p in _wait_file(pids).split()]
    proc.kill()
    proc.wait()
    assert _wait_for(lambda: not any(_alive(pid) for pid in children))


@pytest.mark.parametrize(
    ("gpu", "device", "visible"),
    [(None, "cpu", ""), ("2", "cuda:2", "2"), ("GPU-ab", "cuda:0", "GPU-ab")],
)
def test_worker_spec_pins_device(gpu: str | None, device: str, visible: str) -> None:
    spec = worker_spec(4, gpu)
    assert spec.argv[1:] == [
        "-m",
        "services.cli.main",
        "worker",
        "--device",
        device,
        "--index",
        "4",
    ]
    assert spec.env["CUDA_VISIBLE_DEVICES"] == visible
    assert spec.env["VISIONQ_WORKER_INDEX"] == "4"
