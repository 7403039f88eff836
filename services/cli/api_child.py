"""The app factory of ``visionq api --workers N``'s processes: they die with their parent.

uvicorn's supervisor spawns the N serving processes; if the supervisor is SIGKILLed they
would keep serving the shared port, orphaned, with nobody to stop them. Each one asks the
Linux kernel for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), and a small
thread also watches the parent's PID (other systems, and a parent that died before prctl).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading

from fastapi import FastAPI

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_INTERVAL_S = 1.0
FORCE_EXIT_S = 10.0  # after the parent's death, a graceful stop gets this long


def die_with_parent(parent_pid: int) -> None:
    """Stop this process (SIGTERM, then exit) once ``parent_pid`` is no longer its parent."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
                logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as exc:
            logger.warning("prctl unavailable (%s); watching the parent instead", exc)

    def watch() -> None:
        while os.getppid() == parent_pid:
            threading.Event().wait(WATCH_INTERVAL_S)
        logger.error("the supervising process %d is gone; stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn closes the listener first
        threading.Event().wait(FORCE_EXIT_S)
        os._exit(1)

    threading.Thread(target=watch, name="vq-parent-watch", daemon=True).start()


def create_app() -> FastAPI:
    """The API app, in a process that stops when its supervisor dies."""
    from services.api.app import create_app as create

    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:
        die_with_parent(parent.pid)
    return create()
