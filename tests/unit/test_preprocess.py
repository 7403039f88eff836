"""Upload checks, decoding, and preprocessing parity with torchvision."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
import torchvision
from PIL import Image
from torchvision.transforms._presets import ImageClassification

from models import BUILTIN_MODELS, Preprocess
from models.preprocess import (
    ImageInfo,
    check_image,
    decode_and_preprocess,
    decode_image,
    normalize_batch_numpy,
    preprocess,
    sniff_format,
)
from services.common.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from tests.images import png_declaring

LIMIT = 40_000_000


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    # A gradient plus noise, so both smooth areas and edges go through the resampler.
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width, 1), yy * 255 // max(height, 1), (xx + yy) % 256], -1)
    noise = rng.integers(-40, 40, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


SIZES = [(640, 480), (480, 640), (50, 37), (333, 517), (256, 300), (225, 224), (1001, 999)]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "efficientnet_b0", "convnext_tiny"])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_matches_torchvision_transforms(arch: str, width: int, height: int) -> None:
    image = _image(width, height)
    pre = BUILTIN_MODELS[arch].preprocess
    array = preprocess(image, pre)
    assert array.dtype == np.uint8
    assert array.shape == (3, pre.input_size, pre.input_size)
    assert array.flags["C_CONTIGUOUS"]
    ours = normalize_batch_numpy(array[None], pre)[0]
    reference = torchvision.models.get_model_weights(arch).DEFAULT.transforms()(image).numpy()
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


def test_small_resize_pads_like_torchvision() -> None:
    # Not reachable from a models file, but the geometry should still agree.
    pre = Preprocess(64, 50, "bicubic", (0.5, 0.4, 0.3), (0.2, 0.3, 0.4))
    image = _image(90, 61)
    reference = ImageClassification(
        crop_size=64,
        resize_size=50,
        mean=pre.mean,
        std=pre.std,
        interpolation=torchvision.transforms.InterpolationMode.BICUBIC,
    )(image).numpy()
    ours = normalize_batch_numpy(preprocess(image, pre)[None], pre)[0]
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


def test_decode_and_preprocess_converts_to_rgb() -> None:
    data = _encode(_image(120, 90).convert("L"), "PNG")
    array = decode_and_preprocess(data, BUILTIN_MODELS["resnet18"].preprocess, max_pixels=LIMIT)
    assert array.shape == (3, 224, 224)
    assert (array[0] == array[1]).all()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_check_and_decode_good_images(fmt: str) -> None:
    data = _encode(_image(97, 61), fmt)
    assert sniff_format(data) == fmt
    info = check_image(data, max_pixels=LIMIT)
    assert (info.format, info.width, info.height, info.mode) == (fmt, 97, 61, "RGB")
    assert info.length == len(data) and isinstance(info, ImageInfo)
    image = decode_image(data, max_pixels=LIMIT)
    assert image.mode == "RGB" and image.size == (97, 61)


def test_padded_jpeg_is_accepted() -> None:
    data = _encode(_image(40, 30), "JPEG") + b"\x00\x00\r\n"
    assert check_image(data, max_pixels=LIMIT).format == "JPEG"


def test_empty_upload() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        check_image(b"", max_pixels=LIMIT)


def test_text_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaType):
        check_image(b"hello, this is not an image\n", max_pixels=LIMIT)


def test_unknown_formats_are_unsupported() -> None:
    ico = _encode(_image(16, 16), "ICO")
    with pytest.raises(UnsupportedMediaType, match="not an image"):
        check_image(ico, max_pixels=LIMIT)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_images(fmt: str) -> None:
    data = _encode(_image(120, 80), fmt)
    half = data[: len(data) // 2]
    with pytest.raises(InvalidImage):
        check_image(half, max_pixels=LIMIT)
    with pytest.raises(InvalidImage):
        decode_image(half, max_pixels=LIMIT)


def test_huge_declared_png_is_too_large() -> None:
    data = png_declaring(30000, 30000)
    with pytest.raises(PayloadTooLarge, match=rf"900000000 pixels; the limit is {LIMIT}"):
        check_image(data, max_pixels=LIMIT)
    with pytest.raises(PayloadTooLarge):
        decode_image(data, max_pixels=LIMIT)


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = png_declaring(10000, 5000)
    with pytest.raises(PayloadTooLarge, match=r"10000x5000 = 50000000 pixels; the limit is"):
        decode_image(data, max_pixels=LIMIT)
    small = _encode(_image(100, 100), "PNG")
    with pytest.raises(PayloadTooLarge, match="the limit is 9999"):
        decode_image(small, max_pixels=9999)


def test_corrupt_middle_jpeg_fails_to_decode() -> None:
    data = _encode(_image(160, 120), "JPEG", quality=90)
    middle = len(data) // 2
    # A run of fill bytes inside the entropy-coded data is a hard libjpeg error; random bytes
    # would only give libjpeg warnings, which PIL does not surface.
    corrupt = data[:middle] + b"\xff" * 200 + data[middle + 200 :]
    # Its structure ends in an end-of-image marker, so the API takes it; the decoder does not.
    assert check_image(corrupt, max_pixels=LIMIT).format == "JPEG"
    with pytest.raises(InvalidImage, match="cannot decode the JPEG image"):
        decode_image(corrupt, max_pixels=LIMIT)


def test_corrupt_png_header() -> None:
    data = bytearray(_encode(_image(30, 30), "PNG"))
    data[20] ^= 0xFF  # inside IHDR, so the CRC check fails
    with pytest.raises(InvalidImage):
        check_image(bytes(data), max_pixels=LIMIT)


def test_sniff_recognises_heif_and_avif() -> None:
    assert sniff_format(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 16) == "HEIF"
    assert sniff_format(b"\x00\x00\x00\x18ftypavif" + b"\x00" * 16) == "AVIF"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVE") is None
