"""`make demo`: UniRL on the shipped toy model, judged before and after on held-out prompts.

1. before: GenEval on shapes:heldout (16 samples per prompt, the exact shapes detector) and
   understanding accuracy on held-out scenes;
2. train configs/unirl/toy_grpo.yaml (the model rewards itself with its own open answers about
   each prompt's spec; held-out prompts are never trained on);
3. after: the same two evaluations of RUN/checkpoints/final, a before/after table with the
   change's sampling standard error, and OUT/report.html (`unirl report OUT`).

16 samples, not GenEval's 4: on the toy's 94 held-out prompts, 4 samples leave a standard error
of about 0.02 on each overall score (0.027 on a change), as large as the effects measured.

Re-running continues an interrupted run and reuses finished evaluations. Without the shipped toy
model (assets/toy-janus) it runs the same steps on the random-init janus-tiny, a smoke test only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from unirl.models import TOY_MODEL_DIR

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "unirl" / "toy_grpo.yaml"


def evaluate(model_spec: str, out: Path, seed: int, samples: int) -> dict[str, Any]:
    """GenEval (held-out prompts, exact detector) and understanding (held-out scenes) of a model."""
    from evaluators.geneval.run import run_geneval
    from evaluators.understanding import run_understanding
    from unirl.models import load_model

    if not (out / "geneval" / "summary.json").is_file():
        run_geneval(model=model_spec, prompts="shapes:heldout", detector="shapes", out=out / "geneval", samples=samples,
                    seed=seed, overwrite=True)
    if not (out / "understanding" / "summary.json").is_file():
        run_understanding(load_model(model_spec), out / "understanding", split="heldout", overwrite=True)
    geneval = json.loads((out / "geneval" / "summary.json").read_text())
    understanding = json.loads((out / "understanding" / "summary.json").read_text())
    return {"geneval": geneval["overall"], "geneval_stderr": geneval["overall_stderr"],
            "geneval_tags": geneval["per_tag"], "understanding": understanding["accuracy"]}


def weights_sha256(model_spec: str) -> str | None:
    from unirl.specs import file_sha256

    weights = TOY_MODEL_DIR / "model.safetensors"
    return file_sha256(weights) if model_spec == "toy" and weights.is_file() else None


def start_fresh_unless_same(out: Path, key: dict[str, Any]) -> None:
    """A demo resumes its finished parts only when they were made from the same experiment;
    otherwise they are removed (they would be another experiment's numbers). The "before"
    evaluation depends on the model weights, seed and samples alone, so another config keeps it."""
    import shutil

    key_file = out / "demo-key.json"
    old = json.loads(key_file.read_text()) if key_file.is_file() else None
    key = json.loads(json.dumps(key))
    if old == key:
        return
    before_key = ("model", "weights_sha256", "seed", "samples")
    same_model = old is not None and all(old.get(k) == key.get(k) for k in before_key)
    for part in ("after", "run", "demo.json") if same_model else ("before", "after", "run", "demo.json"):
        path = out / part
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(key, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    from unirl.config import apply_overrides, from_dict, read_yaml
    from unirl.engine.run import prepare_run_dir
    from unirl.recipes import get_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--samples", type=int, default=16, help="GenEval images per held-out prompt")
    parser.add_argument("--config", default=str(CONFIG),
                        help="a recipe config that generates images: unirl or ospo (default: unirl/toy_grpo.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for `unirl train`")
    args = parser.parse_args(argv)
    out = Path(args.out)
    model_spec = "toy" if TOY_MODEL_DIR.is_dir() else "janus-tiny"
    print(f"model: {model_spec}" + ("" if model_spec == "toy" else " (the toy model is not shipped: a smoke test)"))

    data = apply_overrides(read_yaml(args.config) | {"model": model_spec, "seed": args.seed}, args.overrides)
    if args.max_steps is not None:
        data["max_steps"] = args.max_steps
    recipe = get_recipe(str(data.get("recipe", "")), source=args.config)
    config = from_dict(recipe.Config, data, source=args.config)
    start_fresh_unless_same(out, {"model": model_spec, "weights_sha256": weights_sha256(model_spec),
                                  "config": data, "seed": args.seed, "samples": args.samples})
    before = evaluate(model_spec, out / "before", args.seed, args.samples)
    run = out / "run"
    final = run / "checkpoints" / "final"
    if not final.is_dir():
        recipe.train(config, run, prepare_run_dir(run, config, resume=False))
    after = evaluate(str(final), out / "after", args.seed, args.samples)

    rows = [("GenEval overall (held-out)", "geneval")] + \
        [(f"  {tag}", tag) for tag in before["geneval_tags"]] + [("understanding (held-out)", "understanding")]
    print(f"\n{'':<28}{'before':>8}{'after':>8}{'change':>8}")
    for label, key in rows:
        b = before.get(key, before["geneval_tags"].get(key))
        a = after.get(key, after["geneval_tags"].get(key))
        print(f"{label:<28}{b:>8.3f}{a:>8.3f}{a - b:>+8.3f}")
    change_stderr = (before["geneval_stderr"] ** 2 + after["geneval_stderr"] ** 2) ** 0.5
    print(f"GenEval change {after['geneval'] - before['geneval']:+.3f} ± {change_stderr:.3f} "
          f"(sampling standard error, {args.samples} images per prompt)")
    (out / "demo.json").write_text(json.dumps({"model": model_spec, "config": args.config,
                                               "overrides": args.overrides, "seed": args.seed,
                                               "samples": args.samples, "steps": config.max_steps,
                                               "before": before, "after": after},
                                              indent=1) + "\n")
    from unirl.viz import write_report

    print(f"\nrun in {run}; before/after in {out / 'demo.json'}; report: {write_report(out)}")


if __name__ == "__main__":
    main()
