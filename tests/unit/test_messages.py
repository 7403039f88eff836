"""The submit script's Celery messages are the ones ``send_task`` itself would push."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from services.api.messages import _template, task_message
from services.common.celery_app import make_celery
from services.common.jobs import BULK, INTERACTIVE, TASK_NAME, queue_name
from services.common.redis_server import RedisServer
from services.common.settings import ApiSettings


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer(port=0).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("lane", [INTERACTIVE, BULK])
# API job ids are uuid4 hex (built from a per-queue template); other ids take Celery's path.
@pytest.mark.parametrize("job_id", ["job1", uuid.uuid4().hex, "odd 'id' \u00e9\\", "x" * 65])
def test_the_message_is_what_send_task_pushes(server: RedisServer, lane: str, job_id: str) -> None:
    settings = ApiSettings(redis_url=server.url, models=["noop"], default_model="noop")
    celery = make_celery(settings)
    queue = queue_name("noop", lane)
    celery.send_task(TASK_NAME, args=[job_id, "noop", lane], task_id=job_id, queue=queue)
    client = redis.Redis.from_url(server.url)
    sent = json.loads(client.rpop(queue) or b"{}")
    built = json.loads(task_message(celery, job_id, "noop", lane))
    # Each publish draws a fresh delivery tag: only its shape can match.
    assert len(built["properties"].pop("delivery_tag")) == len(
        sent["properties"].pop("delivery_tag")
    )
    assert built == sent


def test_each_message_has_its_own_delivery_tag_and_id() -> None:
    celery = make_celery(ApiSettings(models=["noop"], default_model="noop"))
    first, second = (json.loads(task_message(celery, j, "noop", INTERACTIVE)) for j in "ab")
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]
    assert (first["headers"]["id"], second["headers"]["id"]) == ("a", "b")


def test_api_job_ids_take_the_template() -> None:
    # The per-queue template is what keeps a submit cheap; None would mean Celery's slow
    # path for every job (still correct, which is why the comparison above cannot tell).
    celery = make_celery(ApiSettings(models=["noop"], default_model="noop"))
    assert _template(celery, "noop", INTERACTIVE, celery.thread_oid) is not None


def test_a_forked_process_names_itself_as_origin() -> None:
    celery = make_celery(ApiSettings(models=["noop"], default_model="noop"))
    assert json.loads(task_message(celery, "a", "noop", INTERACTIVE))["headers"]["origin"]
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's result travels through the pipe
        try:
            message = json.loads(task_message(celery, "a", "noop", INTERACTIVE))
            os.write(write, message["headers"]["origin"].encode())
        finally:
            os._exit(0)
    os.close(write)
    origin = os.read(read, 200).decode()
    os.waitpid(child, 0)
    assert origin.startswith(f"gen{child}@")
