"""`unirl pretrain-toy`: build the shipped toy unified model from scratch on the shapes world.

A Janus-architecture model (transformers' JanusConfig: SigLIP-style vision tower, VQ-VAE, Llama
LM, generation head), small enough for a laptop CPU:

1. VQ-VAE on rendered scenes (64 px → 8x8 tokens), with l2-normalised codes as Janus' VQ decodes
   them; codebook dead codes are re-seeded from the batch.
2. The LM, jointly: prompt → image tokens (with 10% of prompts dropped, for classifier-free
   guidance) and image + question → answer (what, how many, which colour, where, yes/no), on
   fresh scenes of the train split every step.
3. Saved as an HF Janus folder that `load_model` reads like any Janus checkpoint.

Every batch is drawn from a seeded generator, so the same config gives the same model.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modalities.image.shapes import (
    BACKGROUND,
    IMAGE_SIZE,
    all_specs,
    render,
    sample_scenes,
    scene_questions,
    split_specs,
)
from unirl.atomic import atomic_dir
from unirl.config import to_dict
from unirl.engine.metrics import MetricsLogger
from unirl.models.janus import JanusModel, tiny_janus_config
from unirl.models.tokenizer import build_byte_bpe_tokenizer
from unirl.progress import progress


@dataclass
class PretrainToyConfig:
    seed: int = 0
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    vision_hidden: int = 128
    vision_layers: int = 2
    codebook: int = 512
    vq_steps: int = 2500
    vq_batch: int = 64
    vq_lr: float = 8e-4
    vq_crop: int = 32
    vq_object_weight: float = 10.0
    vq_reseed: bool = True
    lm_steps: int = 2400
    gen_batch: int = 16
    und_batch: int = 48
    lm_lr: float = 1e-3
    cfg_drop: float = 0.1
    warmup: int = 100
    threads: int = 2


def shapes_corpus() -> list[str]:
    """Text the tokenizer is trained on: every prompt, and questions and answers of many scenes."""
    rng = np.random.default_rng(0)
    lines = [s["prompt"] for s in all_specs()]
    for scene in sample_scenes(split_specs("train"), 400, seed=0):
        lines += [f"{q} {a}" for _, q, a in scene_questions(scene, rng)]
    return lines


def build_toy(config: PretrainToyConfig) -> JanusModel:
    from transformers import JanusForConditionalGeneration, JanusImageProcessor, JanusProcessor

    tokenizer = build_byte_bpe_tokenizer(shapes_corpus(), vocab_size=512)
    janus_config = tiny_janus_config(
        len(tokenizer), tokenizer.convert_tokens_to_ids(tokenizer.image_token), tokenizer.bos_token_id,
        tokenizer.eos_token_id, tokenizer.pad_token_id, image_size=IMAGE_SIZE, patch_size=8, hidden=config.hidden,
        layers=config.layers, heads=config.heads, codebook=config.codebook, vq_channels=32,
        vq_multipliers=(1, 1, 2, 2), vision_hidden=config.vision_hidden, vision_layers=config.vision_layers)
    processor = JanusProcessor(image_processor=JanusImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
                               tokenizer=tokenizer, num_image_tokens=janus_config.vision_config.num_image_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        hf = JanusForConditionalGeneration(janus_config)
    return JanusModel(hf, processor, spec="toy", device=torch.device("cpu"), dtype=torch.float32)


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ----------------------------------------------------------------------------- stage 1: VQ
def vq_quantize(vq, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode with l2-normalised latents and codes (what Janus' decode assumes): returns the
    straight-through quantised latents, the commitment+codebook loss and the code indices."""
    z = F.normalize(vq.quant_conv(vq.encoder(pixels)), dim=1)  # [B,D,h,w]
    codes = F.normalize(vq.quantize.embedding.weight, dim=-1)  # [K,D]
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    index = (flat @ codes.T).argmax(-1)
    zq = codes[index].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
    loss = F.mse_loss(zq, z.detach()) + 0.25 * F.mse_loss(z, zq.detach())
    return z + (zq - z).detach(), loss, index


