"""Jigsaw benchmark: greedy answers to held-out puzzles of one modality, scored by
`jigsaw_reward`'s rules: exact accuracy, mean partial score (the fraction of positions right for a
valid permutation, 1 for the exact one, 0 for an invalid answer) and the share of answers that are
valid permutations, beside the chance level."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from modalities.jigsaw import JigsawTask, make_puzzles
from unirl.atomic import atomic_dir
from unirl.models import UnifiedModel
from unirl.progress import progress
from unirl.rewards.jigsaw import jigsaw_reward, parse_order

HELDOUT_SEED = 10**9  # puzzles from seeds training never draws (training uses seed·1,000,003 + step)


@torch.no_grad()
def evaluate_jigsaw(model: UnifiedModel, task: JigsawTask, data: str = "toy", puzzles: int = 100, seed: int = 0,
                    batch_size: int = 16, max_new_tokens: int = 32) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, one row per puzzle)."""
    rows = []
    for start in progress(range(0, puzzles, batch_size), desc=f"jigsaw {task.modality}"):
        n = min(batch_size, puzzles - start)
        batch = make_puzzles(task, data, n, seed=HELDOUT_SEED + seed * 1_000_003 + start, split="heldout",
                             device=model.device)
        texts = model.answer(batch.images, batch.questions, max_new_tokens=max_new_tokens)
        for text, truth in zip(texts, batch.answers.tolist()):
            order = parse_order(text)
            rows.append({"answer": text, "truth": truth, "exact": order == truth,
                         "partial": jigsaw_reward(text, truth, partial_weight=1.0),
                         "format_valid": order is not None and sorted(order) == list(range(1, len(truth) + 1))})
    summary = {
        "exact_accuracy": sum(r["exact"] for r in rows) / len(rows),
        "partial_score": sum(r["partial"] for r in rows) / len(rows),
        "format_valid": sum(r["format_valid"] for r in rows) / len(rows),
        "chance_exact_accuracy": task.chance_exact,
        "puzzles": len(rows),
        "recipe": {"model": model.spec, "modality": task.modality, "data": data, "task": vars(task).copy(),
                   "seed": seed, "decoding": "greedy", "max_new_tokens": max_new_tokens,
                   "split": "heldout" if data == "toy" else data},
    }
    return summary, rows


def run_jigsaw_eval(model: UnifiedModel, task: JigsawTask, out: str | Path, data: str = "toy", puzzles: int = 100,
                    seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    with atomic_dir(out, overwrite=overwrite) as tmp:
        summary, rows = evaluate_jigsaw(model, task, data, puzzles, seed)
        (Path(tmp) / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (Path(tmp) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
