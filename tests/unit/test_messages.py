"""The submit script's Celery messages are the ones ``send_task`` itself would push."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from services.api.messages import task_message
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
def test_the_message_is_what_send_task_pushes(server: RedisServer, lane: str) -> None:
    settings = ApiSettings(redis_url=server.url, models=["noop"], default_model="noop")
    celery = make_celery(settings)
    queue = queue_name("noop", lane)
    celery.send_task(TASK_NAME, args=["job1", "noop", lane], task_id="job1", queue=queue)
    client = redis.Redis.from_url(server.url)
    sent = json.loads(client.rpop(queue) or b"{}")
    built = json.loads(task_message(celery, "job1", "noop", lane))
    # Each publish draws a fresh delivery tag: only its shape can match.
    assert len(built["properties"].pop("delivery_tag")) == len(
        sent["properties"].pop("delivery_tag")
    )
    assert built == sent
