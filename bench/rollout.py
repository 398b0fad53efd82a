"""Rollout throughput: our `generate_images` against transformers' own image `generate`.

    python -m bench.rollout --model janus-tiny [--prompts 16 --samples 1 --guidance 5 --repeats 3] [--json]

Both run on the same weights, batch, guidance, temperature and token count, in the same
process, alternating, after one warm-up each; we report the median of the repeats. With
--json the last line is {"ours_images_per_s", "reference_images_per_s", "ratio", ...}.
Models besides load_model's specs: janus-mid (hidden 256, 4 layers, 64 tokens) and
janus-pro-1b-shape (random-init, Janus-Pro-1B's LM and VQ shape: hidden 2048, 24 layers,
576 tokens at 384 px, codebook 16384; for a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from unirl.models import load_model
from unirl.models.base import resolve_device_dtype
from unirl.models.janus import JanusModel, build_tiny_janus

BENCH_MODELS = {
    "janus-mid": dict(image_size=64, patch_size=8, hidden=256, layers=4, codebook=1024),
    "janus-pro-1b-shape": dict(image_size=384, patch_size=16, hidden=2048, layers=24, heads=16, codebook=16384,
                               vq_channels=128, vq_multipliers=(1, 1, 2, 2, 4), vision_hidden=256, vision_layers=2),
}
PROMPT_WORDS = ["red", "blue", "green", "pink", "black", "white", "brown", "purple"]
SHAPES = ["circle", "square", "star", "heart"]


def build(spec: str, device: str | None, dtype: str | None) -> JanusModel:
    if spec in BENCH_MODELS:
        dev, dt = resolve_device_dtype(device, dtype)
        hf, processor = build_tiny_janus(seed=0, **BENCH_MODELS[spec])
        return JanusModel(hf, processor, spec=spec, device=dev, dtype=dt)
    return load_model(spec, device=device, dtype=dtype)


def equal_length_prompts(model: JanusModel, n: int) -> list[str]:
    """n prompts of one token length, so the reference (which pads nothing) does the same work."""
    candidates = [f"a photo of a {c} {s}" for c in PROMPT_WORDS for s in SHAPES]
    lengths = {p: len(model.tokenizer(model.generation_text(p))["input_ids"]) for p in candidates}
    common = max(set(lengths.values()), key=list(lengths.values()).count)
    same = [p for p in candidates if lengths[p] == common]
    return [same[i % len(same)] for i in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="janus-tiny")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=1, help="images per prompt")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model = build(args.model, args.device, args.dtype)
    prompts = equal_length_prompts(model, args.prompts)
    n_images = args.prompts * args.samples
    hf = model.module
    hf.generation_config.generation_kwargs = {"boi_token_id": model.boi_id}
    ids = torch.tensor(model.tokenizer([model.generation_text(p) for p in prompts])["input_ids"], device=model.device)

    def ours():
        model.generate_images(prompts, num_per_prompt=args.samples, guidance=args.guidance,
                              temperature=args.temperature, seed=0)

    def reference():
        with torch.no_grad():
            tokens = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_mode="image", do_sample=True,
                                 temperature=args.temperature, guidance_scale=args.guidance,
                                 num_return_sequences=args.samples, max_new_tokens=model.num_image_tokens)
            hf.decode_image_tokens(tokens)

    ours(), reference()  # warm-up
    ours_s, ref_s = [], []
    for _ in range(args.repeats):
        ours_s.append(time_call(ours, model.device))
        ref_s.append(time_call(reference, model.device))
    ours_ips, ref_ips = n_images / statistics.median(ours_s), n_images / statistics.median(ref_s)
    device_name = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "cpu"
    result = dict(ours_images_per_s=round(ours_ips, 3), reference_images_per_s=round(ref_ips, 3),
                  ratio=round(ours_ips / ref_ips, 3), model=args.model, device=device_name,
                  dtype=str(model.dtype).replace("torch.", ""), images=n_images, guidance=args.guidance,
                  temperature=args.temperature, image_tokens=model.num_image_tokens, repeats=args.repeats,
                  threads=torch.get_num_threads())
    if not args.json:
        print(f"{args.model} on {device_name}: ours {ours_ips:.2f} images/s, transformers {ref_ips:.2f} images/s, "
              f"ratio {ours_ips / ref_ips:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
