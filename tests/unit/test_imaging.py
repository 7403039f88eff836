"""Real-world images read as a viewer shows them (tests/real_world.py builds each kind)."""

from __future__ import annotations

import logging

import numpy as np
import psutil
import pytest
import torch
import torchvision
from PIL import Image

from models import BUILTIN_MODELS
from models.preprocess import (
    check_image,
    decode_and_preprocess,
    decode_image,
    normalize_batch_numpy,
    preprocess,
)
from services.common.errors import ConfigError, UnsupportedMediaType, VisionqError
from services.common.settings import WorkerSettings, _load
from services.gpu_worker.gpu_decode import orient_chw
from tests.images import make_image
from tests.real_world import ORIENT, Kind, corpus, exif_bytes, plain, save

LIMIT = 40_000_000
KINDS = corpus()
PRE = BUILTIN_MODELS["mobilenet_v3_small"].preprocess


def _kind(name: str) -> Kind:
    return next(k for k in KINDS if k.name == name)


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_each_kind_decodes_to_what_a_viewer_shows(kind: Kind) -> None:
    try:
        check_image(kind.data, max_pixels=LIMIT)
        image = decode_image(kind.data, max_pixels=LIMIT)
    except VisionqError as exc:
        assert exc.code == kind.expect, exc.message
        return
    assert kind.expect == "ok"
    assert image.mode == "RGB"
    if kind.reference is not None:
        np.testing.assert_array_equal(np.asarray(image), np.asarray(kind.reference))


@pytest.mark.parametrize(
    "name",
    [
        "orientation_6.jpg",
        "mode_I16.png",
        "mode_RGBA.png",
        "mode_P_transparent.png",
        "icc_linear.png",
    ],
)
def test_the_viewer_picture_differs_from_a_plain_decode(name: str) -> None:
    # Each kind is a real fault of a plain `convert("RGB")`: the reference is not a no-op.
    kind = _kind(name)
    naive = plain(kind.data)
    assert kind.reference is not None
    assert naive.size != kind.reference.size or not np.array_equal(
        np.asarray(naive), np.asarray(kind.reference)
    )


def test_sixteen_bit_grey_is_scaled_not_clamped() -> None:
    values = np.array([[0, 255, 256, 32768, 65535]], dtype=np.uint16)
    image = decode_image(save(Image.fromarray(values), "PNG"), max_pixels=LIMIT)
    assert np.asarray(image)[0, :, 0].tolist() == [0, 0, 1, 128, 255]


def test_ycck_jpeg_shows_the_same_colours_as_its_cmyk_twin() -> None:
    ycck, cmyk = _kind("mode_YCCK.jpg"), _kind("mode_CMYK.jpg")
    a = np.asarray(decode_image(ycck.data, max_pixels=LIMIT)).astype(int)
    b = np.asarray(decode_image(cmyk.data, max_pixels=LIMIT)).astype(int)
    assert np.abs(a - b).mean() < 3  # JPEG loss only


def test_alpha_background_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    clear = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    data = save(clear, "PNG")
    assert np.asarray(decode_image(data, max_pixels=LIMIT))[0, 0].tolist() == [255, 255, 255]
    black = decode_image(data, max_pixels=LIMIT, background=(0, 0, 0))
    assert np.asarray(black)[0, 0].tolist() == [0, 0, 0]
    monkeypatch.setenv("VISIONQ_ALPHA_BACKGROUND", "#102030")
    assert _load(WorkerSettings).background_rgb == (16, 32, 48)
    monkeypatch.setenv("VISIONQ_ALPHA_BACKGROUND", "white")
    with pytest.raises(ConfigError, match="VISIONQ_ALPHA_BACKGROUND"):
        _load(WorkerSettings)


def test_broken_icc_profile_falls_back_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models.imaging.decode"):
        decode_image(_kind("icc_broken.jpg").data, max_pixels=LIMIT)
    assert "unreadable ICC profile" in caplog.text


def test_data_after_the_image_is_ignored() -> None:
    for name in ("appended.jpg", "appended.png", "appended.webp"):
        info = check_image(_kind(name).data, max_pixels=LIMIT)
        assert 0 < info.length < len(_kind(name).data) - 200_000


@pytest.mark.parametrize("orientation", range(1, 9))
def test_gpu_path_orientation_matches_pil(orientation: int) -> None:
    picture = np.asarray(make_image(2, (48, 28)))
    data = save(Image.fromarray(picture), "PNG", exif=exif_bytes(orientation))
    assert check_image(data, max_pixels=LIMIT).orientation == orientation
    turned = orient_chw(torch.from_numpy(picture).permute(2, 0, 1), orientation)
    expected = np.ascontiguousarray(ORIENT[orientation](picture))
    np.testing.assert_array_equal(turned.permute(1, 2, 0).numpy(), expected)
    np.testing.assert_array_equal(np.asarray(decode_image(data, max_pixels=LIMIT)), expected)


