"""`make demo`: the main job on the best model that exists, end to end, in about a minute on a CPU.

Until the toy model and the UniRL recipe land, this generates images for a few prompts and lets
the model judge them itself with yes/no questions (the self-VQA signal UniRL trains on)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evaluators.geneval.layout import write_prompt_folder
from unirl.atomic import atomic_dir
from unirl.models import TOY_MODEL_DIR, load_model
from unirl.specs import free_text_spec

PROMPTS = ["a photo of a red circle", "a photo of two blue stars", "a photo of a green square left of a heart"]
QUESTIONS = ["Is there a red circle?", "Are there exactly two blue stars?", "Is the green square left of the heart?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    out = Path(args.out)
    model_spec = "toy" if TOY_MODEL_DIR.is_dir() else "janus-tiny"
    print(f"model: {model_spec}")
    model = load_model(model_spec, seed=0)
    rollout = model.generate_images(PROMPTS, num_per_prompt=args.samples, guidance=model.default_guidance, seed=0)
    with atomic_dir(out / "samples", overwrite=True) as tmp:
        for i, prompt in enumerate(PROMPTS):
            write_prompt_folder(tmp, i, free_text_spec(prompt), rollout.images[i * args.samples:(i + 1) * args.samples])
    questions = [q for q in QUESTIONS for _ in range(args.samples)]
    p_yes, p_no = model.yes_no(rollout.images, questions)
    reward = (p_yes - p_no).detach().view(len(PROMPTS), args.samples)
    rows = [{"prompt": p, "question": q, "self_vqa_reward": [round(v, 4) for v in r.tolist()]}
            for p, q, r in zip(PROMPTS, QUESTIONS, reward)]
    (out / "demo.json").write_text(json.dumps({"model": model_spec, "results": rows}, indent=1) + "\n")
    for row in rows:
        print(f"{row['prompt']:<45} {row['question']:<40} p_yes-p_no: {row['self_vqa_reward']}")
    print(f"images in {out / 'samples'} (GenEval layout); judgements in {out / 'demo.json'}")


if __name__ == "__main__":
    main()
