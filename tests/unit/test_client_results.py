"""Typed results per task in the client, and the CLI's CSV rows per detected box."""

from __future__ import annotations

import base64
import io
import struct

import numpy as np
from PIL import Image

from services.cli.predict_output import csv_rows
from services.client import (
    Classification,
    Custom,
    Detections,
    Embedding,
    Prediction,
    Segmentation,
    parse_result,
)
from services.client._shared import form_fields


def test_classification_and_compat_top_k() -> None:
    top = [{"label": "cat", "index": 3, "score": 0.9}]
    pred = Prediction.from_json(
        {"filename": "a.jpg", "job_id": "j", "top_k": top, "result": {"top_k": top}}
    )
    assert isinstance(pred.result, Classification)
    assert pred.result.top_k == pred.top_k and pred.top_k[0].label == "cat"


def test_detections() -> None:
    raw = {"detections": [{"box": [1, 2, 30.5, 40], "label": "dog", "index": 18, "score": 0.7}]}
    result = parse_result(raw)
    assert isinstance(result, Detections)
    (det,) = result.detections
    assert det.box == (1.0, 2.0, 30.5, 40.0) and det.label == "dog" and det.index == 18


def test_embedding_float32_and_base64_f16() -> None:
    values = [0.5, -0.25, 1.0]
    plain = parse_result({"embedding": values, "dim": 3, "normalized": False})
    packed = base64.b64encode(struct.pack("<3e", *values)).decode()
    compact = parse_result({"embedding": packed, "dim": 3, "normalized": False})
    assert isinstance(plain, Embedding) and isinstance(compact, Embedding)
    assert plain.vector == compact.vector == values


def test_segmentation_png_and_rle_give_the_same_map() -> None:
    mask = np.array([[0, 0, 3], [3, 3, 1]], dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG")
    classes = [{"index": 3, "label": "x", "fraction": 0.5}]
    png = parse_result(
        {
            "width": 3,
            "height": 2,
            "mask": {"format": "png", "data": base64.b64encode(buf.getvalue()).decode()},
            "classes": classes,
        }
    )
    rle = parse_result(
        {
            "width": 3,
            "height": 2,
            "mask": {"format": "rle", "values": [0, 3, 1], "counts": [2, 3, 1]},
            "classes": classes,
        }
    )
    assert isinstance(png, Segmentation) and isinstance(rle, Segmentation)
    assert png.class_map() == rle.class_map() == mask.tolist()


def test_a_custom_result_is_kept_as_json() -> None:
    assert parse_result({"mean_rgb": [0.1, 0.2, 0.3]}) == Custom({"mean_rgb": [0.1, 0.2, 0.3]})


def test_params_become_form_fields() -> None:
    fields = form_fields("m", params={"score_threshold": 0.3, "normalize": False})
    assert fields == {"model": "m", "score_threshold": "0.3", "normalize": "false"}


def test_csv_has_one_row_per_box() -> None:
    det = {"label": "dog", "index": 18, "score": 0.5, "box": [1.0, 2.0, 3.0, 4.0]}
    record = {
        "path": "/x/a.jpg",
        "filename": "a.jpg",
        "model": "ssd",
        "job_id": "j",
        "result": {"detections": [det, {**det, "label": "cat", "score": 0.25}]},
        "timings": {"batch_size": 2},
    }
    rows = csv_rows(record)
    assert [(r["label"], r["score"], r["x2"]) for r in rows] == [
        ("dog", "0.500000", "3.00"),
        ("cat", "0.250000", "3.00"),
    ]
    assert all(r["status"] == "ok" and r["path"] == "/x/a.jpg" for r in rows)
    empty = csv_rows({**record, "result": {"detections": []}})
    assert len(empty) == 1 and empty[0]["label"] == ""
