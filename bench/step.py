"""One recipe step, timed: rollout / judge / learn, and peak GPU memory.

    python -m bench.step --config configs/unirl/toy_grpo.yaml [--model janus-pro-1b-shape] [--steps 2] [key=value ...]

Runs the recipe's own `train` for `--steps` steps into a temporary run directory (nothing is
kept) and reports each step's split from its metrics.jsonl; the first step includes warm-up
(kernel selection, allocator growth), so the last is the figure to quote. `--model` takes
`load_model` specs and bench.models' random-init janus-mid and janus-pro-1b-shape (saved to
a temporary folder first). With --json the last line is the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench.models import as_model_folder
from unirl.config import apply_overrides, from_dict, read_yaml
from unirl.models.base import resolve_device_dtype
from unirl.recipes import get_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--model", default=None, help="overrides the config's model")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    data = apply_overrides(read_yaml(args.config), args.overrides)
    folder = None
    if args.model:
        data["model"] = as_model_folder(args.model, data.get("dtype"))
        folder = data["model"] if data["model"] != args.model else None
    data |= {"max_steps": args.steps, "save_every": args.steps + 1, "log_every": 1, "sample_every": 0}
    recipe = get_recipe(str(data.get("recipe", "")), source=args.config)
    config = from_dict(recipe.Config, data, source=args.config)
    run_dir = Path(tempfile.mkdtemp(prefix="unirl-bench-step-"))
    device, dtype = resolve_device_dtype(config.device, config.dtype)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    try:
        recipe.train(config, run_dir)
        rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    steps = [{k: row[k] for k in ("step", "time/rollout", "time/judge", "time/learn", "images_per_second")}
             for row in rows]
    result = {
        "config": args.config, "model": args.model or config.model, "steps": steps,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        **{k: getattr(config, k, None) for k in ("bf16", "group_size", "prompts_per_step", "lora_rank", "guidance")},
        "threads": torch.get_num_threads(),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "total_seconds": round(time.time() - start, 1),
    }
    if not args.json:
        for s in steps:
            print(f"step {s['step']}: rollout {s['time/rollout']:.2f} s, judge {s['time/judge']:.2f} s, "
                  f"learn {s['time/learn']:.2f} s, {s['images_per_second']:.2f} images/s")
        if result["peak_memory_gib"] is not None:
            print(f"peak GPU memory {result['peak_memory_gib']} GiB on {result['device']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
