"""services.common.logs: ids from the context, JSON lines, chatty loggers quiet by default."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from services.common import logs


@pytest.fixture()
def root() -> Iterator[logging.Logger]:
    logger = logging.getLogger()
    saved = (list(logger.handlers), logger.level)
    levels = {n: logging.getLogger(n).level for n in logs.CHATTY}
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.setLevel(saved[1])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _capture(root: logging.Logger) -> io.StringIO:
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    out = io.StringIO()
    handler.setStream(out)
    return out


def test_json_lines_carry_the_ids_of_their_context(root: logging.Logger) -> None:
    logs.configure("INFO", "json")
    out = _capture(root)
    log = logging.getLogger("visionq.test")
    with logs.log_context(batch_id="b1"):
        log.warning("in a batch")
        with logs.log_context(job_id="j1"):
            log.info("one job")
        log.info("explicit", extra={"job_id": "j2"})
    log.info("outside")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["message"], r.get("job_id"), r.get("batch_id")) for r in lines] == [
        ("in a batch", None, "b1"),
        ("one job", "j1", "b1"),
        ("explicit", "j2", "b1"),
        ("outside", None, None),
    ]
    assert lines[0]["level"] == "WARNING" and lines[0]["logger"] == "visionq.test"


def test_context_is_per_thread(root: logging.Logger) -> None:
    logs.configure("INFO", "text")
    out = _capture(root)
    log = logging.getLogger("visionq.test")
    with logs.log_context(batch_id="mine"):
        other = threading.Thread(target=lambda: log.info("other thread"))
        other.start()
        other.join()
        log.info("this thread")
    text = out.getvalue()
    assert "other thread\n" in text
    assert "this thread [batch_id=mine]" in text


def test_per_request_and_per_task_lines_are_off_unless_debug(root: logging.Logger) -> None:
    logs.configure("INFO", "text")
    assert all(not logging.getLogger(n).isEnabledFor(logging.INFO) for n in logs.CHATTY)
    logs.configure("DEBUG", "json")  # a second call in one process changes nothing
    assert len(root.handlers) == 1
    for handler in list(root.handlers):
        root.removeHandler(handler)
    logs.configure("DEBUG", "text")
    assert all(logging.getLogger(n).isEnabledFor(logging.INFO) for n in logs.CHATTY)
