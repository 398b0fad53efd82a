"""The GenEval commands: generate + judge + summarise, and judge-only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluators.geneval.detectors import load_detector
from evaluators.geneval.evaluate import Thresholds, evaluate_folder, thresholds_record
from evaluators.geneval.generate import generate_suite
from evaluators.geneval.summary import summarize, write_results
from evaluators.suites import load_suite
from unirl.atomic import atomic_dir, atomic_write_text
from unirl.errors import UnirlError


def run_geneval(model: str, prompts: str, detector: str, out: str | Path, samples: int = 4,
                guidance: float | None = None,
                temperature: float = 1.0, seed: int = 0, clip: str = "ViT-L-14", device: str | None = None,
                dtype: str | None = None, overwrite: bool = False, thresholds: Thresholds | None = None
                ) -> dict[str, Any]:
    """OUT/images (GenEval layout), OUT/results.jsonl, OUT/summary.json (with the full recipe)."""
    from unirl.models import load_model

    out = Path(out)
    suite = load_suite(prompts)  # every input is checked before anything is written
    unjudgeable = [n for n, spec in enumerate(suite.specs, 1) if not spec.get("include")]
    if unjudgeable:
        raise UnirlError(f"--prompts {prompts}: prompt {unjudgeable[0]} has no include clauses; GenEval judges "
                         f"GenEval-style metadata (tag, include, prompt), not free text")
    judge = load_detector(detector, device=device, clip=clip)
    unified = load_model(model, device=device, dtype=dtype)
    guidance = unified.default_guidance if guidance is None else guidance
    with atomic_dir(out, overwrite=overwrite) as tmp:
        generate_suite(unified, suite.specs, tmp / "images", samples=samples, guidance=guidance,
                       temperature=temperature, seed=seed, recipe={"prompts_file": suite.name,
                                                                   "prompts_sha256": suite.sha256})
        rows, skipped = evaluate_folder(tmp / "images", judge, thresholds)
        for row in rows:  # name the files where they will be, not in the temporary folder
            row["filename"] = str(out / Path(row["filename"]).relative_to(tmp))
        write_results(rows, tmp / "results.jsonl")
        summary = summarize(rows) | {"skipped": skipped, "recipe": {
            "model": unified.spec, "prompts": suite.name, "prompts_sha256": suite.sha256, "samples": samples,
            "guidance": guidance, "temperature": temperature, "seed": seed, **judge.describe(),
            "thresholds": thresholds_record(thresholds)}}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def judge_images(images: str | Path, detector: str, out: str | Path, clip: str = "ViT-L-14",
                 device: str | None = None, thresholds: Thresholds | None = None) -> dict[str, Any]:
    """Judge a GenEval-layout folder; write OUT (results.jsonl) and summary.json beside it."""
    out = Path(out)
    if out.suffix != ".jsonl":
        raise UnirlError(f"--out {out}: expected a results file name ending in .jsonl")
    judge = load_detector(detector, device=device, clip=clip)
    rows, skipped = evaluate_folder(images, judge, thresholds)
    if not rows:
        raise UnirlError(f"{images}: no image could be read ({len(skipped)} skipped)")
    write_results(rows, out)
    summary = summarize(rows) | {"skipped": skipped, "recipe": {
        "images": str(images), **judge.describe(), "thresholds": thresholds_record(thresholds)}}
    atomic_write_text(out.with_name("summary.json"), json.dumps(summary, indent=1) + "\n")
    return summary
