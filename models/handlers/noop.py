"""``noop``: a benchmark model with no decode and no forward, to measure the stack itself."""

from __future__ import annotations

from typing import Any

from models.handlers.base import Handler
from models.specs import ModelSpec


class NoopHandler(Handler):
    """Returns the upload's byte count; costs only queues, claims and result storage."""

    task = "noop"

    def setup(self, device: Any, spec: ModelSpec) -> None:
        """Nothing to load."""

    def decode(self, data: bytes, params: Any) -> int:
        """The byte count; the image is not decoded."""
        return len(data)

    def predict(self, batch: list[int]) -> list[int]:
        """No forward pass."""
        return batch

    def encode(self, item_output: int, params: Any) -> dict[str, Any]:
        """``{"bytes": N}``."""
        return {"bytes": item_output}
