"""Torch helpers the built-in handlers share: device-side normalisation, uint8 -> float."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch

from models.specs import ModelSpec, Preprocess

logger = logging.getLogger(__name__)


class Normalizer:
    """uint8 NCHW batch -> normalised float batch on the device, in the model's layout."""

    def __init__(self, pre: Preprocess, device: torch.device, channels_last: bool) -> None:
        self.device = device
        self.channels_last = channels_last
        mean = torch.tensor(pre.mean, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(pre.std, dtype=torch.float64).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as ONE multiply-add over the batch: x * scale + shift, folded
        # in float64 (within 5e-7 of the three-pass form, 3x less CPU time per batch).
        self.scale = (1.0 / (255.0 * std)).float().to(device)
        self.shift = (-mean / std).float().to(device)
        # One page-locked staging buffer, grown to the largest batch and reused: a fresh
        # pin_memory() per batch is a page-locking allocation on the hot path.
        self._pinned: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def _upload(self, host: torch.Tensor) -> torch.Tensor:
        """Copy a CPU batch to the GPU through the reused pinned buffer (asynchronously)."""
        n = host.numel()
        if self._pinned is None or self._pinned.numel() < n or self._pinned.dtype != host.dtype:
            self._pinned = torch.empty(n, dtype=host.dtype, pin_memory=True)
        elif self._copied is not None:
            # The previous batch's copy may still be reading the buffer.
            self._copied.synchronize()
        staging = self._pinned[:n].view(host.shape)
        staging.copy_(host)
        out = staging.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
        self._copied.record()
        return out

    def __call__(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalise on the device: the host copy stays uint8 (4x fewer bytes to move)."""
        host = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch)
        if self.device.type == "cuda" and host.device.type == "cpu":
            x = self._upload(host).float()
        else:
            host = host.to(self.device)
            if self.channels_last:
                # Reordered while still uint8 (a quarter of the float bytes); float() keeps
                # the layout, so the contiguous() below is then free.
                host = host.contiguous(memory_format=torch.channels_last)
            x = host.float()
        x = x.mul_(self.scale).add_(self.shift)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def to_device_float(image: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """One uint8 (3, H, W) image -> float32 in [0, 1] on ``device`` (detectors' input)."""
    host = image if isinstance(image, torch.Tensor) else torch.from_numpy(image)
    if device.type == "cuda" and host.device.type == "cpu":
        host = host.pin_memory()
    return host.to(device, non_blocking=True).float().div_(255.0)


# Enough compiled graphs for every batch bucket of a max batch of up to 1024 (11 buckets) and
# a few input sizes; past the limit dynamo silently falls back to eager.
RECOMPILE_LIMIT = 32


_NORMS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)


class Fp32Head(torch.nn.Module):
    """A final layer run in float32 outside autocast: logits (and the softmax after them)
    keep full precision while the body runs in half precision."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in) any float dtype -> (N, out) float32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            out: torch.Tensor = self.inner(x.float())
            return out


def half_weights(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Weights resident in ``dtype``; normalisation layers and the last Linear in float32.

    Under autocast, weights that are float32 are cast to half precision again on EVERY
    forward (autocast's weight cache only covers leaf tensors that require grad, and
    inference weights don't), which costs a full read and write of the weights per batch.
    Stored in half precision they are used as they are. Norm layers stay float32 (cuDNN's
    batch norm wants float32 parameters with half inputs; autocast runs layer/group norm in
    float32), and the classification head -- the last ``Linear`` -- runs in float32 via
    ``Fp32Head``, so the logits and softmax lose nothing to half precision.
    """
    module = module.to(dtype)
    for sub in module.modules():
        if isinstance(sub, _NORMS):
            sub.float()
    last: tuple[torch.nn.Module, str] | None = None
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.Linear):
                last = (parent, name)
    if last is not None:
        parent, name = last
        setattr(parent, name, Fp32Head(getattr(parent, name)))
    return module


# (layer, norm) pairs folded, as in torch.fx.experimental.optimization.fuse: exact types.
_FOLDABLE: tuple[tuple[type[torch.nn.Module], type[torch.nn.Module]], ...] = (
    (torch.nn.Conv1d, torch.nn.BatchNorm1d),
    (torch.nn.Conv2d, torch.nn.BatchNorm2d),
    (torch.nn.Conv3d, torch.nn.BatchNorm3d),
    (torch.nn.Linear, torch.nn.BatchNorm1d),
)


def _foldable_pairs(module: torch.nn.Module) -> list[tuple[str, str]]:
    """(layer, norm) qualified names where the norm takes the layer's output and only it.

    Found on a ``torch.fx.symbolic_trace`` of ``module`` (which raises for a module fx can't
    follow). A layer or norm called more than once (a shared module) is skipped: changing it
    would change every call.
    """
    import torch.fx

    graph = torch.fx.symbolic_trace(module).graph
    modules = dict(module.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not node.args:
            continue
        first = node.args[0]
        if not isinstance(first, torch.fx.Node) or first.op != "call_module":
            continue
        layer, norm = modules.get(str(first.target)), modules.get(str(node.target))
        kinds = (type(layer), type(norm))
        if kinds not in _FOLDABLE or len(first.users) > 1:
            continue  # another node reads the layer's output before normalisation
        if calls[first.target] > 1 or calls[node.target] > 1:
            continue
        if not getattr(norm, "track_running_stats", False):
            continue  # no running statistics to fold
        pairs.append((str(first.target), str(node.target)))
    return pairs


def fold_batchnorm(module: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """``module`` with each eval-mode BatchNorm that follows a convolution (or a Linear)
    folded into that layer's weight and bias, and how many were folded.

    y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta is one convolution with rescaled
    weights (``torch.nn.utils.fusion.fuse_conv_bn_eval``, the rule torch's own
    ``torch.fx.experimental.optimization.fuse`` applies), so a batch skips one full pass
    over every activation. Exact up to float rounding (within 1e-6 relative here).

    The pairs are found by tracing with ``torch.fx`` and folded IN PLACE on the module
    itself: the folded layer replaces the layer and ``torch.nn.Identity`` the BatchNorm, so
    the module keeps its class, its ``forward`` and every submodule a handler may call
    (``module.features``, ``module.classifier[-1]``), unlike fx's ``fuse``, which returns a
    GraphModule of bare ``Module`` shells. A module that fx can't follow (detectors, with
    data-dependent control flow), a TorchScript module and one in training mode come back
    as they were, with 0 and an INFO line saying why.
    """
    if isinstance(module, torch.jit.ScriptModule):
        # (Its submodules are script modules too: no BatchNorm instance to count.)
        logger.info("BatchNorm not folded: a TorchScript module is served as loaded")
        return module, 0
    norms = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    if not norms:
        return module, 0
    if module.training:
        logger.info("BatchNorm not folded: the module is in training mode")
        return module, 0
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    try:
        # Everything is computed before anything changes: a module fx can't follow, or a
        # pair whose shapes don't fold, leaves the module untouched.
        folds = []
        for layer_name, norm_name in _foldable_pairs(module):
            layer, norm = module.get_submodule(layer_name), module.get_submodule(norm_name)
            assert isinstance(norm, torch.nn.modules.batchnorm._BatchNorm)
            if isinstance(layer, torch.nn.Linear):
                folded: torch.nn.Module = fuse_linear_bn_eval(layer, norm)
            else:
                assert isinstance(layer, torch.nn.modules.conv._ConvNd)
                folded = fuse_conv_bn_eval(layer, norm)
            folds.append((layer_name, norm_name, folded))
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError... by model
        logger.info("BatchNorm not folded (%s: %s)", type(exc).__name__, str(exc)[:200])
        return module, 0
    for layer_name, norm_name, folded in folds:
        module.set_submodule(layer_name, folded)
        module.set_submodule(norm_name, torch.nn.Identity())
    return module, len(folds)


def channels_last_for(spec: ModelSpec, wanted: bool) -> bool:
    """Whether ``spec``'s model and batches use channels_last (NHWC) when ``wanted``
    (``VISIONQ_CHANNELS_LAST``): only for the models visionq builds (``kind="torchvision"``).

    An archive (TorchScript, ``torch.export``) is served in the layout it was traced with:
    its code may ``.view`` an activation, which raises on a channels_last tensor ("view size
    is not compatible with input tensor's size and stride").
    """
    if wanted and spec.kind != "torchvision":
        logger.info(
            "model %s: its %s archive gets NCHW (contiguous) batches, as traced; "
            "channels_last is for torchvision models",
            spec.name,
            {"torchscript": "TorchScript", "export": "torch.export"}.get(spec.kind, spec.kind),
        )
        return False
    return wanted


def prepare_module(
    module: torch.nn.Module,
    device: torch.device,
    *,
    channels_last: bool,
    compile: bool,
    half: str | None = None,
    fold: bool = False,
) -> torch.nn.Module:
    """BatchNorm folded into convolutions on the CPU when ``fold`` (``fold_batchnorm``),
    channels_last, weights in ``half`` precision on CUDA (``half_weights``), and
    ``torch.compile`` with static shapes when asked.

    On the CPU, folding and channels_last (NHWC, oneDNN's native layout for convolutions)
    together made mobilenet_v3_small's forward 1.75x faster on one thread (batch 8, 293 ->
    512-533 images/s), lraspp_mobilenet_v3_large 1.5x, efficientnet_b0 1.3x, resnet50
    1.2x. On CUDA the layers stay as loaded: half-precision weights keep norm layers in
    float32 on purpose, and the fold in half precision is not measured there.

    ``dynamic=False``: one specialised graph per batch shape (the runtime pads batches to
    buckets and compiles each at warm-up), never a dynamic-shape graph, which is slower and
    would be built on the first live batch of a second size. No CUDA graphs
    (``mode="reduce-overhead"``): their outputs are overwritten by the next replay, and a
    split retry runs several forwards before the outputs are encoded. Inductor's cache goes
    to ``TORCHINDUCTOR_CACHE_DIR`` (a volume in compose/k8s) so restarts reuse kernels.
    """
    if fold and device.type == "cpu":
        module, folded = fold_batchnorm(module)
        if folded:
            logger.info("folded %d BatchNorm layers into their convolutions", folded)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    # Not for TorchScript: autocast does not reach inside a scripted graph, so half weights
    # would meet float32 inputs there.
    scripted = isinstance(module, torch.jit.ScriptModule)
    if half is not None and device.type == "cuda" and not scripted:
        module = half_weights(module, torch.bfloat16 if half == "bfloat16" else torch.float16)
    if compile:
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        module = torch.compile(module, dynamic=False)  # type: ignore[assignment]
    return module
