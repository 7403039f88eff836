"""The Lua scripts of the Redis protocol, one ``.lua`` file each, loaded by name.

Scripts that the drain path needs while Redis is at its ``maxmemory`` (claim, finish,
heartbeat, kombu's delivery bookkeeping) start with ``#!lua flags=allow-oom``: each of them
writes a few bytes so that a job can finish, which then frees the job's image. The submit
path never carries that flag: it is what must stop first when memory runs out.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def lua(name: str) -> str:
    """The text of ``services/common/lua/<name>.lua``; pass it to ``register_script``."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
