"""GET /v1/models: what is served, where its weights come from, and who serves it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from models.handlers import params_class, task_of
from models.weights import resolve_weights
from services.api.deps import StateDep
from services.api.records import live_workers
from services.common.errors import ConfigError
from services.common.jobs import BULK, INTERACTIVE, queue_name

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
async def list_models(state: StateDep) -> dict[str, Any]:
    """Every served model: task, params schema, queue depth and live workers."""
    settings = state.settings
    workers = await live_workers(state.redis)
    pipe = state.redis.pipeline(transaction=False)
    for name in settings.models:
        pipe.llen(queue_name(name, INTERACTIVE))
        pipe.llen(queue_name(name, BULK))
    lengths = await pipe.execute()
    out = []
    for i, name in enumerate(settings.models):
        interactive, bulk = int(lengths[2 * i]), int(lengths[2 * i + 1])
        spec = state.registry[name]
        serving = [w for w in workers if name in w.get("models", [])]
        entry: dict[str, Any] = {
            "name": name,
            "task": task_of(spec),
            "params_schema": params_class(spec).model_json_schema(),
            "kind": spec.kind,
            "input_size": spec.preprocess.input_size,
            "default": name == settings.default_model,
            "queue": queue_name(name),
            "queue_depth": interactive + bulk,
            "queue_depth_by_lane": {INTERACTIVE: interactive, BULK: bulk},
            "live_workers": len(serving),
            "devices": sorted({str(w.get("device")) for w in serving}),
        }
        reported = [w["weights"][name] for w in serving if name in w.get("weights", {})]
        if reported:
            entry["weights"] = reported[0]
        else:
            try:
                source = resolve_weights(
                    spec,
                    weights_dir=settings.weights_dir,
                    allow_random=settings.allow_random_weights,
                    allow_download=settings.allow_download,
                )
                entry["weights"] = {
                    "source": source.kind,
                    "location": source.location,
                    "random": source.is_random,
                }
            except ConfigError as exc:
                entry["weights"] = {"source": "missing", "error": exc.message}
        if entry["weights"].get("random"):
            entry["warning"] = "RANDOM WEIGHTS: predictions are meaningless (tests/benchmarks)"
        out.append(entry)
    return {"models": out}
