"""Self-VQA judging throughput: the batched judge against a per-image loop.

    python -m bench.judge --model toy [--images 64 --repeats 3] [--json]

Ours is `SelfVQAReward` (`yes_no_about`: each image and the turn up to its questions run once,
then every question of every image in one batch from that KV cache); the reference asks the same
questions one image at a time, each question on its own row, as a loop over images would. Both judge
the same rendered shapes-world scenes against their specs' yes/no questions, in the same process,
alternating, after a warm-up; the median of the repeats. They must give the same margins (checked
to 1e-3 in float32, 3e-2 in bf16). With --json the last line is {"ours_images_per_s",
"reference_images_per_s", "ratio", ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from bench.models import build
from bench.rollout import time_call
from modalities.image.shapes import render, sample_scenes, split_specs
from unirl.rewards.self_judges import SelfVQAReward
from unirl.specs import yes_no_questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model = build(args.model, args.device, args.dtype)
    scenes = sample_scenes(split_specs("heldout"), args.images, seed=0)
    images, specs = render(scenes, device=model.device), [s.spec for s in scenes]
    judge = SelfVQAReward(model)

    def ours() -> torch.Tensor:
        return judge(images, specs)[0]

    def reference() -> torch.Tensor:
        rewards = []
        for image, spec in zip(images, specs):
            questions = yes_no_questions(spec)
            p_yes, p_no = model.yes_no(image[None].expand(len(questions), -1, -1, -1), questions)
            rewards.append((p_yes - p_no).float().mean())
        return torch.stack(rewards)

    with torch.no_grad():
        batched, looped = ours(), reference()  # warm-up, and the same answer
        tolerance = 1e-3 if model.dtype == torch.float32 else 3e-2  # bf16 rounds the cached prefix differently
        if not torch.allclose(batched.cpu(), looped.cpu(), atol=tolerance):
            raise SystemExit(f"judges disagree: max difference {(batched.cpu() - looped.cpu()).abs().max():.4f}")
        ours_s, ref_s = [], []
        for _ in range(args.repeats):
            ours_s.append(time_call(ours, model.device))
            ref_s.append(time_call(reference, model.device))
    ours_ips, ref_ips = args.images / statistics.median(ours_s), args.images / statistics.median(ref_s)
    questions = sum(len(yes_no_questions(s)) for s in specs)
    device_name = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "cpu"
    result = dict(ours_images_per_s=round(ours_ips, 2), reference_images_per_s=round(ref_ips, 2),
                  ratio=round(ours_ips / ref_ips, 2), images=args.images, questions=questions, model=args.model,
                  device=device_name, dtype=str(model.dtype).replace("torch.", ""), repeats=args.repeats,
                  threads=torch.get_num_threads())
    if not args.json:
        print(f"{args.model} on {device_name}: self-VQA batched {ours_ips:.1f} images/s, per-image loop "
              f"{ref_ips:.1f} images/s, ratio {ours_ips / ref_ips:.2f} ({questions} questions)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
