"""Model handlers: the contract (``Handler``) and the built-in tasks.

Importing this package does not import torch; the built-in handler modules
(``classification``, ``detection``, ``embedding``, ``segmentation``) do.
"""

from models.handlers.base import Handler, HandlerOptions, NoParams
from models.handlers.registry import handler_path, make_handler, params_class, task_of

__all__ = [
    "Handler",
    "HandlerOptions",
    "NoParams",
    "handler_path",
    "make_handler",
    "params_class",
    "task_of",
]
