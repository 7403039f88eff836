"""``visionq models``: the registered models and where their weights would come from."""

from __future__ import annotations

from typing import TextIO

from services.common.errors import ConfigError
from services.common.settings import CommonSettings


def model_rows(settings: CommonSettings) -> list[tuple[str, str, str, str, str]]:
    """(name, task, input size, served, weights source or error) for every known model."""
    # Imported here so that `visionq --help` does not load the registry.
    from models.specs import load_registry
    from models.weights import resolve_weights

    registry = load_registry(settings.models_file)
    rows: list[tuple[str, str, str, str, str]] = []
    for name in sorted(registry):
        spec = registry[name]
        try:
            source = resolve_weights(
                spec,
                weights_dir=settings.weights_dir,
                allow_random=settings.allow_random_weights,
                allow_download=False,  # listing must not fetch anything
            )
            weights = f"{source.kind} {source.location}".strip()
            if source.kind == "random":
                weights += " (random init: predictions are meaningless)"
        except ConfigError as exc:
            weights = f"error: {exc.message}"
        size = spec.preprocess.input_size
        served = "yes" if name in settings.models else "no"
        rows.append((name, spec.task, f"{size}x{size}", served, weights))
    for name in settings.models:
        if name not in registry:
            rows.append(
                (name, "?", "?", "yes", "error: not a built-in model nor in the models file")
            )
    return rows


def print_models(settings: CommonSettings, out: TextIO) -> int:
    """Print the models table; 1 when a served model has no weights, else 0."""
    rows = model_rows(settings)
    header = ("NAME", "TASK", "INPUT", "SERVED", "WEIGHTS")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        out.write("  ".join([*cells, row[4]]) + "\n")
    broken = [r[0] for r in rows if r[3] == "yes" and r[4].startswith("error:")]
    return 1 if broken else 0
