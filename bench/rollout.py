"""Rollout throughput: our `generate_images` and `sample_answers` against transformers' own
`generate(generation_mode="image")` and `generate(generation_mode="text")`.

    python -m bench.rollout --model janus-tiny [--prompts 16 --samples 1 --guidance 5 --repeats 3] [--json]

Each pair runs on the same weights, batch, guidance, temperature and token count, in the same
process, alternating, after one warm-up each; we report the median of the repeats. With
--json the last line is {"ours_images_per_s", "reference_images_per_s", "ratio", ...}, with the
memory-bandwidth floor (images/s if each decode step only read the weights and KV cache once at
the measured copy bandwidth), the answers' pair ("ours_answers_per_s", "reference_answers_per_s",
"answers_ratio": questions about rendered shapes-world scenes, up to --answer-tokens each) and,
on CUDA, ours without CUDA graphs ("ours_eager_images_per_s").
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
QUESTIONS = ["What shape is this?", "How many objects are there?", "What colour is the circle?",
             "Is there a red star?"]


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


def paired_seconds(ours, reference, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of each callable, alternating, after one warm-up call of each."""
    calls = [fn for fn in (ours, reference) if fn is not None]
    for fn in calls:
        fn()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for fn, seconds in zip(calls, times):
            seconds.append(time_call(fn, device))
    return tuple(statistics.median(s) for s in times) + (float("nan"),) * (2 - len(calls))


def answers_pair(model: JanusModel, hf, n: int, args) -> dict:
    """Our sampled answers against transformers' text generate: n questions about rendered
    scenes, sampled at --temperature, at most --answer-tokens each; both stop once every row
    has ended (a random-init model never ends: both then write every token)."""
    from modalities.image.shapes import render, sample_scenes, split_specs

    scenes = sample_scenes(split_specs("heldout"), n, seed=0)
    images = render(scenes, device=model.device)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]

    def ours():
        model.sample_answers(images, questions, temperature=args.temperature, max_new_tokens=args.answer_tokens)

    def reference():
        with torch.no_grad():
            inputs = model._understanding_batch(images, questions)  # tokenised and preprocessed, as ours
            hf.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        pixel_values=inputs["pixel_values"], generation_mode="text", do_sample=True,
                        temperature=args.temperature, max_new_tokens=args.answer_tokens,
                        pad_token_id=model.pad_id, eos_token_id=model.eos_id)

    ours_s, ref_s = paired_seconds(ours, reference, args.repeats, model.device)
    return dict(ours_answers_per_s=round(n / ours_s, 3), reference_answers_per_s=round(n / ref_s, 3),
                answers_ratio=round(ref_s / ours_s, 3), answers=n, answer_tokens=args.answer_tokens)


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
    parser.add_argument("--answer-tokens", type=int, default=16, help="most tokens per answer")
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
    ours_s, ref_s = paired_seconds(ours, reference, args.repeats, model.device)
    ours_ips, ref_ips = n_images / ours_s, n_images / ref_s
    tokens = model.generate_images(prompts, num_per_prompt=args.samples, guidance=args.guidance, seed=0).tokens
    vq_s = paired_seconds(lambda: model.decode_tokens(tokens), None, args.repeats, model.device)[0]
    extra = {"vq_decode_seconds": round(vq_s, 4),  # the floor counts decode steps only; ours less the VQ decode
             "ours_token_loop_images_per_s": round(n_images / (ours_s - vq_s), 3)}
    if model.device.type == "cuda":  # what the CUDA graphs add over the static cache alone
        model.cuda_graphs = False
        extra["ours_eager_images_per_s"] = round(n_images / paired_seconds(ours, None, args.repeats, model.device)[0],
                                                 3)
        model.cuda_graphs = True
    print(f"images: ours {ours_ips:.3f}/s, transformers {ref_ips:.3f}/s, {extra}", flush=True)
    try:
        extra.update(answers_pair(model, hf, n_images, args))
    except Exception as e:  # keep the images' figures when the answers' pair cannot run
        extra.update(answers_error=f"{type(e).__name__}: {e}"[:500], ours_answers_per_s=float("nan"),
                     reference_answers_per_s=float("nan"), answers_ratio=float("nan"))
    bandwidth = copy_bandwidth(model.device)
    floor_ips = bandwidth_floor(model, n_images, ids.shape[1], args.guidance, bandwidth)
    device_name = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "cpu"
    result = dict(ours_images_per_s=round(ours_ips, 3), reference_images_per_s=round(ref_ips, 3),
                  ratio=round(ours_ips / ref_ips, 3), floor_images_per_s=round(floor_ips, 3),
                  floor_over_ours=round(floor_ips / ours_ips, 3), copy_bandwidth_gb_s=round(bandwidth / 1e9, 1),
                  model=args.model, device=device_name,
                  dtype=str(model.dtype).replace("torch.", ""), images=n_images, guidance=args.guidance,
                  temperature=args.temperature, image_tokens=model.num_image_tokens, repeats=args.repeats,
                  compiled=args.compile, **extra,
                  threads=torch.get_num_threads())
    if not args.json:
        print(f"{args.model} on {device_name}: ours {ours_ips:.2f} images/s, transformers {ref_ips:.2f} images/s, "
              f"ratio {ours_ips / ref_ips:.2f}; bandwidth floor {floor_ips:.2f} images/s "
              f"({floor_ips / ours_ips:.1f}x ours); answers: ours {extra['ours_answers_per_s']:.1f}/s, "
              f"transformers {extra['reference_answers_per_s']:.1f}/s, ratio {extra['answers_ratio']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
