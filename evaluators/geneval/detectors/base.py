"""The detector interface the GenEval evaluator calls. A detector is anything that, for a batch
of images, gives per image {class: (N,5) boxes x1,y1,x2,y2,score} and can name the colour of
chosen detections. Register a new one in `detectors.load_detector`."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# One colour request: (image index in the batch, class name, row index in that class's boxes).
ColorRequest = tuple[int, str, int]


@dataclass
class Detections:
    """One image's detections. `boxes[c]` is (N,5) in pixels of the image as given; `extra`
    holds what the detector needs later to name colours (masks, known colours, ...)."""

    boxes: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)


class Detector(abc.ABC):
    name: str

    @abc.abstractmethod
    def detect(self, images: torch.Tensor) -> list[Detections]:
        """images: float [N,3,H,W] in [0,1]. Batched on the detector's device."""

    @abc.abstractmethod
    def colors(self, images: torch.Tensor, detections: list[Detections], requests: list[ColorRequest]) -> list[str]:
        """The colour name of each requested detection, all requests in one batch."""

    def describe(self) -> dict[str, Any]:
        """What to record with results: detector, weights, colour classifier."""
        return {"detector": self.name}
