"""Generate a prompt suite's images into GenEval's folder layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluators.geneval.layout import write_prompt_folder
from unirl.atomic import atomic_dir
from unirl.models import UnifiedModel
from unirl.progress import progress
from unirl.specs import Spec


def generate_suite(model: UnifiedModel, specs: list[Spec], out: str | Path, samples: int = 4,
                   guidance: float | None = None,
                   temperature: float = 1.0, seed: int = 0, batch_prompts: int = 8, overwrite: bool = False,
                   recipe: dict[str, Any] | None = None) -> Path:
    """Write out/<index:05d>/{metadata.jsonl, samples/*.png} for every spec, and out/generation.json
    (the sampling recipe). The folder appears only when complete.

    Batch b (prompts b*batch_prompts ...) is sampled with seed + b, so the images depend on
    (seed, batch_prompts), both recorded."""
    out = Path(out)
    guidance = model.default_guidance if guidance is None else guidance
    recipe = dict(recipe or {}, model=model.spec, samples=samples, guidance=guidance, temperature=temperature,
                  seed=seed, batch_prompts=batch_prompts, prompts=len(specs))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        bar = progress(total=len(specs), desc="generate", unit="prompt")
        for b, start in enumerate(range(0, len(specs), batch_prompts)):
            chunk = specs[start:start + batch_prompts]
            rollout = model.generate_images([s["prompt"] for s in chunk], num_per_prompt=samples, guidance=guidance,
                                            temperature=temperature, seed=seed + b)
            for i, spec in enumerate(chunk):
                write_prompt_folder(tmp, start + i, spec, rollout.images[i * samples:(i + 1) * samples])
            bar.update(len(chunk))
        bar.close()
        (tmp / "generation.json").write_text(json.dumps(recipe, indent=1) + "\n")
    return out
