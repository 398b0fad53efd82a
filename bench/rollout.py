"""Rollout throughput: our `generate_images` against transformers' own image `generate`.

    python -m bench.rollout --model janus-tiny [--prompts 16 --samples 1 --guidance 5 --repeats 3] [--json]

Both run on the same weights, batch, guidance, temperature and token count, in the same
process, alternating, after one warm-up each; we report the median of the repeats. With
--json the last line is {"ours_images_per_s", "reference_images_per_s", "ratio", ...}, with the
memory-bandwidth floor: images/s if each decode step only read the weights and KV cache once at
the measured copy bandwidth.
--model takes load_model's specs and bench.models' random-init janus-mid and janus-pro-1b-shape.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from bench.models import build
from unirl.models.janus import JanusModel

PROMPT_WORDS = ["red", "blue", "green", "pink", "black", "white", "brown", "purple"]
SHAPES = ["circle", "square", "star", "heart"]


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


def copy_bandwidth(device: torch.device, megabytes: int = 1024, repeats: int = 10) -> float:
    """Bytes per second a device-to-device copy moves, counting bytes read and written."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    seconds = statistics.median(time_call(lambda: dst.copy_(src), device) for _ in range(repeats))
    return 2 * src.numel() / seconds


def bandwidth_floor(model: JanusModel, n_images: int, prompt_tokens: int, guidance: float, bandwidth: float) -> float:
    """Images/s if every decode step only read the LM's weights and its KV cache once at
    `bandwidth`: the memory-bound limit of autoregressive image generation at this batch."""
    lm = model.module.model.language_model
    gen = [model.module.model.generation_head, model.module.model.generation_aligner]
    weight_bytes = sum(p.numel() * p.element_size() for m in [lm, *gen] for p in m.parameters()
                       if p is not lm.embed_tokens.weight)  # an image step never reads the text embeddings
    cfg = lm.config
    rows = n_images * (2 if guidance != 1.0 else 1)  # conditional and unconditional rows
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    kv_per_token *= rows * model.dtype.itemsize
    steps = model.num_image_tokens
    cache_reads = kv_per_token * sum(prompt_tokens + t for t in range(steps))
    return n_images / ((steps * weight_bytes + cache_reads) / bandwidth)


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
    parser.add_argument("--compile", action="store_true",
                        help="ours with a torch.compiled VQ decoder (JanusModel.compile)")
    args = parser.parse_args()

    model = build(args.model, args.device, args.dtype)
    prompts = equal_length_prompts(model, args.prompts)
    n_images = args.prompts * args.samples
    # The reference is transformers' model as a user loads it: the same weights in their default
    # memory layout (ours may keep the VQ decoder channels-last on CPU).
    hf = copy.deepcopy(model.module).to(memory_format=torch.contiguous_format)
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

    if args.compile:
        model.compile()
    ours(), reference()  # warm-up (and compiling)
    ours_s, ref_s = [], []
    for _ in range(args.repeats):
        ours_s.append(time_call(ours, model.device))
        ref_s.append(time_call(reference, model.device))
    ours_ips, ref_ips = n_images / statistics.median(ours_s), n_images / statistics.median(ref_s)
    bandwidth = copy_bandwidth(model.device)
    floor_ips = bandwidth_floor(model, n_images, ids.shape[1], args.guidance, bandwidth)
    device_name = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "cpu"
    result = dict(ours_images_per_s=round(ours_ips, 3), reference_images_per_s=round(ref_ips, 3),
                  ratio=round(ours_ips / ref_ips, 3), floor_images_per_s=round(floor_ips, 3),
                  floor_over_ours=round(floor_ips / ours_ips, 3), copy_bandwidth_gb_s=round(bandwidth / 1e9, 1),
                  model=args.model, device=device_name,
                  dtype=str(model.dtype).replace("torch.", ""), images=n_images, guidance=args.guidance,
                  temperature=args.temperature, image_tokens=model.num_image_tokens, repeats=args.repeats,
                  compiled=args.compile,
                  threads=torch.get_num_threads())
    if not args.json:
        print(f"{args.model} on {device_name}: ours {ours_ips:.2f} images/s, transformers {ref_ips:.2f} images/s, "
              f"ratio {ours_ips / ref_ips:.2f}; bandwidth floor {floor_ips:.2f} images/s "
              f"({floor_ips / ours_ips:.1f}x ours)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
