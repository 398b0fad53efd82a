"""GenEval's judge as a training reward: a plain batched callable (TRL style).

    reward = GenEvalReward(load_detector("shapes"), partial=False)
    rewards, info = reward(images, specs)     # [N] float, and per-image reasons

strict: 1 when GenEval would mark the image correct, else 0. partial: the fraction of the
spec's include clauses met (0 when an exclude clause fails). info["questions"] gives each image
one entry in the self-judges' form, margin +1 (correct) or -1, so OSPO can pick pairs with it."""

from __future__ import annotations

from typing import Any

import torch

from evaluators.geneval.detectors import Detector
from evaluators.geneval.evaluate import Thresholds, judge_batch
from unirl.specs import Spec


class GenEvalReward:
    def __init__(self, detector: Detector, partial: bool = False, thresholds: Thresholds | None = None):
        self.detector, self.partial, self.thresholds = detector, partial, thresholds or Thresholds()
        self.__name__ = "geneval_partial" if partial else "geneval_strict"

    def __call__(self, images: torch.Tensor, specs: list[Spec]) -> tuple[torch.Tensor, dict[str, Any]]:
        verdicts = judge_batch(images, specs, self.detector, self.thresholds)
        values = [v.partial if self.partial else float(v.correct) for v in verdicts]
        info = {"correct": [v.correct for v in verdicts], "reason": [v.reason for v in verdicts],
                "questions": [[{"question": "GenEval's rules", "answer": v.reason or "correct",
                                "margin": 1.0 if v.correct else -1.0}] for v in verdicts]}
        return torch.tensor(values, dtype=torch.float32, device=images.device), info