def test_accepted_formats_narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    gif = _kind("two_frames.gif").data
    with pytest.raises(UnsupportedMediaType, match="GIF is not accepted; send JPEG, PNG"):
        check_image(gif, max_pixels=LIMIT, formats=["JPEG", "PNG"])
    with pytest.raises(UnsupportedMediaType):
        decode_and_preprocess(gif, PRE, max_pixels=LIMIT, formats=["JPEG"])
    monkeypatch.setenv("VISIONQ_ACCEPTED_FORMATS", "jpg, png,tif")
    assert _load(WorkerSettings).accepted_formats == ["JPEG", "PNG", "TIFF"]
    monkeypatch.setenv("VISIONQ_ACCEPTED_FORMATS", "JPEG,PSD")
    with pytest.raises(ConfigError, match="VISIONQ_ACCEPTED_FORMATS"):
        _load(WorkerSettings)


@pytest.mark.parametrize(("width", "height"), [(24, 1000), (1000, 24), (3, 700), (700, 3)])
@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "efficientnet_b0"])
def test_thin_images_match_torchvision(arch: str, width: int, height: int) -> None:
    # Beyond FULL_RESIZE_LIMIT only the cropped region is resampled. PIL computes that
    # region's filter weights from other floats than the whole image's, so a value may round
    # the other way: at most one level (1/255), on under 0.5 % of the values.
    image = make_image(1, (max(width, 40), max(height, 40))).resize((width, height))
    pre = BUILTIN_MODELS[arch].preprocess
    ours = normalize_batch_numpy(preprocess(image, pre)[None], pre)[0]
    reference = torchvision.models.get_model_weights(arch).DEFAULT.transforms()(image).numpy()
    off = np.abs(ours - reference) > 1e-5
    assert off.mean() < 0.005
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1.01 / 255 / min(pre.std))


def test_thin_images_cost_what_the_crop_costs() -> None:
    process = psutil.Process()
    before = process.memory_info().rss
    for name in ("thin_1x30000.png", "thin_30000x1.png"):
        array = decode_and_preprocess(_kind(name).data, PRE, max_pixels=LIMIT)
        assert array.shape == (3, 224, 224)
    # The old path made a 256 x 7.7 M intermediate (5.9 GB); the crop is 150 KB.
    assert process.memory_info().rss - before < 50 * 1024 * 1024


def test_structure_walks_are_capped() -> None:
    # Millions of tiny segments or boxes would keep the API walking; they are refused.
    jpeg = b"\xff\xd8" + b"\xff\xe1\x00\x02" * 20_000 + b"\xff\xd9"
    avif = b"\x00\x00\x00\x10ftypavif\x00\x00\x00\x00" + b"\x00\x00\x00\x08free" * 20_000
    for data, fmt in ((jpeg, "JPEG"), (avif, "AVIF")):
        with pytest.raises(VisionqError, match=f"{fmt} has more than") as caught:
            check_image(data, max_pixels=LIMIT)
        assert caught.value.code == "invalid_image"


def test_transparent_colour_in_a_grey_png_is_flattened() -> None:
    grey = Image.fromarray(np.array([[0, 100]], dtype=np.uint8), "L")
    image = decode_image(save(grey, "PNG", transparency=0), max_pixels=LIMIT)
    assert np.asarray(image)[0].tolist() == [[255, 255, 255], [100, 100, 100]]


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_gpu_decode_path_runs_on_the_cpu_device_too(orientation: int) -> None:
    # make_gpu_decoder's torchvision path (decode_jpeg, orient, resize, crop) on CPU tensors:
    # the same picture the same way up as the PIL path (resamplers differ slightly).
    from services.gpu_worker.gpu_decode import PendingJpeg, make_gpu_decoder, stack_batch

    data = save(make_image(4, (640, 400)), "JPEG", quality=92, exif=exif_bytes(orientation))
    pending = make_gpu_decoder(PRE, LIMIT, torch.device("cpu"))(data)
    assert isinstance(pending, PendingJpeg)  # decoded with its batch, in one call
    batch = stack_batch([pending, pending], torch.device("cpu"))
    assert isinstance(batch, torch.Tensor) and batch.shape == (2, 3, 224, 224)
    decoded = batch[0]
    on_cpu = decode_and_preprocess(data, PRE, max_pixels=LIMIT).astype(int)
    assert np.abs(decoded.numpy().astype(int) - on_cpu).mean() < 4
    upright = decode_and_preprocess(save(make_image(4, (640, 400)), "JPEG"), PRE, max_pixels=LIMIT)
    if orientation != 1:
        assert np.abs(decoded.numpy().astype(int) - upright).mean() > 10


def test_bigtiff_gets_a_precise_415() -> None:
    from io import BytesIO

    from PIL import Image

    from models.preprocess import check_image
    from services.common.errors import UnsupportedMediaType

    out = BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(out, format="TIFF", big_tiff=True)
    with pytest.raises(UnsupportedMediaType, match="BigTIFF"):
        check_image(out.getvalue(), max_pixels=10**6)


def test_header_errors_name_no_python_object() -> None:
    import struct
    import zlib

    from models.preprocess import check_image
    from services.common.errors import InvalidImage

    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    png = (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    )
    with pytest.raises(InvalidImage) as caught:
        check_image(png, max_pixels=10**6)
    assert " object at 0x" not in caught.value.message
