"""How far can a self-judge be trusted? Its agreement with an exact evaluator, per tag.

A self-improvement run learns whatever its judge rewards. This benchmark draws the model's own
images for a prompt suite, marks each right or wrong with GenEval's judge (the exact shapes
detector on the toy world), scores the same images with each self-judge, and reports per tag the
judge's AUC: the chance that a right image scores above a wrong one of the same tag (0.5: the
judge carries no signal there; below 0.5: training on it teaches the wrong thing). Measure it on
the training prompts to choose which judge rewards which tag (`reward_tag_weights`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unirl.atomic import atomic_dir
from unirl.models import UnifiedModel
from unirl.progress import progress
from unirl.specs import Spec, by_tag


def auc(scores: list[float], correct: list[bool]) -> float | None:
    """P(score of a right image > score of a wrong one), ties counting half; None without both kinds."""
    s, c = np.asarray(scores, dtype=float), np.asarray(correct, dtype=bool)
    right, wrong = s[c], s[~c]
    if len(right) == 0 or len(wrong) == 0:
        return None
    above = (right[:, None] > wrong[None, :]).mean()
    tied = (right[:, None] == wrong[None, :]).mean()
    return float(above + 0.5 * tied)


def draw_per_tag(specs: list[Spec], per_tag: int, seed: int) -> list[Spec]:
    """Up to `per_tag` distinct prompts of each tag, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    drawn = []
    for group in by_tag(specs):
        drawn += [group[i] for i in sorted(rng.permutation(len(group))[:per_tag])]
    return drawn


@torch.no_grad()
def evaluate_judges(model: UnifiedModel, specs: list[Spec], judges: dict[str, Any], truth: Any,
                    samples: int = 4, guidance: float | None = None, seed: int = 0,
                    batch_prompts: int = 8) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate `samples` images per spec, judge them with `truth` (1 = right) and with each of
    `judges` (name → batched callable). Returns (summary, one record per image)."""
    guidance = model.default_guidance if guidance is None else guidance
    records: list[dict[str, Any]] = []
    for start in progress(range(0, len(specs), batch_prompts), desc="judges"):
        chunk = specs[start:start + batch_prompts]
        rollout = model.generate_images([s["prompt"] for s in chunk], num_per_prompt=samples,
                                        guidance=guidance, seed=seed * 1_000_003 + start)
        per_image = [s for s in chunk for _ in range(samples)]
        right, _ = truth(rollout.images, per_image)
        scores = {name: judge(rollout.images, per_image)[0].float().cpu().tolist() for name, judge in judges.items()}
        for i, spec in enumerate(per_image):
            records.append({"prompt": spec["prompt"], "tag": spec.get("tag", ""), "correct": bool(right[i] > 0.5),
                            **{name: round(values[i], 4) for name, values in scores.items()}})
    tags = sorted({r["tag"] for r in records})
    per_tag = {}
    for tag in tags + ["all"]:
        rows = [r for r in records if tag in ("all", r["tag"])]
        correct = [r["correct"] for r in rows]
        per_tag[tag] = {"images": len(rows), "correct_fraction": round(float(np.mean(correct)), 4),
                        **{f"auc/{name}": auc([r[name] for r in rows], correct) for name in judges}}
    return {"per_tag": per_tag,
            "recipe": {"model": model.spec, "samples": samples, "guidance": guidance, "seed": seed,
                       "truth": getattr(truth, "__name__", type(truth).__name__), "judges": list(judges)}}, records


def run_judge_agreement(model: UnifiedModel, prompts: str, out: str | Path, per_tag: int = 16, samples: int = 4,
                        guidance: float | None = None, seed: int = 0, detector: str = "shapes",
                        self_qa_thing: str = "shape", overwrite: bool = False) -> dict[str, Any]:
    """`unirl eval judges`: DIR/summary.json (per tag: right fraction, each judge's AUC) and
    DIR/images.jsonl (each image's verdict and scores)."""
    from evaluators.geneval.detectors import load_detector
    from evaluators.geneval.reward import GenEvalReward
    from evaluators.suites import load_suite
    from unirl.rewards.self_judges import SelfQAReward, SelfVQAReward

    suite = load_suite(prompts)
    specs = draw_per_tag(suite.specs, per_tag, seed)
    judges = {"self_vqa": SelfVQAReward(model, mode="margin"), "self_qa": SelfQAReward(model, thing=self_qa_thing)}
    truth = GenEvalReward(load_detector(detector, device=model.device))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        summary, records = evaluate_judges(model, specs, judges, truth, samples=samples, guidance=guidance, seed=seed)
        summary["recipe"] |= {"prompts": suite.name, "prompts_sha256": suite.sha256, "per_tag": per_tag,
                              "detector": detector}
        (Path(tmp) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        (Path(tmp) / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return summary
