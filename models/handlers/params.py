"""Per-request options of the built-in handlers (pydantic, torch-free: the API imports them).

Each is validated from a request's form fields; ``extra="forbid"`` makes an unknown field a
422 naming it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ClassificationParams(BaseModel):
    """Options of a classifier."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(5, ge=1, le=1000, description="how many classes to return, best first")


class DetectionParams(BaseModel):
    """Options of a detector."""

    model_config = ConfigDict(extra="forbid")

    score_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="drop detections scoring below this"
    )
    max_detections: int = Field(
        100, ge=1, le=1000, description="keep at most this many, best first"
    )


class EmbeddingParams(BaseModel):
    """Options of an embedder."""

    model_config = ConfigDict(extra="forbid")

    normalize: bool = Field(True, description="L2-normalise the vector")
    encoding: Literal["float32", "base64-f16"] = Field(
        "float32",
        description="float32: a JSON list; base64-f16: little-endian float16 bytes in base64",
    )


class SegmentationParams(BaseModel):
    """Options of a segmenter."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["png", "rle"] = Field(
        "png",
        description="png: the class map as an 8-bit PNG in base64; rle: run lengths, row-major",
    )
