"""Detectors for the GenEval evaluator, by name.

  mask2former            GenEval's own: Mask2Former (COCO instances) + CLIP ViT-L-14 colours
  mask2former:PATH       the same from a local transformers folder
  mask2former-tiny       random-init Mask2Former + CLIP, for tests (verdicts are meaningless)
  shapes                 the exact detector of the shapes world
"""

from __future__ import annotations

import torch

from evaluators.geneval.detectors.base import ColorRequest, Detections, Detector
from unirl.errors import UnirlError

__all__ = ["ColorRequest", "Detections", "Detector", "load_detector", "DETECTORS"]

DETECTORS = ("mask2former", "mask2former:PATH", "mask2former-tiny", "shapes")


def load_detector(spec: str, device: str | torch.device | None = None, clip: str = "ViT-L-14") -> Detector:
    if spec == "mask2former" or spec.startswith("mask2former:") or spec == "mask2former-tiny":
        from evaluators.geneval.detectors.mask2former import Mask2FormerDetector

        return Mask2FormerDetector(spec, device=device, clip=clip)
    if spec == "shapes":
        from evaluators.geneval.detectors.shapes import ShapesDetector

        return ShapesDetector(device=device)
    raise UnirlError(f"--detector {spec}: expected one of {', '.join(DETECTORS)}")
