"""The Celery message of one job, built in-process so that the submit script enqueues it.

``celery.send_task`` costs about 0.5 CPU-ms per job here (kombu builds a Redis client per
publish, an ``ensure`` retry wrapper, a blocking LPUSH that the API must run in a thread),
and the enqueue is a second step after the job is stored. Instead the message is built here,
exactly as Celery 5 (protocol 2) and kombu's Redis transport would write it, and lua/submit.lua
pushes it onto the queue list in the same atomic step that stores the job. The worker side is
unchanged: Celery consumes it like any other message. tests/unit/test_messages.py compares
the result with what ``send_task`` itself pushes, field by field, so a Celery or kombu upgrade
that changes the format fails there.

Celery's own path (``as_task_v2``, its ``saferepr`` of the args, two JSON encodings and a
base64) cost about 50 us per job, most of the API's share of a submit. Only the job id and
the delivery tag differ between the messages of one queue, so the text is built once per
queue by Celery's path with a marker in their place, and each job's text is the template
with the marker replaced: the same bytes, checked against Celery's path when the template
is made.
"""

from __future__ import annotations

import base64
import os
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps

from services.common.jobs import TASK_NAME, queue_name

_PERSISTENT = 2  # AMQP delivery mode; Celery's default for task messages

# An id that JSON, repr and Celery's saferepr all write as itself between quotes (API job
# ids are uuid4 hex); anything else takes Celery's path.
_PLAIN_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
# Markers that a plain id cannot contain ("@"), for the job id, the body and the delivery tag.
_JOB, _BODY, _TAG = "@vq-job@", "@vq-body@", "@vq-tag@"
_MARKERS = re.compile(f"({re.escape(_JOB)}|{re.escape(_BODY)}|{re.escape(_TAG)})")


def _celery_message(
    celery: Celery, job_id: str, model: str, lane: str, reply_to: str, origin: str | None
) -> tuple[dict[str, Any], bytes]:
    """The message as a dict (its body left out) and the serialized body, by Celery's path."""
    headers, properties, body, _ = celery.amqp.as_task_v2(
        job_id,
        TASK_NAME,
        args=[job_id, model, lane],
        kwargs={},
        reply_to=reply_to,
        ignore_result=None,
        origin=origin,
    )
    content_type, content_encoding, data = serialize(body, serializer="json")  # type: ignore[no-untyped-call]
    props: dict[str, Any] = dict(properties)
    props.update(
        delivery_mode=_PERSISTENT,
        delivery_info={"exchange": "", "routing_key": queue_name(model, lane)},
        priority=0,
        body_encoding="base64",
        delivery_tag="",
    )
    message = {
        "body": "",
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": props,
    }
    return message, data.encode() if isinstance(data, str) else data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _text(message: dict[str, Any], body: str, tag: str) -> str:
    """The message's JSON with ``body`` (base64) and ``tag`` filled in."""
    message["body"] = body
    message["properties"]["delivery_tag"] = tag
    text: str = dumps(message)  # type: ignore[no-untyped-call]
    return text


@dataclass(frozen=True)
class _Template:
    """One queue's message text, split at the job id, the body and the delivery tag."""

    body: list[str]  # the serialized body around the job id
    text: list[str]  # the message around the markers, in ``order``
    order: tuple[str, ...]  # which value goes after each piece of ``text`` but the last

    def render(self, job_id: str, tag: str) -> str:
        values = {_JOB: job_id, _BODY: _b64(job_id.join(self.body).encode()), _TAG: tag}
        out = [self.text[0]]
        for marker, piece in zip(self.order, self.text[1:], strict=True):
            out += (values[marker], piece)
        return "".join(out)


@lru_cache(maxsize=256)
def _template(celery: Celery, model: str, lane: str, reply_to: str) -> _Template | None:
    """The queue's template, or None when a marker would not stand for its value alone."""
    origin = anon_nodename()
    message, body = _celery_message(celery, _JOB, model, lane, reply_to, origin)
    parts = _MARKERS.split(_text(message, _BODY, _TAG))
    made = _Template(body.decode().split(_JOB), parts[0::2], tuple(parts[1::2]))
    # The proof that the markers stood for their values only: the longest plain id through
    # both paths (a longer args repr is where saferepr would start to cut).
    probe = "z" * 64
    expected_message, expected_body = _celery_message(celery, probe, model, lane, reply_to, origin)
    if made.render(probe, "t") != _text(expected_message, _b64(expected_body), "t"):
        return None
    return made


# The origin header names the process ("gen<pid>@host"): a forked child makes its own.
os.register_at_fork(after_in_child=_template.cache_clear)


def task_message(celery: Celery, job_id: str, model: str, lane: str) -> str:
    """The JSON that kombu would LPUSH onto ``queue_name(model, lane)`` for this job's task.

    The message of ``celery.send_task(TASK_NAME, args=[job_id, model, lane], task_id=job_id,
    queue=queue_name(model, lane))``: default exchange, priority 0, JSON body in base64.
    """
    reply_to = celery.thread_oid
    tag = str(uuid.uuid4())
    if _PLAIN_ID.fullmatch(job_id):
        template = _template(celery, model, lane, reply_to)
        if template is not None:
            return template.render(job_id, tag)
    message, body = _celery_message(celery, job_id, model, lane, reply_to, None)
    return _text(message, _b64(body), tag)
