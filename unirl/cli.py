"""`unirl train | eval | generate | prompts | report | pretrain-toy`."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

from unirl.errors import UnirlError

GUIDANCE_HELP = "classifier-free guidance (1 = none); default: the model's own (generation_config), else 5"


def cmd_generate(args: argparse.Namespace) -> None:
    from evaluators.geneval.generate import generate_suite
    from evaluators.suites import load_suite
    from unirl.models import load_model

    suite = load_suite(args.prompts)  # validate inputs before loading anything heavy
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    out = generate_suite(model, suite.specs, args.out, samples=args.samples, guidance=args.guidance,
                         temperature=args.temperature, seed=args.seed, batch_prompts=args.batch_prompts,
                         overwrite=args.overwrite, recipe={"prompts_file": suite.name, "prompts_sha256": suite.sha256})
    print(f"wrote {len(suite.specs)} prompts x {args.samples} images to {out}")


def cmd_train(args: argparse.Namespace) -> None:
    from unirl.config import apply_overrides, from_dict, read_yaml
    from unirl.engine.distributed import init_processes
    from unirl.engine.run import prepare_run_dir
    from unirl.recipes import get_recipe

    data = apply_overrides(read_yaml(args.config), args.overrides)
    if args.max_steps is not None:
        data["max_steps"] = args.max_steps
    recipe = get_recipe(str(data.get("recipe", "")), source=args.config)
    config = from_dict(recipe.Config, data, source=args.config)
    out = Path(args.out)
    fresh = not out.exists()
    processes = init_processes(getattr(config, "device", None))  # one, unless under accelerate launch
    with processes.main_first():  # the main process creates the run directory; the others reopen it
        resume_from = prepare_run_dir(out, config, resume=args.resume)
    try:
        recipe.train(config, out, resume_from, processes=processes)
        processes.close()
    except BaseException:
        # A run that failed before its first step (a missing model, a bad prompt file) leaves nothing behind.
        if processes.is_main and fresh and not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def cmd_prompts(args: argparse.Namespace) -> None:
    import json

    from evaluators.suites import named_suite
    from unirl.atomic import atomic_write_text

    name = args.suite if args.suite == "geneval" else f"{args.suite}:{args.split}"
    specs = named_suite(name)
    atomic_write_text(args.out, "".join(json.dumps(s) + "\n" for s in specs))
    print(f"wrote {len(specs)} prompts ({name}) to {args.out}")


def cmd_eval_geneval(args: argparse.Namespace) -> None:
    from evaluators.geneval.run import run_geneval

    summary = run_geneval(model=args.model, prompts=args.prompts, detector=args.detector, out=args.out,
                          samples=args.samples, guidance=args.guidance, temperature=args.temperature, seed=args.seed,
                          clip=args.clip, device=args.device, dtype=args.dtype, overwrite=args.overwrite)
    print_summary(summary, args.json)


def cmd_eval_geneval_images(args: argparse.Namespace) -> None:
    from evaluators.geneval.run import judge_images

    summary = judge_images(args.images, detector=args.detector, out=args.out, clip=args.clip, device=args.device)
    print_summary(summary, args.json)


def cmd_eval_understanding(args: argparse.Namespace) -> None:
    import json

    from evaluators.understanding import run_understanding
    from unirl.models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    summary = run_understanding(model, args.out, split=args.split, scenes=args.scenes, seed=args.seed,
                                overwrite=args.overwrite)
    print(f"accuracy {summary['accuracy']:.3f} on {summary['questions']} questions; "
          + ", ".join(f"{k} {v:.3f}" for k, v in summary["per_type"].items()))
    if args.json:
        print(json.dumps({k: summary[k] for k in ("accuracy", "per_type", "recipe")}))


def cmd_eval_judges(args: argparse.Namespace) -> None:
    from evaluators.judge_agreement import run_judge_agreement
    from unirl.models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    summary = run_judge_agreement(model, args.prompts, args.out, per_tag=args.per_tag, samples=args.samples,
                                  guidance=args.guidance, seed=args.seed, detector=args.detector,
                                  overwrite=args.overwrite)
    print("tag            images  right  " + "  ".join(f"AUC {name}" for name in summary["recipe"]["judges"]))
    for tag, row in summary["per_tag"].items():
        aucs = "  ".join("     -     " if row[f"auc/{n}"] is None else f"{row[f'auc/{n}']:11.2f}"
                         for n in summary["recipe"]["judges"])
        print(f"{tag:14s} {row['images']:6d} {row['correct_fraction']:6.2f}  {aucs}")


def cmd_eval_jigsaw(args: argparse.Namespace) -> None:
    import json

    from evaluators.jigsaw import run_jigsaw_eval
    from modalities.jigsaw import JigsawTask
    from unirl.models import load_model

    if args.grid and not re.fullmatch(r"\d+x\d+", args.grid.lower()):
        raise UnirlError(f"--grid: expected ROWSxCOLS such as 3x3, got {args.grid!r}")
    grid = dict(zip(("rows", "cols"), (int(x) for x in args.grid.lower().split("x")))) if args.grid else {}
    task = JigsawTask(modality=args.modality, **grid, **({"clips": args.clips} if args.clips else {}),
                      **({"points": args.points} if args.points else {}))
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    summary = run_jigsaw_eval(model, task, args.out, data=args.data, puzzles=args.puzzles, seed=args.seed,
                              overwrite=args.overwrite)
    print(f"{args.modality} jigsaw ({task.pieces} pieces): exact {summary['exact_accuracy']:.3f} "
          f"(chance {summary['chance_exact_accuracy']:.3g}), partial {summary['partial_score']:.3f}, "
          f"valid format {summary['format_valid']:.3f} on {summary['puzzles']} puzzles")
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "recipe"}))


def cmd_report(args: argparse.Namespace) -> None:
    from unirl.viz import write_report

    print(write_report(args.run_dir))


def cmd_pretrain_toy(args: argparse.Namespace) -> None:
    from unirl.config import apply_overrides, from_dict, to_dict
    from unirl.recipes.pretrain_toy import PretrainToyConfig, pretrain_toy

    config = from_dict(PretrainToyConfig, apply_overrides(to_dict(PretrainToyConfig()), args.overrides),
                       source="pretrain-toy")
    out = pretrain_toy(args.out, config, overwrite=args.overwrite)
    print(f"toy model written to {out} (load it with load_model('{out}'))")


def cmd_export(args: argparse.Namespace) -> None:
    """A checkpoint as a plain model folder: weights in `--dtype`, no optimiser or RNG state, and
    export.json naming where it came from (the run's config.yaml, when there is one, beside it)."""
    import json

    import torch

    from unirl.atomic import atomic_dir
    from unirl.models import load_model
    from unirl.specs import file_sha256

    checkpoint = Path(args.checkpoint)
    model = load_model(str(checkpoint), device="cpu", dtype="float32")  # a folder that is no model: one line
    run_config = checkpoint.parent.parent / "config.yaml"
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        model.module.to(getattr(torch, args.dtype))
        model.save_pretrained(tmp)
        if run_config.is_file():
            shutil.copyfile(run_config, tmp / "train_config.yaml")
        (tmp / "export.json").write_text(json.dumps({
            "source": str(checkpoint), "dtype": args.dtype,
            "source_weights_sha256": file_sha256(checkpoint / "model.safetensors")
            if (checkpoint / "model.safetensors").is_file() else None}, indent=1) + "\n")
    print(f"model written to {args.out} (load it with load_model('{args.out}'))")


def cmd_eval_summary(args: argparse.Namespace) -> None:
    from evaluators.geneval.summary import read_results, summarize

    print_summary(summarize(read_results(args.results)), args.json)


def print_summary(summary: dict, as_json: bool) -> None:
    import json

    from evaluators.geneval.summary import format_summary

    print(format_summary(summary))
    if as_json:
        print(json.dumps(summary))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unirl", description="Self-improving post-training of unified models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train with a recipe config (unirl, ospo, jigsaw, sail)")
    p.add_argument("config", help="a YAML recipe config, e.g. configs/unirl/toy.yaml")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="benchmarks: GenEval, understanding, jigsaw")
    evals = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    e = evals.add_parser("geneval", help="generate in GenEval's layout, judge, summarise")
    e.add_argument("--model", required=True)
    e.add_argument("--prompts", default="geneval", help="geneval | shapes:heldout | a metadata jsonl")
    e.add_argument("--detector", default="mask2former", help="mask2former | mask2former:PATH | shapes")
    e.add_argument("--clip", default="ViT-L-14", help="colour classifier: ViT-L-14 or ViT-L-14:/path/weights")
    e.add_argument("--out", required=True)
    e.add_argument("--samples", type=int, default=4)
    e.add_argument("--guidance", type=float, default=None, help=GUIDANCE_HELP)
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default=None)
    e.add_argument("--dtype", default=None)
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    e.set_defaults(func=cmd_eval_geneval)
    e = evals.add_parser("geneval-images", help="judge a GenEval-layout folder of images any model made")
    e.add_argument("images", help="folder: NNNNN/metadata.jsonl, NNNNN/samples/NNNN.png")
    e.add_argument("--detector", default="mask2former")
    e.add_argument("--clip", default="ViT-L-14")
    e.add_argument("--out", required=True, help="results.jsonl to write (summary.json beside it)")
    e.add_argument("--device", default=None)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval_geneval_images)
    e = evals.add_parser("understanding", help="accuracy on questions about rendered shapes-world scenes")
    e.add_argument("--model", required=True)
    e.add_argument("--split", choices=["train", "heldout"], default="heldout")
    e.add_argument("--scenes", type=int, default=300)
    add_benchmark_options(e)
    e.set_defaults(func=cmd_eval_understanding)
    e = evals.add_parser("jigsaw", help="Visual Jigsaw ordering accuracy (image, video, 3d) on held-out puzzles")
    e.add_argument("--model", required=True)
    e.add_argument("--modality", choices=["image", "video", "3d"], default="image")
    e.add_argument("--data", default="toy", help="toy, or a folder of images / videos / color+depth pairs")
    e.add_argument("--grid", default=None, help="image grid ROWSxCOLS (default 3x3)")
    e.add_argument("--clips", type=int, default=None, help="video clips (default 6)")
    e.add_argument("--points", type=int, default=None, help="3d points (default 6)")
    e.add_argument("--puzzles", type=int, default=100)
    add_benchmark_options(e)
    e.set_defaults(func=cmd_eval_jigsaw)
    e = evals.add_parser("judges", help="each self-judge's agreement (AUC per tag) with GenEval's exact judge")
    e.add_argument("--model", required=True)
    e.add_argument("--prompts", default="shapes:train", help="a suite (shapes:train) or a metadata jsonl")
    e.add_argument("--detector", default="shapes")
    e.add_argument("--per-tag", type=int, default=16, help="prompts drawn per tag")
    e.add_argument("--samples", type=int, default=4, help="images per prompt")
    e.add_argument("--guidance", type=float, default=None, help=GUIDANCE_HELP)
    add_benchmark_options(e)
    e.set_defaults(func=cmd_eval_judges)
    e = evals.add_parser("summary", help="GenEval's summary numbers for a results.jsonl")
    e.add_argument("results")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval_summary)

    p = sub.add_parser("generate", help="generate images for a prompt suite in GenEval's folder layout")
    p.add_argument("--model", required=True, help="toy, janus-tiny, janus:PATH, showo:PATH or a checkpoint folder")
    p.add_argument("--prompts", required=True, help="a metadata jsonl, a text file (one prompt a line) or a suite")
    p.add_argument("--out", required=True, help="output folder (GenEval layout)")
    p.add_argument("--samples", type=int, default=4, help="images per prompt")
    p.add_argument("--guidance", type=float, default=None, help=GUIDANCE_HELP)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-prompts", type=int, default=8, help="prompts per batched rollout")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("prompts", help="write a prompt suite (geneval, shapes) as metadata jsonl")
    p.add_argument("suite", choices=["geneval", "shapes"])
    p.add_argument("--split", choices=["train", "heldout"], default="heldout", help="for shapes")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_prompts)
    p = sub.add_parser("report", help="write RUN_DIR/report.html (one self-contained page; works mid-run)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (unirl train --out), or make demo's runs/demo")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("export", help="a checkpoint as a plain model folder (no optimiser state), e.g. to ship")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="RUN/checkpoints/step-<n> (or final)")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="float16 (default: half the size), bfloat16 or float32")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("pretrain-toy", help="rebuild the shipped toy model from scratch")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="PretrainToyConfig fields, e.g. lm_steps=10")
    p.set_defaults(func=cmd_pretrain_toy)
    return parser


def add_benchmark_options(e: argparse.ArgumentParser) -> None:
    """What every model benchmark takes besides its own task options."""
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True)
    e.add_argument("--device", default=None)
    e.add_argument("--dtype", default=None)
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--json", action="store_true")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (`train CONFIG --out RUN lr=1e-4`).
    if rest and hasattr(args, "overrides") and all("=" in r and not r.startswith("-") for r in rest):
        args.overrides = [*args.overrides, *rest]
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        args.func(args)
    except UnirlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
