"""The model judges its own images with its understanding head (UniRL, OSPO).

Each judge is a plain batched callable, TRL style:

    judge = SelfVQAReward(model)                 # yes/no questions derived from each spec
    rewards, info = judge(images, specs)         # [N] float, and per-image details

All questions of all images go through the model in a few large batches, never one image at a
time.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from unirl.models import UnifiedModel
from unirl.specs import Spec, normalize_answer, open_questions, yes_no_questions


def flatten_per_image(per_image: list[list[Any]]) -> tuple[list[int], list[Any]]:
    """Items listed per image → (owning image of each item, the items), for one batched call."""
    owner = [i for i, items in enumerate(per_image) for _ in items]
    return owner, [item for items in per_image for item in items]


def mean_per_image(owner: torch.Tensor, scores: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of each image's question scores ([n]; 0 for an image asked nothing)."""
    totals = torch.zeros(n).index_add_(0, owner, scores.float())
    counts = torch.zeros(n).index_add_(0, owner, torch.ones(len(owner)))
    return totals / counts.clamp(min=1)


class SelfVQAReward:
    """Mean over the spec's yes/no questions ("Is there a red circle?", "Are there exactly three
    stars?", "Is the square left of the heart?") of p_yes − p_no ("margin", in [-1, 1]) or of the
    0/1 verdict p_yes > p_no ("verdict"). An image whose spec has no questions scores 0."""

    def __init__(self, model: UnifiedModel, mode: Literal["margin", "verdict"] = "margin", batch_size: int = 32):
        """`batch_size`: images per forward pass, each with all its questions."""
        if mode not in ("margin", "verdict"):
            raise ValueError(f"mode: expected 'margin' or 'verdict', got {mode!r}")
        self.model, self.mode, self.batch_size = model, mode, batch_size
        self.__name__ = "self_vqa"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, specs: list[Spec]) -> tuple[torch.Tensor, dict[str, Any]]:
        owner, questions = flatten_per_image([yes_no_questions(s) for s in specs])
        owner_t = torch.tensor(owner, dtype=torch.long)
        margins = torch.zeros(len(questions))
        for start in range(0, len(specs), self.batch_size):
            asked = ((owner_t >= start) & (owner_t < start + self.batch_size)).nonzero().squeeze(1)
            if len(asked) == 0:
                continue
            p_yes, p_no = self.model.yes_no_about(images[start:start + self.batch_size], owner_t[asked] - start,
                                                  [questions[k] for k in asked.tolist()])
            margins[asked] = (p_yes - p_no).float().cpu()
        scores = margins if self.mode == "margin" else (margins > 0).float()
        rewards = mean_per_image(owner_t, scores, len(specs))
        per_image = [[] for _ in specs]
        for i, q, m in zip(owner, questions, margins.tolist()):
            per_image[i].append({"question": q, "margin": round(m, 4)})
        return rewards.to(images.device), {"questions": per_image}


class SelfQAReward:
    """UniRL's own form: open questions per tag (what, how many, which colour of each object,
    where), the model's greedy answers against the spec's by normalised exact match; the reward
    is the fraction answered as the spec says (0/1 for one question). An image whose spec has no
    question scores 0. `counts`: also ask how many of every object the spec names. Each question's
    "margin" in info is +1 (answered as the spec says) or -1, on self-VQA's p_yes - p_no scale."""

    def __init__(self, model: UnifiedModel, thing: str = "object", counts: bool = False, batch_size: int = 64,
                 max_new_tokens: int = 8):
        self.model, self.thing, self.counts = model, thing, counts
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.__name__ = "self_qa"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, specs: list[Spec]) -> tuple[torch.Tensor, dict[str, Any]]:
        owner, pairs = flatten_per_image([open_questions(s, self.thing, self.counts) for s in specs])
        replies: list[str] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            replies += self.model.answer(images[owner[chunk]], [q for q, _ in pairs[chunk]],
                                         max_new_tokens=self.max_new_tokens)
        right = [normalize_answer(r) == normalize_answer(a) for r, (_, a) in zip(replies, pairs)]
        rewards = mean_per_image(torch.tensor(owner, dtype=torch.long), torch.tensor(right, dtype=torch.float),
                                 len(specs))
        per_image: list[list[dict[str, Any]]] = [[] for _ in specs]
        for i, (q, expected), reply, ok in zip(owner, pairs, replies, right):  # margin: ±1, self-VQA's scale
            per_image[i].append({"question": q, "answer": reply, "expected": expected, "margin": 1.0 if ok else -1.0})
        return rewards.to(images.device), {"questions": per_image}


def spread(items: list[Any], positions: list[int], n: int) -> list[Any]:
    """Per-image details of the judged subset, put back at their images' positions (None elsewhere)."""
    full: list[Any] = [None] * n
    for position, item in zip(positions, items):
        full[position] = item
    return full


class WeightedSum:
    """Judges combined by weight: reward = Σ w_k · judge_k(images, specs). `tag_weights` gives a
    tag its own weights ({"counting": {"self_vqa": 1.0}}: for counting prompts self-VQA alone; a
    judge not named there weighs 0), for tags where one judge is trusted and another is not. A
    judge runs only on the images it weighs. info keeps each judge's rewards under its name (NaN
    for images it did not judge), so every judge's mean and std can be logged."""

    def __init__(self, judges: dict[str, tuple[Any, float]], tag_weights: dict[str, dict[str, float]] | None = None):
        if not judges:
            raise ValueError("WeightedSum: expected at least one judge")
        for tag, weights in (tag_weights or {}).items():
            if unknown := set(weights) - set(judges):
                raise ValueError(f"tag_weights[{tag!r}]: judges {sorted(unknown)} are not among {sorted(judges)}")
        self.judges, self.tag_weights = judges, tag_weights or {}
        self.__name__ = "+".join(judges)

    def weight(self, name: str, spec: Spec) -> float:
        tag = spec.get("tag")
        return self.tag_weights[tag].get(name, 0.0) if tag in self.tag_weights else self.judges[name][1]

    def __call__(self, images: torch.Tensor, specs: list[Spec]) -> tuple[torch.Tensor, dict[str, Any]]:
        total = torch.zeros(len(specs), device=images.device)
        info: dict[str, Any] = {"per_judge": {}}
        for name, (judge, _) in self.judges.items():
            weights = torch.tensor([self.weight(name, s) for s in specs], device=images.device)
            judged = weights.nonzero().squeeze(1)
            values = torch.full((len(specs),), float("nan"))
            if len(judged):
                rewards, details = judge(images[judged], [specs[i] for i in judged.tolist()])
                values[judged.cpu()] = rewards.float().cpu()
                info[name] = {key: spread(items, judged.tolist(), len(specs)) for key, items in details.items()}
                total[judged] += weights[judged] * rewards.to(total.device).float()
            info["per_judge"][name] = values
        return total, info
