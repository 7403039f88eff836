"""What ``visionq predict`` says at the end: counts, failed files, rate, how to resume."""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

SHOW_FAILED = 5  # failed files named in the summary; the output holds every one


@dataclass
class Summary:
    """What a run did; ``elapsed_s`` is the progress bar's own clock, so the rates agree."""

    total: int
    skipped: int = 0
    non_images: int = 0
    succeeded: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    failed_files: list[tuple[str, str]] = field(default_factory=list)
    not_sent: int = 0
    elapsed_s: float = 0.0

    @property
    def failed(self) -> int:
        """How many files got an error."""
        return sum(self.failures.values())

    @property
    def rate(self) -> float:
        """Files answered per second, as the progress bar shows it."""
        sent = self.succeeded + self.failed
        return sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def add(self, path: str, error: dict[str, object] | None) -> None:
        """Count one answered file."""
        if error:
            code = str(error.get("code", "error"))
            self.failures[code] += 1
            self.failed_files.append((path, code))
        else:
            self.succeeded += 1

    def line(self) -> str:
        """One human line: done, failed by reason, skipped, time and rate."""
        text = f"predict: {self.succeeded} done, {self.failed} failed"
        if self.failures:
            reasons = ", ".join(f"{code} {n}" for code, n in self.failures.most_common())
            text += f" ({reasons})"
        if self.skipped:
            text += f", {self.skipped} skipped (already done, --resume)"
        if self.non_images:
            text += f", {self.non_images} non-image files skipped"
        if self.not_sent:
            text += f", {self.not_sent} not sent"
        return text + f"; {self.elapsed_s:.1f} s, {self.rate:.1f} images/s"

    def failed_lines(self, out: str | None) -> list[str]:
        """The first failed files by name, and where to find all of them."""
        if not self.failed_files:
            return []
        shown = self.failed_files[:SHOW_FAILED]
        lines = ["failed: " + ", ".join(f"{path} ({code})" for path, code in shown)]
        if len(self.failed_files) > SHOW_FAILED:
            where = out if out is not None else "the JSON lines above"
            more = len(self.failed_files) - SHOW_FAILED
            lines.append(f"  ... and {more} more: every failed file is in {where}")
        return lines


def resume_command(argv: Sequence[str]) -> str:
    """The command line that continues this run: the same arguments plus ``--resume``."""
    args = list(argv)
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["visionq", *args])
