"""Torch helpers the built-in handlers share: device-side normalisation, uint8 -> float."""

from __future__ import annotations

import logging

import numpy as np
import torch

from models.specs import Preprocess

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


def fold_batchnorm(module: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """``module`` with each eval-mode BatchNorm that follows a convolution folded into that
    convolution's weight and bias, and how many were folded.

    The fold is ``torch.fx.experimental.optimization.fuse`` (torch's own pass, built on
    ``torch.nn.utils.fusion.fuse_conv_bn_eval``): y = gamma * (conv(x) - mean) / sqrt(var +
    eps) + beta is one convolution with rescaled weights, so a batch skips one full pass
    over every activation. Exact up to float rounding (within 1e-5 relative here). It needs
    a module that ``torch.fx.symbolic_trace`` can follow (torchvision's classifiers and
    segmenters can; detectors, with data-dependent control flow, and TorchScript cannot):
    any other comes back as it was, with 0. The module is changed in place when folded.
    """
    if isinstance(module, torch.jit.ScriptModule) or module.training:
        return module, 0
    norms = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    if not norms:
        return module, 0
    from torch.fx.experimental.optimization import fuse

    try:
        # Traced before anything changes: a module fx can't follow is left untouched.
        folded = fuse(module, inplace=True)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError... by model
        logger.info("BatchNorm not folded (%s: %s)", type(exc).__name__, str(exc)[:200])
        return module, 0
    left = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    return folded, norms - left


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
