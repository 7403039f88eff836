"""Which handler serves a model spec, and its Params, found without importing torch.

Built-in tasks map to the handlers in this package; a models-file entry may name its own
as ``handler = "package.module:ClassName"``. The API needs only ``params_class`` (to
validate form fields and publish the schema), so the built-in Params live in the torch-free
``models.handlers.params``; a custom handler's module is imported as it is.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from pydantic import BaseModel

from models.handlers.base import Handler, HandlerOptions, NoParams
from models.handlers.params import (
    ClassificationParams,
    DetectionParams,
    EmbeddingParams,
    SegmentationParams,
)
from models.specs import ModelSpec
from services.common.errors import ConfigError

logger = logging.getLogger(__name__)

BUILTIN_HANDLERS: dict[str, str] = {
    "classification": "models.handlers.classification:ClassificationHandler",
    "detection": "models.handlers.detection:DetectionHandler",
    "embedding": "models.handlers.embedding:EmbeddingHandler",
    "segmentation": "models.handlers.segmentation:SegmentationHandler",
    "noop": "models.handlers.noop:NoopHandler",
}
_BUILTIN_PARAMS: dict[str, type[BaseModel]] = {
    "classification": ClassificationParams,
    "detection": DetectionParams,
    "embedding": EmbeddingParams,
    "segmentation": SegmentationParams,
    "noop": NoParams,
}


def handler_path(spec: ModelSpec) -> str:
    """``package.module:Class`` of the handler serving ``spec``."""
    if spec.handler is not None:
        return spec.handler
    try:
        return BUILTIN_HANDLERS[spec.task]
    except KeyError:
        raise ConfigError(
            f"model {spec.name!r}: task {spec.task!r} has no built-in handler; "
            "declare handler = 'package.module:ClassName' in the models file"
        ) from None


def import_handler(path: str) -> type[Handler]:
    """Import ``package.module:Class``; raises ConfigError saying what is wrong."""
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a user's module can fail in any way on import
        raise ConfigError(f"cannot import handler module {module_name!r}: {exc}") from exc
    cls: Any = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Handler):
        raise ConfigError(
            f"handler {path!r} must name a subclass of models.handlers.Handler "
            f"(found {type(cls).__name__})"
        )
    params = getattr(cls, "Params", None)
    if not isinstance(params, type) or not issubclass(params, BaseModel):
        raise ConfigError(f"handler {path!r}: Params must be a pydantic BaseModel subclass")
    return cls


def params_class(spec: ModelSpec) -> type[BaseModel]:
    """The per-request options of ``spec``'s handler (torch-free for built-in tasks)."""
    if spec.handler is None and spec.task in _BUILTIN_PARAMS:
        return _BUILTIN_PARAMS[spec.task]
    return import_handler(handler_path(spec)).Params


def task_of(spec: ModelSpec) -> str:
    """The task reported for ``spec``: a custom handler's own ``task`` when it names one."""
    if spec.handler is None:
        return spec.task
    declared = import_handler(spec.handler).task
    return spec.task if spec.task != "custom" else declared


def make_handler(spec: ModelSpec, options: HandlerOptions) -> Handler:
    """A fresh, not yet set-up handler instance for ``spec``."""
    return import_handler(handler_path(spec))(options)
