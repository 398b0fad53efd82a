"""`--detector shapes`: the exact detector of the shapes world (modalities/image/shapes_detect.py)
behind the GenEval detector interface. Colours are read off the segmentation, not guessed."""

from __future__ import annotations

import numpy as np
import torch

from evaluators.geneval.detectors.base import ColorRequest, Detections, Detector
from modalities.image.shapes import SHAPES
from modalities.image.shapes_detect import COLOR_NAMES, detect_components


class ShapesDetector(Detector):
    name = "shapes"

    def __init__(self, device: str | torch.device | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def describe(self) -> dict:
        return {"detector": self.name, "colors": "segmentation (exact palette)"}

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[Detections]:
        found = detect_components(images.to(self.device))
        rows = torch.cat([found.box, found.score[:, None]], dim=1).cpu().numpy()
        image, shape, color = (t.cpu().numpy() for t in (found.image, found.shape, found.color))
        results = []
        for i in range(images.shape[0]):  # regroup by image and class: host bookkeeping only
            boxes, colors = {}, {}
            for s in np.unique(shape[image == i]):
                idx = np.nonzero((image == i) & (shape == s))[0]
                boxes[SHAPES[s]] = rows[idx]
                colors[SHAPES[s]] = [COLOR_NAMES[c] for c in color[idx]]
            results.append(Detections(boxes=boxes, extra={"colors": colors}))
        return results

    def colors(self, images: torch.Tensor, detections: list[Detections], requests: list[ColorRequest]) -> list[str]:
        return [detections[i].extra["colors"][name][row] for i, name, row in requests]
