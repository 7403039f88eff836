"""The Celery message of one job, built in-process so that the submit script enqueues it.

``celery.send_task`` costs about 0.5 CPU-ms per job here (kombu builds a Redis client per
publish, an ``ensure`` retry wrapper, a blocking LPUSH that the API must run in a thread),
and the enqueue is a second step after the job is stored. Instead the message is built here,
exactly as Celery 5 (protocol 2) and kombu's Redis transport would write it, and lua/submit.lua
pushes it onto the queue list in the same atomic step that stores the job. The worker side is
unchanged: Celery consumes it like any other message. tests/unit/test_messages.py compares
the result with what ``send_task`` itself pushes, field by field, so a Celery or kombu upgrade
that changes the format fails there.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from celery import Celery
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps

from services.common.jobs import TASK_NAME, queue_name

_PERSISTENT = 2  # AMQP delivery mode; Celery's default for task messages


def task_message(celery: Celery, job_id: str, model: str, lane: str) -> str:
    """The JSON that kombu would LPUSH onto ``queue_name(model, lane)`` for this job's task.

    The message of ``celery.send_task(TASK_NAME, args=[job_id, model, lane], task_id=job_id,
    queue=queue_name(model, lane))``: default exchange, priority 0, JSON body in base64.
    """
    headers, properties, body, _ = celery.amqp.as_task_v2(
        job_id,
        TASK_NAME,
        args=[job_id, model, lane],
        kwargs={},
        reply_to=celery.thread_oid,
        ignore_result=None,
    )
    content_type, content_encoding, data = serialize(body, serializer="json")  # type: ignore[no-untyped-call]
    props: dict[str, Any] = dict(properties)
    props.update(
        delivery_mode=_PERSISTENT,
        delivery_info={"exchange": "", "routing_key": queue_name(model, lane)},
        priority=0,
        body_encoding="base64",
        delivery_tag=str(uuid.uuid4()),
    )
    raw = data.encode() if isinstance(data, str) else data
    message = {
        "body": base64.b64encode(raw).decode(),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": props,
    }
    text: str = dumps(message)  # type: ignore[no-untyped-call]
    return text
