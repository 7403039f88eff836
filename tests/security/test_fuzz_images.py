"""Fuzz the image checks and decoding: any input ends in an image or a VisionqError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.preprocess import ACCEPTED_FORMATS, check_image, decode_and_preprocess
from models.specs import Preprocess
from services.common.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from tests.security.fuzzing import SEEDS, mutated_image, random_upload

MAX_PIXELS = 1_000_000
PRE = Preprocess(32, 36, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The only ways an upload may be refused; anything else (KeyError, OSError, ...) is a bug.
EXPECTED = (InvalidImage, PayloadTooLarge, UnsupportedMediaType)
FUZZ = settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_seed_images_pass() -> None:
    # The mutations start from images that are valid, so a refusal is the mutation's doing.
    for data in SEEDS:
        assert check_image(data, max_pixels=MAX_PIXELS).format in ACCEPTED_FORMATS
        assert decode_and_preprocess(data, PRE, max_pixels=MAX_PIXELS).shape == (3, 32, 32)


@FUZZ
@given(random_upload())
def test_check_image_refuses_only_with_visionq_errors(data: bytes) -> None:
    try:
        info = check_image(data, max_pixels=MAX_PIXELS)
    except EXPECTED:
        return
    assert info.format in ACCEPTED_FORMATS
    assert 0 < info.width * info.height <= MAX_PIXELS


@settings(FUZZ, max_examples=600)
@given(st.one_of(mutated_image(), random_upload()))
def test_decode_refuses_only_with_visionq_errors(data: bytes) -> None:
    try:
        pixels = decode_and_preprocess(data, PRE, max_pixels=MAX_PIXELS)
    except EXPECTED:
        return
    assert pixels.shape == (3, 32, 32)
    assert str(pixels.dtype) == "uint8"


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_every_cut_of_a_real_image_is_refused_or_decoded(index: int) -> None:
    # Exhaustive where cheap: each prefix of a real image (every 7th length).
    data = SEEDS[index]
    for end in range(0, len(data), 7):
        try:
            decode_and_preprocess(data[:end], PRE, max_pixels=MAX_PIXELS)
        except EXPECTED:
            continue
