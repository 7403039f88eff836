"""Ahead-of-time compiled forward passes (``VISIONQ_AOT_COMPILE``): torch.export + AOTInductor.

Why: an eager forward pass is a Python loop over torch operators, and every operator
releases the GIL and takes it back. In a worker, the GIL is shared with Celery's consumer
and the decode thread, so the forward thread waits to take it back after each operator
(a convoy): mobilenet_v3_small on one thread ran 477 images/s alone and 338 beside a
thread that runs Python 65 % of the time (-29 %). A model compiled ahead of time by
AOTInductor is one native call per batch, with the GIL released throughout: 506 alone, 508
beside the same thread (``torch.compile``'s Inductor, whose wrapper is Python, lost 16 %).

How: ``torch.export.export`` with a dynamic batch dimension (1..``MAX_BATCH``), then
``torch._inductor.aoti_compile_and_package`` (the AOTInductor entry point of torch's docs,
https://pytorch.org/docs/stable/torch.compiler_aot_inductor.html) builds a shared library
with a C++ compiler, once per distinct exported program: the package is kept under the
Inductor cache directory (``TORCHINDUCTOR_CACHE_DIR``, a volume in compose/k8s), named by a
hash of the exported graph, the weights and the torch version, so a restarted worker
loads it in well under a second instead of compiling again (16 s for mobilenet_v3_small on
this project's 2-core machine).

The CPU only: on CUDA, half-precision weights and autocast are outside what this path
handles; ``VISIONQ_COMPILE`` is the option there. A model that ``torch.export`` cannot
capture (data-dependent control flow, non-tensor outputs), or a machine without a C++
compiler, is served eager, with a warning that says why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# The largest batch one compiled package takes (the worker's VISIONQ_MAX_BATCH_SIZE is at
# most 1024): the batch dimension is dynamic, so every size up to this shares one package.
MAX_BATCH = 1024
# Bumped when what a cached package holds changes meaning (its file name includes it).
_FORMAT = "1"


class AOTCompiled(torch.nn.Module):
    """An AOTInductor package standing in for the module it was compiled from.

    ``forward(x)`` takes a float32 (N, C, H, W) batch with 1 <= N <= ``MAX_BATCH`` and C, H,
    W as traced, in any memory layout, and returns what the original forward returned
    (tensors, or a dict/list/tuple of them). Only ``forward`` is compiled: the original's
    submodules are not reachable through this object.
    """

    def __init__(self, runner: Any, source: str) -> None:
        super().__init__()
        self._runner = runner
        self.source = source  # the original module's class, for logs and repr

    def forward(self, x: torch.Tensor) -> Any:
        """The compiled forward pass of one batch."""
        return self._runner(x)

    def extra_repr(self) -> str:
        return f"AOTInductor package of {self.source}"


def cache_dir() -> Path:
    """Where compiled packages are kept: ``visionq-aot`` under Inductor's cache directory."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir

    return Path(inductor_cache_dir()) / "visionq-aot"


def _package_key(program: torch.export.ExportedProgram) -> str:
    """A hash of everything the compiled package depends on: graph, weights, torch build."""
    digest = hashlib.sha256()
    digest.update(f"{_FORMAT}|{torch.__version__}|{MAX_BATCH}\n".encode())
    digest.update(str(program.graph_module.code).encode())
    digest.update(str(program.call_spec).encode())
    for name, value in sorted({**program.state_dict, **program.constants}.items()):
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}{tensor.stride()}".encode())
            # Flattened first: a (C, 1, 1, 1) weight counts as contiguous with any strides.
            flat = tensor.reshape(-1).contiguous()
            if flat.dtype == torch.bool:
                flat = flat.to(torch.uint8)
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()[:32]


def _compile_to(program: torch.export.ExportedProgram, path: Path) -> None:
    """Compile ``program`` into the package ``path``, written atomically (workers may race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".compiling-", suffix=".pt2")
    os.close(handle)
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from workers run as other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def aot_compile(
    module: torch.nn.Module, example: torch.Tensor, name: str = "", cache: bool = True
) -> torch.nn.Module:
    """``module`` compiled ahead of time for batches shaped like ``example``, or ``module``
    itself (with a warning) when it cannot be.

    ``example`` is one float32 (N, C, H, W) batch in the memory layout the worker will send;
    only its batch size varies later (1..``MAX_BATCH``). The module must be in eval mode.
    A package compiled before for the same graph and weights is loaded from ``cache_dir()``;
    without ``cache`` (random weights: no other process will ever have the same) the package
    is compiled in a temporary folder and removed once loaded.
    """
    label = name or type(module).__name__
    start = time.perf_counter()
    try:
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        with torch.inference_mode():
            program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        if cache:
            path = cache_dir() / f"{_package_key(program)}.pt2"
            cached = path.exists()
            if not cached:
                logger.info("model %s: compiling with AOTInductor (once; kept in %s)", label, path)
                _compile_to(program, path)
            runner = torch._inductor.aoti_load_package(str(path))
        else:
            cached = False
            logger.info("model %s: compiling with AOTInductor (random weights: not kept)", label)
            with tempfile.TemporaryDirectory(prefix="visionq-aot-") as folder:
                path = Path(folder) / "model.pt2"
                _compile_to(program, path)
                runner = torch._inductor.aoti_load_package(str(path))
    except Exception as exc:  # export and Inductor raise many types, by model and machine
        said = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        logger.warning(
            "model %s: VISIONQ_AOT_COMPILE could not compile it, serving it eager "
            "(%s: %s)", label, type(exc).__name__, said,
        )  # fmt: skip
        return module
    logger.info(
        "model %s: AOTInductor package %s in %.1f s",
        label, "loaded from the cache" if cached else "compiled", time.perf_counter() - start,
    )  # fmt: skip
    return AOTCompiled(runner, type(module).__name__)
