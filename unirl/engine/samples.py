"""samples/step-<n>/ of image-generation runs (UniRL, OSPO): the images, the prompts, the rewards
and what the model answered about each, and the tracked prompts' images (the same prompts and
seed at every sample step) that the report lays side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unirl.engine.policy import PolicyConfig, autocast
from unirl.models import UnifiedModel
from unirl.rewards.self_judges import WeightedSum
from unirl.specs import Spec, distinct_tag_balanced

TRACK_SEED = 999_999_937  # the tracked prompts' sampling seed; no training step's seed reaches it


def sample_rows(names: list[str], specs: list[Spec], rewards: torch.Tensor, info: dict[str, Any]
                ) -> list[dict[str, Any]]:
    """samples.jsonl rows: image file, prompt, reward, each judge's reward and the model's answers."""
    rows = []
    for i, (name, spec) in enumerate(zip(names, specs)):
        row = {"image": name, "prompt": spec["prompt"], "reward": round(float(rewards[i]), 4),
               # a judge weighted 0 for this image's tag did not judge it (NaN)
               "rewards": {k: round(float(v[i]), 4) for k, v in info["per_judge"].items() if not v[i].isnan()}}
        for judge in ("self_vqa", "self_qa"):  # per image: its questions and the model's answers
            if judge in info and info[judge]["questions"][i] is not None:
                row[judge] = info[judge]["questions"][i]
        rows.append(row)
    return rows


Judged = tuple[torch.Tensor, list[Spec], torch.Tensor, dict[str, Any]]  # images, specs, rewards, judge info


def write_samples(run_dir: Path, step: int, rollout: Judged | None, tracked: Judged | None = None) -> None:
    """samples/step-<n>/: the rollout's images (000.png …) and the tracked prompts' (tracked-000.png …,
    rows marked "tracked"), with samples.jsonl."""
    from modalities.image.io import save_images
    from unirl.atomic import atomic_dir

    with atomic_dir(run_dir / "samples" / f"step-{step}", overwrite=True) as tmp:
        rows = []
        for prefix, judged in (("", rollout), ("tracked-", tracked)):
            if judged is None:
                continue
            images, specs, rewards, info = judged
            names = [f"{prefix}{i:03d}.png" for i in range(len(specs))]
            save_images(images, [tmp / n for n in names])
            rows += [r | {"tracked": True} if prefix else r for r in sample_rows(names, specs, rewards, info)]
        (tmp / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def judge_tracked(model: UnifiedModel, judge: WeightedSum, specs: list[Spec], guidance: float,
                  config: PolicyConfig) -> Judged:
    """One image per tracked prompt, from the same seed at every sample step, judged: side by side
    across steps they show what training did to the same prompt and noise."""
    with torch.no_grad(), autocast(config, model):
        rollout = model.generate_images([s["prompt"] for s in specs], num_per_prompt=1, guidance=guidance,
                                        temperature=config.temperature, seed=config.seed * 1_000_003 + TRACK_SEED)
        rewards, info = judge(rollout.images, specs)
    return rollout.images, specs, rewards, info


def tracked_specs(specs: list[Spec], n: int, seed: int) -> list[Spec]:
    """The run's tracked prompts: n distinct specs, one of each tag before a second of any."""
    return distinct_tag_balanced(specs, n, np.random.default_rng([seed, TRACK_SEED]))
