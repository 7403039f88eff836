"""``visionq models``: every known model, its task and input size, and where its weights
would come from (a file, the torch hub cache, a download, random, or missing with the fix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from services.common.errors import ConfigError
from services.common.settings import CommonSettings

_HEADER = ("NAME", "TASK", "INPUT", "SERVED", "WEIGHTS")


@dataclass(frozen=True)
class ModelRow:
    """One line of the table; ``fix`` says how to provide weights that are missing."""

    name: str
    task: str
    input: str
    served: str
    weights: str
    fix: str = ""

    @property
    def missing(self) -> bool:
        """True when the model has no weights anywhere (it could not start)."""
        return bool(self.fix)


def _weights_text(kind: str, location: str, allow_random: bool) -> str:
    if kind == "hub_cache":
        return f"hub cache {location}"
    if kind == "download":
        # The worker falls back to random weights only when they are allowed.
        then = "RANDOM weights" if allow_random else "the worker stops"
        return f"download on first use from {location} (without network: {then})"
    if kind == "random":
        return "RANDOM (VISIONQ_ALLOW_RANDOM_WEIGHTS): predictions are meaningless"
    return f"{kind} {location}".strip()


def model_rows(settings: CommonSettings) -> list[ModelRow]:
    """A row for every built-in and models-file model, plus served names that are unknown."""
    # Imported here so that `visionq --help` does not load the registry.
    from models.specs import load_registry
    from models.weights import resolve_weights

    registry = load_registry(settings.models_file)
    rows: list[ModelRow] = []
    for name in sorted(registry):
        spec = registry[name]
        served = "yes" if name in settings.models else "no"
        size = spec.preprocess.input_size
        base = (name, spec.task, f"{size}x{size}", served)
        try:
            # Nothing is fetched: a download only names the URL the worker would use.
            source = resolve_weights(
                spec,
                weights_dir=settings.weights_dir,
                allow_random=settings.allow_random_weights,
                allow_download=settings.allow_download,
            )
        except ConfigError as exc:
            fix = exc.message.split(": ", 1)[-1]
            rows.append(ModelRow(*base, "MISSING (fix below)", fix=fix))
            continue
        rows.append(
            ModelRow(
                *base, _weights_text(source.kind, source.location, settings.allow_random_weights)
            )
        )
    for name in settings.models:
        if name not in registry:
            fix = "not a built-in model: declare it in VISIONQ_MODELS_FILE or drop it"
            rows.append(ModelRow(name, "?", "?", "yes", "UNKNOWN MODEL (fix below)", fix=fix))
    return rows


def print_models(settings: CommonSettings, out: TextIO) -> int:
    """Print the table, then one fix per model without weights; always 0 (a listing)."""
    rows = model_rows(settings)
    cells = [_HEADER] + [(r.name, r.task, r.input, r.served, r.weights) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    for cell in cells:
        padded = [text.ljust(width) for text, width in zip(cell[:4], widths, strict=True)]
        out.write("  ".join([*padded, cell[4]]) + "\n")
    missing = [r for r in rows if r.missing]
    if missing:
        out.write(f"\n{len(missing)} model(s) have no weights and cannot start as configured:\n")
        for row in missing:
            out.write(f"  {row.name}: {row.fix}\n")
    return 0
