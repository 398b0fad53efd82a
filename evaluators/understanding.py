"""Understanding benchmark on the shapes world: questions about rendered scenes of a split,
answered greedily, scored by normalised exact match, per question type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modalities.image.shapes import QUESTION_TYPES, render, sample_scenes, scene_questions, split_specs
from unirl.atomic import atomic_dir
from unirl.models import UnifiedModel
from unirl.progress import progress
from unirl.specs import normalize_answer


def understanding_items(split: str, scenes: int, seed: int) -> tuple[torch.Tensor, list[int], list[tuple]]:
    """Rendered scenes and every question about each: (images, scene index per question, (type, q, a))."""
    rendered = sample_scenes(split_specs(split), scenes, seed=seed)
    rng = np.random.default_rng(seed)
    owner, qa = [], []
    for i, scene in enumerate(rendered):
        for item in scene_questions(scene, rng):
            owner.append(i)
            qa.append(item)
    return render(rendered), owner, qa


@torch.no_grad()
def evaluate_understanding(model: UnifiedModel, split: str = "heldout", scenes: int = 300, seed: int = 0,
                           batch_size: int = 64) -> dict[str, Any]:
    images, owner, qa = understanding_items(split, scenes, seed)
    answers = []
    for start in progress(range(0, len(qa), batch_size), desc="understanding"):
        idx = owner[start:start + batch_size]
        answers += model.answer(images[idx], [q for _, q, _ in qa[start:start + batch_size]], max_new_tokens=8)
    correct = [normalize_answer(a) == normalize_answer(t) for a, (_, _, t) in zip(answers, qa)]
    per_type = {}
    for kind in QUESTION_TYPES:
        hits = [c for c, (k, _, _) in zip(correct, qa) if k == kind]
        if hits:
            per_type[kind] = sum(hits) / len(hits)
    return {"accuracy": sum(correct) / len(correct), "per_type": per_type, "questions": len(qa),
            "recipe": {"model": model.spec, "split": split, "scenes": scenes, "seed": seed, "decoding": "greedy",
                       "match": "normalised exact"},
            "examples": [{"question": q, "expected": t, "answer": a}
                         for a, (_, q, t) in list(zip(answers, qa))[:20]]}


def run_understanding(model: UnifiedModel, out: str | Path, split: str = "heldout", scenes: int = 300,
                      seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    with atomic_dir(out, overwrite=overwrite) as tmp:
        summary = evaluate_understanding(model, split, scenes, seed)
        (Path(tmp) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