def token_aligned_crops(pixels: torch.Tensor, size: int, rng: np.random.Generator, grid: int = 8) -> torch.Tensor:
    """One size x size crop per image at an offset on the token grid: the VQ is convolutional,
    so it learns the same codes from a quarter of the pixels, at a quarter of the cost."""
    if size >= pixels.shape[-1]:
        return pixels
    n, _, h, w = pixels.shape
    top = torch.from_numpy(rng.integers(0, (h - size) // grid + 1, size=n) * grid)
    left = torch.from_numpy(rng.integers(0, (w - size) // grid + 1, size=n) * grid)
    rows = (top[:, None] + torch.arange(size))[:, None, :, None].expand(n, 3, size, w)
    cropped = pixels.gather(2, rows)
    cols = (left[:, None] + torch.arange(size))[:, None, None, :].expand(n, 3, size, size)
    return cropped.gather(3, cols)


def train_vq(model: JanusModel, config: PretrainToyConfig, log: MetricsLogger) -> None:
    vq = model.module.model.vqmodel
    params = [p for n, p in vq.named_parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.vq_lr, weight_decay=0.0)
    specs = split_specs("train")
    background = torch.tensor(BACKGROUND).view(1, 3, 1, 1) * 2 - 1
    usage = torch.zeros(config.codebook)
    bar = progress(range(config.vq_steps), desc="vq-vae")
    vq.train()
    for step in bar:
        pixels = render(sample_scenes(specs, config.vq_batch, seed=config.seed * 1_000_003 + step)) * 2 - 1
        pixels = token_aligned_crops(pixels, config.vq_crop, np.random.default_rng(step))
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, config.vq_steps, config.vq_lr, config.warmup)
        zq, commit, index = vq_quantize(vq, pixels)
        recon = vq.decoder(vq.post_quant_conv(zq))
        # Objects cover a tenth of the table: weight their pixels up so they are not averaged away.
        weight = 1 + config.vq_object_weight * (pixels - background).abs().amax(1, keepdim=True).gt(0.02).float()
        error = (recon - pixels).abs() + (recon - pixels) ** 2
        rec_loss = (weight * error).mean() / weight.mean()
        loss = rec_loss + commit
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        usage.mul_(0.99).index_add_(0, index, torch.full_like(index, 0.01, dtype=torch.float32))
        # Re-seed dead codes from this batch's latents, until late in training.
        if config.vq_reseed and step % 100 == 99 and step < config.vq_steps * 0.8:
            with torch.no_grad():
                dead = (usage < 1e-3).nonzero().flatten()
                if len(dead):
                    z = F.normalize(vq.quant_conv(vq.encoder(pixels)), dim=1)
                    z = z.permute(0, 2, 3, 1).reshape(-1, zq.shape[1])
                    pick = torch.randint(len(z), (len(dead),), generator=torch.Generator().manual_seed(step))
                    vq.quantize.embedding.weight[dead] = z[pick]
                    usage[dead] = 0.01
        if step % 20 == 0 or step == config.vq_steps - 1:
            used = int((usage > 1e-3).sum())
            log.log(step, {"stage": "vq", "loss": loss.item(), "recon": rec_loss.item(), "codes_used": used})
            bar.set_postfix(recon=f"{rec_loss.item():.3f}", codes=used)
    vq.eval()
    with torch.no_grad():  # store unit-norm codes: then transformers' encode/decode agree with training
        vq.quantize.embedding.weight.copy_(F.normalize(vq.quantize.embedding.weight, dim=-1))
        # How well held-out scenes survive encode → decode, on the objects' pixels.
        images = render(sample_scenes(split_specs("heldout"), 200, seed=12345))
        recon = model.decode_tokens(model.encode_images(images))
        on_object = (images - (background + 1) / 2).abs().amax(1, keepdim=True).gt(0.02).expand_as(images)
        error = (recon - images).abs()[on_object].mean().item()
    log.log(config.vq_steps, {"stage": "vq", "heldout_object_l1": error})


# ----------------------------------------------------------------------------- stage 2: LM
def train_lm(model: JanusModel, config: PretrainToyConfig, log: MetricsLogger) -> None:
    hf = model.module
    for p in hf.model.vqmodel.parameters():
        p.requires_grad_(False)
    params = [p for p in hf.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lm_lr, weight_decay=0.01, betas=(0.9, 0.98))
    specs = split_specs("train")
    bar = progress(range(config.lm_steps), desc="lm")
    start = time.time()
    for step in bar:
        rng = np.random.default_rng(config.seed * 1_000_003 + 10_000_000 + step)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, config.lm_steps, config.lm_lr, config.warmup)
        # Generation: prompt → image tokens, some prompts dropped for classifier-free guidance.
        gen_scenes = sample_scenes(specs, config.gen_batch, seed=int(rng.integers(2**31)))
        tokens = model.encode_images(render(gen_scenes))
        drop = torch.from_numpy(rng.random(config.gen_batch) < config.cfg_drop)
        gen_lp = model.image_token_logprobs([s.spec["prompt"] for s in gen_scenes], tokens, guidance=1.0,
                                            unconditional=drop)
        gen_loss = -gen_lp.mean()
        # Understanding: one question per scene, types balanced by drawing from each scene's set.
        und_scenes = sample_scenes(specs, config.und_batch, seed=int(rng.integers(2**31)))
        qa = [q[rng.integers(len(q))] for q in (scene_questions(s, rng) for s in und_scenes)]
        lengths = torch.tensor([len(model.tokenizer(" " + a, add_special_tokens=False)["input_ids"]) + 1
                                for _, _, a in qa], dtype=torch.float32)
        und_lp = model.answer_logprobs(render(und_scenes), [q for _, q, _ in qa], [a for _, _, a in qa])
        und_loss = -(und_lp / lengths).mean()
        loss = gen_loss + und_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 20 == 0 or step == config.lm_steps - 1:
            log.log(step, {"stage": "lm", "loss": loss.item(), "gen_loss": gen_loss.item(),
                           "und_loss": und_loss.item(), "seconds": round(time.time() - start, 1)})
            bar.set_postfix(gen=f"{gen_loss.item():.3f}", und=f"{und_loss.item():.3f}")


def pretrain_toy(out: str | Path, config: PretrainToyConfig | None = None, overwrite: bool = False) -> Path:
    config = config or PretrainToyConfig()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        log = MetricsLogger(tmp, tensorboard=False)
        start = time.time()
        model = build_toy(config)
        train_vq(model, config, log)
        vq_seconds = time.time() - start
        train_lm(model, config, log)
        model.save_pretrained(tmp)
        (tmp / "pretrain.json").write_text(json.dumps({
            "config": to_dict(config), "vq_seconds": round(vq_seconds, 1),
            "total_seconds": round(time.time() - start, 1), "threads": torch.get_num_threads()}, indent=1) + "\n")
        log.close()
    return out
