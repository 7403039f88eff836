"""Fault marks (tests only): parsing, and a ``slow`` stall that a release file ends early."""

from __future__ import annotations

import threading
from pathlib import Path

from services.gpu_worker.faults import Marked, fault_of, faulty_forward
from tests.faults.conftest import fault_jpeg, release_stall


def test_marks_parse_with_and_without_a_release_file(tmp_path: Path) -> None:
    release = tmp_path / "sub-dir_1" / "release.flag"
    assert fault_of(fault_jpeg("kill")) == ("kill", 0.0, None)
    assert fault_of(fault_jpeg("slow=2.5")) == ("slow", 2.5, None)
    assert fault_of(fault_jpeg("slow=25", release=release)) == ("slow", 25.0, str(release))
    assert fault_of(b"no mark here") is None


def test_a_stall_lasts_until_its_release_file_exists(tmp_path: Path) -> None:
    release = tmp_path / "release"
    forward = faulty_forward(lambda items: [f"ran {item}" for item in items])
    done: list[list[str]] = []
    stalled = threading.Thread(
        target=lambda: done.append(forward([Marked("a", "slow", 30.0, str(release)), "b"]))
    )
    stalled.start()
    stalled.join(0.3)
    assert stalled.is_alive() and not done  # held while the file is missing
    release_stall(release)
    stalled.join(10)
    assert done == [["ran a", "ran b"]]
    assert forward([Marked("c", "slow", 0.05)]) == ["ran c"]  # no release file: sleeps it out
