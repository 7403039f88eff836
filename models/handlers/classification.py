"""Classification: softmax scores, top-k per request (the behaviour visionq always had).

Preprocessing is torchvision's ``ImageClassification`` (resize, center crop; normalisation
on the device, in the batch). With ``VISIONQ_GPU_DECODE`` on CUDA, JPEGs are decoded by
nvJPEG instead (see services/gpu_worker/gpu_decode.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from models.handlers.base import Handler
from models.handlers.params import ClassificationParams
from models.handlers.tensors import Normalizer, channels_last_for, prepare_module
from models.preprocess import decode_and_preprocess
from models.specs import ModelSpec

logger = logging.getLogger(__name__)


class ClassificationHandler(Handler):
    """uint8 (3, S, S) per image -> softmax over the classes -> ``{"top_k": [...]}``."""

    task = "classification"
    Params = ClassificationParams

    def setup(self, device: torch.device, spec: ModelSpec) -> None:
        """Load the classifier; choose the CPU or nvJPEG decode path."""
        loaded = self.load_model(spec, device)
        self.spec = spec
        self.device = device
        layout = channels_last_for(spec, self.options.channels_last)
        self.normalize = Normalizer(spec.preprocess, device, layout)
        self.module = prepare_module(
            self.adapt(loaded.module),
            device,
            channels_last=layout,
            compile=self.options.compile,
            fold=self.options.fold_batchnorm,
            half=self.options.weights_dtype,
        )
        self._decode: Callable[[bytes], Any] = self._decode_cpu
        self._stack: Callable[[list[Any]], Any] = np.stack
        if self.options.gpu_decode:
            if device.type == "cuda":
                from functools import partial

                from services.gpu_worker.gpu_decode import make_gpu_decoder, stack_batch

                self._decode = make_gpu_decoder(
                    spec.preprocess,
                    self.options.max_image_pixels,
                    device,
                    background=self.options.background,
                    formats=self.options.accepted_formats,
                )
                self._stack = partial(stack_batch, device=device)
            else:
                logger.warning("VISIONQ_GPU_DECODE needs CUDA; decoding on the CPU")

    def adapt(self, module: torch.nn.Module) -> torch.nn.Module:
        """Change the loaded module before it is prepared (subclasses: remove the head)."""
        return module

    def _decode_cpu(self, data: bytes) -> np.ndarray:
        return decode_and_preprocess(
            data,
            self.spec.preprocess,
            max_pixels=self.options.max_image_pixels,
            background=self.options.background,
            formats=self.options.accepted_formats,
            fast_decode=self.options.fast_decode,
        )

    def decode(self, data: bytes, params: Any) -> Any:
        """uint8 (3, S, S) numpy; with GPU decode, a JPEG waits to be decoded with its batch."""
        return self._decode(data)

    def collate(self, items: list[Any]) -> Any:
        """uint8 (N, 3, S, S); normalised on the device in ``predict``."""
        return self._stack(items)

    def predict(self, batch: Any) -> torch.Tensor:
        """Softmax probabilities (N, classes), float32, on the CPU."""
        logits = self.module(self.normalize(batch))
        return torch.softmax(logits.float(), dim=1).cpu()

    def split(self, output: torch.Tensor) -> list[torch.Tensor]:
        """One probability row per image."""
        return list(output.unbind(0))

    def encode(self, item_output: torch.Tensor, params: ClassificationParams) -> dict[str, Any]:
        """``{"top_k": [{"label", "index", "score"}, ...]}``, best first."""
        k = min(params.top_k, item_output.shape[0])
        scores, indices = item_output.topk(k)
        return {
            "top_k": [
                {"label": self.label(i), "index": i, "score": s}
                for i, s in zip(indices.tolist(), scores.tolist(), strict=True)
            ]
        }
