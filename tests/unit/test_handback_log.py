"""A hand-back is logged as one INFO line; other task errors keep Celery's WARNING+traceback."""

from __future__ import annotations

import logging
import sys

from celery.exceptions import Reject

from services.gpu_worker.tasks import HANDED_BACK, HandBackLogFilter


def _record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord(
        "celery.app.trace", logging.WARNING, __file__, 1, "Task %s rejected", ("x",), info
    )


def test_a_hand_back_is_one_info_line_without_traceback() -> None:
    logging.getLogger("celery.app.trace").setLevel(logging.INFO)
    record = _record(Reject(HANDED_BACK, requeue=True))
    assert HandBackLogFilter().filter(record)
    assert (record.levelno, record.levelname, record.exc_info) == (logging.INFO, "INFO", None)
    assert "Traceback" not in logging.Formatter().format(record)


def test_a_hand_back_is_dropped_when_info_is_off() -> None:
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    try:
        assert not HandBackLogFilter().filter(_record(Reject(HANDED_BACK, requeue=True)))
    finally:
        logging.getLogger("celery.app.trace").setLevel(logging.NOTSET)


def test_other_rejections_and_errors_keep_their_traceback() -> None:
    for exc in (Reject("poison", requeue=False), Reject("other", requeue=True), ValueError("x")):
        record = _record(exc)
        assert HandBackLogFilter().filter(record)
        assert record.levelno == logging.WARNING and record.exc_info is not None
