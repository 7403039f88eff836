"""VISIONQ_AOT_COMPILE through the real stack: the same answers as the eager worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.redis_server import RedisServer
from tests.conftest import TEST_MODEL
from tests.images import jpeg
from tests.integration.conftest import stack_env
from tests.integration.helpers import files, predict
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def aot_stack(models_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API + one CPU worker serving the seeded model compiled ahead of time."""
    tmp = tmp_path_factory.mktemp("aot")
    env = stack_env(
        models_file,
        VISIONQ_AOT_COMPILE="1",
        # A cold cache of its own: the worker compiles (about 20 s on 2 cores).
        TORCHINDUCTOR_CACHE_DIR=str(tmp / "inductor"),
    )
    with RedisServer(port=0) as server:
        s = Stack(server.url, tmp, env)
        try:
            s.start_with_worker(models=TEST_MODEL, timeout=300)
            yield s
        finally:
            s.stop_all()


def _scores(url: str, images: list[tuple[str, bytes]]) -> list[dict[int, float]]:
    resp = predict(url, files(*images), top_k=1000)
    assert resp.status_code == 200, resp.text
    return [{t["index"]: t["score"] for t in p["top_k"]} for p in resp.json()["predictions"]]


def test_compiled_worker_answers_like_the_eager_one(aot_stack: Stack, stack: Stack) -> None:
    assert "AOTInductor package compiled" in aot_stack.logs()  # not the eager fallback
    images = [(f"{i}.jpg", jpeg(i, (320 + 16 * i, 240))) for i in range(12)]
    compiled, eager = _scores(aot_stack.url, images), _scores(stack.url, images)
    tops = [max(s, key=s.__getitem__) for s in eager]
    assert len(set(tops)) > 3  # the seeded model's answer depends on the image
    for got, want in zip(compiled, eager, strict=True):
        assert max(got, key=got.__getitem__) == max(want, key=want.__getitem__)
        assert got.keys() == want.keys()
        assert max(abs(got[k] - want[k]) for k in want) <= 1e-4 * max(want.values())
