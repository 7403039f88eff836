"""The benchmark's parts: inputs, the request encoder, the raw limit, the verdict, the chart."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest

from models.preprocess import check_image
from models.specs import BUILTIN_MODELS
from services.bench.images import generated_jpegs
from services.bench.load import _read_response, encode_request
from services.bench.raw import measure_raw
from services.bench.report import draw_chart, table, targets

RESULT: dict[str, Any] = {
    "model": "m",
    "images": 4,
    "image_size": "generated",
    "raw": {
        "device": "cpu", "torch_threads": 2, "decode_per_s": 300.0, "single_image_ms": 10.0,
        "forward_per_s": {1: 150.0, 16: 400.0}, "full_per_s": {1: 90.0, 16: 160.0},
        "best_batch": 16, "limit_per_s": 160.0,
    },
    "served": [
        {"concurrency": 1, "per_s": 55.0, "p50_ms": 18.0, "p90_ms": 19.0, "p99_ms": 22.0,
         "mean_batch": 1.0, "errors": 0, "client_cpu_cores": 0.02},
        {"concurrency": 16, "per_s": 140.0, "p50_ms": 120.0, "p90_ms": 150.0, "p99_ms": 200.0,
         "mean_batch": 6.0, "errors": 0, "client_cpu_cores": 0.02},
    ],
    "unbatched": [
        {"concurrency": 16, "per_s": 80.0, "p50_ms": 190.0, "p90_ms": 200.0, "p99_ms": 210.0,
         "mean_batch": 1.0, "errors": 0, "client_cpu_cores": 0.02},
    ],
}  # fmt: skip


def test_generated_images_are_valid_and_repeatable() -> None:
    first, again = generated_jpegs(3), generated_jpegs(3)
    assert first == again
    assert len(set(first)) == 3
    assert check_image(first[0], max_pixels=10**7).width == 640


def test_targets_pass_and_miss() -> None:
    verdict = {name: ok for name, _, _, ok in targets(RESULT)}
    assert all(verdict.values()), verdict
    slow = copy.deepcopy(RESULT)
    slow["served"][1]["per_s"] = 100.0  # 100/160 < 0.85, and 100/80 < 1.3
    slow["served"][0]["p50_ms"] = 25.0  # > 10 + 10
    missed = {name for name, _, _, ok in targets(slow) if not ok}
    assert len(missed) == 3
    assert "served/raw at 16 clients" in missed


def test_table_and_chart(tmp_path: Path) -> None:
    text = table(RESULT)
    assert "raw limit: 160.0/s at batch 16" in text
    assert "PASS served/raw at 16 clients: 0.88 (target >= 0.85)" in text
    chart = tmp_path / "chart.png"
    draw_chart(RESULT, chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_encoded_request_is_a_valid_multipart_post() -> None:
    request = encode_request("127.0.0.1", 8000, "m", b"\xff\xd8data\xff\xd9", "a.jpg")
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/predict HTTP/1.1")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert length == len(body)
    assert b'name="file"; filename="a.jpg"' in body and b"\xff\xd8data\xff\xd9" in body


def test_response_reader() -> None:
    async def read() -> tuple[int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}extra")
        return await _read_response(reader)

    assert asyncio.run(read()) == (200, b"{}")


@pytest.mark.timeout(120)
def test_raw_limit_measures_every_stage() -> None:
    raw = measure_raw(BUILTIN_MODELS["mobilenet_v3_small"], generated_jpegs(2), [1, 2], 0.3, "cpu")
    assert raw.decode_per_s > 0 and raw.single_image_ms > 0
    assert set(raw.forward_per_s) == set(raw.full_per_s) == set(raw.pipelined_per_s) == {1, 2}
    assert all(rate > 0 for rate in raw.pipelined_per_s.values())
    assert raw.limit == max(*raw.full_per_s.values(), *raw.pipelined_per_s.values())


def test_bench_writes_into_a_folder_git_ignores() -> None:
    import subprocess

    from services.cli.main import build_parser

    args = build_parser().parse_args(["bench"])
    root = Path(__file__).resolve().parents[2]
    for path in (args.out, args.chart):
        assert not path.is_absolute() and path.parts[0] == "results"
        # Exit 0: git ignores it, so a benchmark run leaves `git status` clean.
        check = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=root)
        assert check.returncode == 0, path


def test_events_cost_summary_compares_the_means() -> None:
    from services.bench.events import events_table, summarize

    def point(per_s: float, redis_ms: float, stack_ms: float) -> dict[str, float]:
        return {"per_s": per_s, "redis_cpu_ms_per_image": redis_ms,
                "stack_cpu_ms_per_image": stack_ms, "p99_ms": 200.0}  # fmt: skip

    runs = {
        "on": [point(90.0, 0.3, 12.0), point(110.0, 0.2, 12.0)],
        "off": [point(100.0, 0.2, 10.0), point(100.0, 0.2, 10.0)],
    }
    summary = summarize(runs)
    assert summary["on"]["per_s_min"] == 90.0 and summary["on"]["per_s_max"] == 110.0
    assert summary["on_vs_off"]["per_s"] == pytest.approx(1.0)
    assert summary["on_vs_off"]["redis_cpu_ms_per_image"] == pytest.approx(1.25)
    assert summary["on_vs_off"]["stack_cpu_ms_per_image"] == pytest.approx(1.2)
    text = events_table({"clients": 16, "runs": runs, "summary": summary})
    assert "on | 90.0 | 0.300 | 12.00 | 200" in text
    assert "stack_cpu_ms_per_image 1.200" in text
