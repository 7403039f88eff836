"""VISIONQ_FAST_DECODE: used only when on, the draft size rule, orientation, agreement."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

import models.preprocess as preprocess_module
from models import BUILTIN_MODELS
from models.handlers.base import HandlerOptions
from models.handlers.classification import ClassificationHandler
from models.handlers.detection import DetectionHandler
from models.handlers.segmentation import SegmentationHandler
from models.imaging.fast_decode_check import SMALL_SIZES, compare, sample_images
from models.preprocess import (
    decode_and_preprocess,
    decode_image,
    decode_scaled,
    fast_min_side,
    preprocess,
)
from models.seeded import seeded_classifier
from services.common.errors import VisionqError
from tests.images import make_image
from tests.real_world import ORIENT, Kind, corpus, exif_bytes, icc_gamma_profile, save, ycck_jpeg

LIMIT = 40_000_000
PRE = BUILTIN_MODELS["mobilenet_v3_small"].preprocess


def _jpeg(size: tuple[int, int], orientation: int = 1) -> bytes:
    photo = make_image(6, (size[0] // 4, size[1] // 4)).resize(size)
    return save(photo, "JPEG", quality=90, exif=exif_bytes(orientation))


@pytest.mark.parametrize(
    ("stored", "min_side", "decoded"),
    [
        ((640, 480), 224, (320, 240)),  # 1/2: 240 >= 224
        ((640, 480), 256, (640, 480)),  # 1/2 would make 240 < 256: full scale
        ((2048, 1536), 224, (512, 384)),  # 1/4; 1/8 would be 192 < 224
        ((4000, 3000), 224, (500, 375)),  # 1/8, the smallest libjpeg offers
        ((400, 300), 224, (400, 300)),  # too small to shrink
        ((2047, 1535), 224, (512, 384)),  # sizes round up: ceil(2047 / 4)
    ],
)
def test_draft_keeps_both_sides_at_least_min_side(
    stored: tuple[int, int], min_side: int, decoded: tuple[int, int]
) -> None:
    image, full = decode_scaled(_jpeg(stored), max_pixels=LIMIT, min_side=min_side)
    assert image.size == decoded
    assert full == stored
    assert min(image.size) >= min(min_side, *stored)


def test_draft_rule_follows_orientation_and_skips_other_formats() -> None:
    # Stored 2048x1536, shown 1536x2048 (EXIF 6): the short side is bounded either way.
    image, full = decode_scaled(_jpeg((2048, 1536), 6), max_pixels=LIMIT, min_side=224)
    assert (image.size, full) == ((384, 512), (1536, 2048))
    png = save(make_image(1, (2048, 1536)), "PNG")
    image, full = decode_scaled(png, max_pixels=LIMIT, min_side=224)
    assert image.size == full == (2048, 1536)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_fast_decode_keeps_the_orientation(orientation: int) -> None:
    upright = np.asarray(make_image(9, (256, 192)).resize((1024, 768)))
    # Stored turned the other way, with the tag that turns it back.
    inverse = {1: 1, 3: 3, 6: 8, 8: 6}[orientation]
    stored = np.ascontiguousarray(ORIENT[inverse](upright))
    data = save(Image.fromarray(stored), "JPEG", quality=95, exif=exif_bytes(orientation))
    reference = save(Image.fromarray(upright), "JPEG", quality=95)
    fast = decode_and_preprocess(data, PRE, max_pixels=LIMIT, fast_decode=True)
    exact = decode_and_preprocess(reference, PRE, max_pixels=LIMIT)
    assert fast.shape == (3, 224, 224)
    # The same picture, not a turned one: a few levels off at most on average.
    assert np.abs(fast.astype(int) - exact).mean() < 4
    turned = decode_and_preprocess(
        save(Image.fromarray(np.ascontiguousarray(upright[::-1, ::-1])), "JPEG", quality=95),
        PRE,
        max_pixels=LIMIT,
    )
    assert np.abs(fast.astype(int) - turned).mean() > 20


def test_exact_path_is_unchanged_when_off() -> None:
    data = _jpeg((1024, 768), 6)
    exact = decode_and_preprocess(data, PRE, max_pixels=LIMIT)
    assert np.array_equal(exact, preprocess(decode_image(data, max_pixels=LIMIT), PRE))
    image, full = decode_scaled(data, max_pixels=LIMIT, min_side=None)
    assert image.size == full == (768, 1024)


def _spy_min_side(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    seen: list[int | None] = []
    real = preprocess_module.decode_scaled

    def spy(data: bytes, **kwargs: Any) -> Any:
        seen.append(kwargs.get("min_side"))
        return real(data, **kwargs)

    monkeypatch.setattr(preprocess_module, "decode_scaled", spy)
    return seen


@pytest.mark.parametrize("enabled", [False, True])
def test_handlers_draft_only_when_enabled(monkeypatch: pytest.MonkeyPatch, enabled: bool) -> None:
    seen = _spy_min_side(monkeypatch)
    options = HandlerOptions(fast_decode=enabled)
    data = _jpeg((2048, 1536))

    classifier = ClassificationHandler(options)
    classifier.spec = BUILTIN_MODELS["mobilenet_v3_small"]
    classifier._decode = classifier._decode_cpu
    assert classifier.decode(data, None).shape == (3, 224, 224)

    detector = DetectionHandler(options)
    detector.min_side = 320
    array, back = detector.decode(data, None)
    # On: 1/4 scale (512x384 >= 320), boxes map back by the DCT factor. Off: full decode,
    # then shrunk to the detectors' longest side.
    if enabled:
        assert (array.shape, back.sx, back.sy) == ((3, 384, 512), 4.0, 4.0)
    else:
        assert array.shape == (3, 1000, 1333)
        assert (back.sx, back.sy) == (pytest.approx(2048 / 1333), pytest.approx(1536 / 1000))
    assert (back.width, back.height) == (2048, 1536)

    segmenter = SegmentationHandler(options)
    segmenter.size = 520
    array, size = segmenter.decode(data, None)
    assert array.shape == (3, 520, 520)
    assert size == (1536, 2048)  # the map goes back to the full picture either way

    side = fast_min_side(PRE)
    assert seen == ([side, 320, 520] if enabled else [None, None, None])


def test_detector_scale_combines_draft_and_max_side(monkeypatch: pytest.MonkeyPatch) -> None:
    detector = DetectionHandler(HandlerOptions(fast_decode=True))
    detector.min_side = 800  # RetinaNet's: 4000x3000 decodes at 1/2, then 2000 -> 1333
    array, back = detector.decode(_jpeg((4000, 3000)), None)
    assert array.shape == (3, 1000, 1333)
    assert back.sx == pytest.approx(4000 / 1333, rel=1e-3)
    assert back.sy == pytest.approx(3000 / 1000, rel=1e-3)


def test_fast_decode_agrees_with_the_exact_path_on_the_calibrated_model() -> None:
    # A correctness check, not a speed test: ~50 generated JPEGs of varied sizes.
    images = sample_images(48, seed=11, sizes=SMALL_SIZES)
    result = compare(images, seeded_classifier(), PRE)
    assert result.exact_top1_distinct > 1  # the model tells images apart
    assert result.top1_agreement >= 0.9
    assert result.top5_overlap >= 0.8
    assert result.max_abs_diff < 0.1


@pytest.mark.parametrize("kind", corpus(), ids=lambda k: k.name)
def test_fast_decode_reads_every_kind_as_the_exact_path(kind: Kind) -> None:
    # Orientation, ICC, alpha, 16-bit, CMYK, trailing data: the same picture on both paths
    # (a few levels apart from the cheaper resampling) and the same errors.
    try:
        exact = decode_and_preprocess(kind.data, PRE, max_pixels=LIMIT)
    except VisionqError as exc:
        with pytest.raises(VisionqError) as fast_error:
            decode_and_preprocess(kind.data, PRE, max_pixels=LIMIT, fast_decode=True)
        assert fast_error.value.code == exc.code
        return
    fast = decode_and_preprocess(kind.data, PRE, max_pixels=LIMIT, fast_decode=True)
    assert fast.shape == exact.shape == (3, 224, 224)
    assert np.abs(fast.astype(int) - exact).mean() < 4, kind.name


@pytest.mark.parametrize("variant", ["CMYK", "YCCK", "ICC", "grey"])
def test_drafted_jpegs_keep_colour_handling(variant: str) -> None:
    # Large enough to be drafted (1/2): colour conversion still runs on the smaller picture.
    picture = make_image(3, (256, 192)).resize((1024, 768))
    if variant == "CMYK":
        data = save(picture.convert("CMYK"), "JPEG", quality=95)
    elif variant == "YCCK":
        data = ycck_jpeg(picture.convert("CMYK"))
    elif variant == "ICC":
        data = save(picture, "JPEG", quality=95, icc_profile=icc_gamma_profile(1.0))
    else:
        data = save(picture.convert("L"), "JPEG", quality=95)
    image, full = decode_scaled(data, max_pixels=LIMIT, min_side=224)
    assert (image.mode, image.size, full) == ("RGB", (512, 384), (1024, 768))
    exact = decode_and_preprocess(data, PRE, max_pixels=LIMIT)
    fast = decode_and_preprocess(data, PRE, max_pixels=LIMIT, fast_decode=True)
    assert np.abs(fast.astype(int) - exact).mean() < 4
