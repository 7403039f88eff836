"""A consumer that fetches one message through the worker's transport, then hangs.

``python -m tests.faults.ghost_consumer REDIS_URL QUEUE WORKER_ID`` records its holdings
as worker WORKER_ID would (held set and fence key, broker.py), prints ``fetched <tag>``
once it holds a message, and waits to be SIGKILLed: a worker that dies holding it. It
never acks nor closes its channel (a close would restore the message).
"""

from __future__ import annotations

import sys
import time

from kombu.connection import Connection

from services.gpu_worker.broker import Transport, record_holdings
from services.gpu_worker.handback import fence_key, held_key


def main() -> None:
    url, queue, worker_id = sys.argv[1:4]
    record_holdings(held_key(worker_id), fence_key(worker_id))
    conn = Connection(url, transport=Transport)  # type: ignore[no-untyped-call]
    simple = conn.SimpleQueue(queue)  # type: ignore[no-untyped-call]
    message = simple.get(block=True, timeout=60)
    print(f"fetched {message.delivery_tag}", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
