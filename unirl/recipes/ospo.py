"""OSPO: object-centric self-improving preference optimisation. The model makes its own preference
pairs, judges them with its own understanding, and trains on them.

Top to bottom (see `train`):

1. initial prompts: `num_prompts` distinct specs of the prompt suite, one of each tag (category)
   in turn: the shapes world's for the toy model, GenEval-style templates or your own prompt file
   for real models;
2. hard negatives: `negatives_per_prompt` edits of each spec (`unirl.negatives`: an object, a
   colour, a relation or a count replaced, colours swapped, an object dropped), each a valid spec
   that claims something the base spec rules out;
3. pairs (`build_pairs`, once, saved in RUN/pairs/): `group_size` images for the base prompt and
   for each negative; self-VQA on every image with the base prompt's yes/no questions (or, with
   `judge: self_qa`, the model's open answers to the base prompt's questions); chosen: the
   base image that passes every question by a margin over `margin_threshold` with the highest
   mean margin; rejected: a negative image failing a question by that margin whose
   length-normalised log-prob is closest to the chosen's. Prompts without a pair are dropped and
   counted;
4. learn: L = a·SimPO + b·CoPO + c·SFT on length-normalised image-token log-probs without CFG
   (`unirl.algorithms.preference.ospo_loss`), or DPO against the initial weights (`loss: dpo`).

A resumed run reuses the saved pairs and continues training from its newest checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from unirl.algorithms.preference import dpo_loss, ospo_loss, select_pair
from unirl.atomic import atomic_dir
from unirl.engine.checkpoint import link_checkpoint
from unirl.engine.distributed import Processes, init_processes
from unirl.engine.metrics import MetricsLogger, rounded
from unirl.engine.policy import PolicyConfig, autocast, build_policy, learning_rate, restore, save
from unirl.engine.samples import judge_tracked, tracked_specs, write_samples
from unirl.errors import UnirlError
from unirl.models import UnifiedModel
from unirl.negatives import hard_negatives
from unirl.progress import progress
from unirl.rewards.self_judges import SelfQAReward, SelfVQAReward, WeightedSum
from unirl.specs import Spec, check_tags_known, distinct_tag_balanced


@dataclass
class Config(PolicyConfig):
    """OSPO's four stages. Defaults are the paper's (a, b, c = 0.8, 0.5, 1.5; β1, β2 = 3, 5;
    γ1 = γ2 = 0.5; LoRA r = 32, α = 64); the policy, optimiser and LoRA fields are `PolicyConfig`'s
    (`group_size` is G, the images drawn per prompt)."""

    recipe: str = "ospo"
    prompts: str = "shapes:train"
    """Suite the initial prompts are drawn from: shapes:train, geneval, or a .jsonl / .txt file."""
    num_prompts: int = 256
    """Initial prompts (distinct; one of each tag before a second of any)."""
    negatives_per_prompt: int = 3
    group_size: int = 4
    guidance: float | None = None
    """Classifier-free guidance of the pair images; None: the model's default. Training scores without CFG."""
    margin_threshold: float = 0.5
    judge: str = "self_vqa"
    """Who judges the pair images, on the base prompt's questions. self_vqa: the paper's yes/no
    questions, margin p_yes - p_no; self_qa: the model's open answers (UniRL's form: which colour,
    where, how many), margin +1 when the answer is the spec's and -1 when not; geneval: GenEval's
    rules with `geneval_detector` (+1 correct, -1 not), for comparison runs: the ceiling a
    perfect judge gives, not self-improvement."""
    geneval_detector: str = "shapes"
    """With judge geneval: the detector (shapes: exact, for the shapes world; mask2former:PATH)."""
    self_qa_thing: str = "object"
    """With judge self_qa: the noun of the main-object question; the shapes world says shape."""
    self_qa_counts: bool = False
    """With judge self_qa: also ask how many of every object the prompt names."""
    prompt_tags: list[str] = field(default_factory=list)
    """Tags the initial prompts are drawn from; empty: every tag of the suite."""
    generation_batch: int = 16
    """Prompts whose images (base and negatives) are generated and judged together in stage 3."""
    loss: str = "ospo"
    """ospo: a·SimPO + b·CoPO + c·SFT; dpo: DPO against the frozen initial weights (dpo_beta)."""
    simpo_weight: float = 0.8
    copo_weight: float = 0.5
    sft_weight: float = 1.5
    beta1: float = 3.0
    beta2: float = 5.0
    gamma1: float = 0.5
    gamma2: float = 0.5
    dpo_beta: float = 0.1
    batch_size: int = 8
    """Pairs per optimiser step (TRL: per_device_train_batch_size)."""
    lora_rank: int = 32
    lora_alpha: float = 64.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "dense"])
    track_prompts: int = 4
    """Tracked prompts drawn and judged at every `sample_every` step (samples/, for the report)."""


@dataclass
class Pairs:
    rows: list[dict[str, Any]]  # one per kept prompt: prompts, specs, edit, margins, log-probs
    chosen: torch.Tensor  # [P, T] image tokens
    rejected: torch.Tensor  # [P, T]
    images: torch.Tensor | None = None  # [P, 2, 3, H, W] chosen and rejected, as made (for looking)


def image_logps(model: UnifiedModel, prompts: list[str], tokens: torch.Tensor, config: Config,
                batch: int = 64) -> torch.Tensor:
    """Per-token log-probs [N, T] of image tokens given prompts, without CFG (no grad)."""
    out = []
    with torch.no_grad(), autocast(config, model):
        for start in range(0, len(prompts), batch):
            out.append(model.image_token_logprobs(prompts[start:start + batch], tokens[start:start + batch],
                                                  guidance=1.0, temperature=config.temperature).float().cpu())
    return torch.cat(out)


def build_judge(model: UnifiedModel, config: Config) -> Any:
    if config.judge == "self_vqa":
        return SelfVQAReward(model)
    if config.judge == "geneval":
        from evaluators.geneval.detectors import load_detector
        from evaluators.geneval.reward import GenEvalReward

        return GenEvalReward(load_detector(config.geneval_detector, device=model.device))
    return SelfQAReward(model, thing=config.self_qa_thing, counts=config.self_qa_counts)


def margins_matrix(questions: list[list[dict[str, Any]]]) -> torch.Tensor:
    """Margins [N, Q] from a judge's per-image question lists (all with Q questions)."""
    return torch.tensor([[q["margin"] for q in per_image] for per_image in questions])


def draw_and_judge(model: UnifiedModel, judge: Any, prompts: list[str], base_specs: list[Spec],
                   guidance: float, config: Config, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor, list[list[dict[str, Any]]], torch.Tensor]:
    """`group_size` images per prompt, each judged on its base spec's yes/no questions and scored
    given the base prompt: (images, tokens, per-image margins, length-normalised log-probs)."""
    per_image = [s for s in base_specs for _ in range(config.group_size)]
    with autocast(config, model):
        rollout = model.generate_images(prompts, num_per_prompt=config.group_size, guidance=guidance,
                                        temperature=config.temperature, seed=seed)
        _, info = judge(rollout.images, per_image)
    logps = image_logps(model, [s["prompt"] for s in per_image], rollout.tokens, config).mean(-1)
    return rollout.images.cpu(), rollout.tokens.cpu(), info["questions"], logps


def build_pairs(model: UnifiedModel, specs: list[Spec], guidance: float, config: Config
                ) -> tuple[Pairs, dict[str, Any]]:
    """Stages 2 and 3 for every initial prompt; returns the pairs and what happened (counts).
    A prompt's negative images are drawn only when one of its own images passes (without a chosen
    image it is dropped whatever its negatives show)."""
    classes = sorted({c["class"] for s in specs for c in s["include"]})
    rng = np.random.default_rng([config.seed, 2])
    judge = build_judge(model, config)
    g, threshold = config.group_size, config.margin_threshold
    rows, chosen_tokens, rejected_tokens, images = [], [], [], []
    counts = {"prompts": len(specs), "pairs": 0, "no_chosen": 0, "no_rejected": 0, "no_negatives": 0}
    for start in progress(range(0, len(specs), config.generation_batch), desc="ospo pairs"):
        batch = specs[start:start + config.generation_batch]
        negatives = [hard_negatives(s, classes, config.negatives_per_prompt, rng) for s in batch]
        seed = config.seed * 1_000_003 + start
        base_images, base_tokens, base_questions, base_logps = draw_and_judge(
            model, judge, [s["prompt"] for s in batch], batch, guidance, config, seed)
        base_margins = [margins_matrix(base_questions[i * g:(i + 1) * g]) for i in range(len(batch))]
        kept = []
        for i in range(len(batch)):
            if not negatives[i]:
                counts["no_negatives"] += 1
            elif not (base_margins[i] > threshold).all(dim=1).any():
                counts["no_chosen"] += 1
            else:
                kept.append(i)
        if not kept:
            continue
        owners = [i for i in kept for _ in negatives[i]]
        neg_images, neg_tokens, neg_questions, neg_logps = draw_and_judge(
            model, judge, [n["spec"]["prompt"] for i in kept for n in negatives[i]], [batch[i] for i in owners],
            guidance, config, seed + 500_000)
        first = 0  # this prompt's first negative image
        for i in kept:
            spec, span = batch[i], len(negatives[i]) * g
            negative = list(range(first, first + span))
            first += span
            chosen, rejected = select_pair(base_margins[i], margins_matrix([neg_questions[n] for n in negative]),
                                           base_logps[i * g:(i + 1) * g], neg_logps[negative], threshold)
            if rejected is None:
                counts["no_rejected"] += 1
                continue
            c, r = i * g + chosen, negative[rejected]
            neg = negatives[i][rejected // g]
            rows.append({"prompt": spec["prompt"], "spec": spec, "negative_prompt": neg["spec"]["prompt"],
                         "negative_spec": neg["spec"], "edit": neg["edit"], "what": neg["what"],
                         "questions": [q["question"] for q in base_questions[c]],
                         "chosen_margins": base_margins[i][chosen].tolist(),
                         "rejected_margins": [q["margin"] for q in neg_questions[r]],
                         "chosen_logp": float(base_logps[c]), "rejected_logp": float(neg_logps[r])})
            chosen_tokens.append(base_tokens[c])
            rejected_tokens.append(neg_tokens[r])
            images.append(torch.stack([base_images[c], neg_images[r]]))
            counts["pairs"] += 1
    if not rows:
        raise UnirlError(f"ospo: no prompt of {len(specs)} gave a pair ({counts}); the model's {config.judge} never "
                         f"passed a base image and failed a negative one by margin_threshold={threshold}")
    return Pairs(rows, torch.stack(chosen_tokens), torch.stack(rejected_tokens), torch.stack(images)), counts


def save_pairs(pairs: Pairs, counts: dict[str, Any], folder: Path) -> None:
    """RUN/pairs/: pairs.jsonl, tokens.safetensors, summary.json and the images (for looking)."""
    from modalities.image.io import save_images

    with atomic_dir(folder, overwrite=True) as tmp:
        save_file({"chosen": pairs.chosen.contiguous(), "rejected": pairs.rejected.contiguous()},
                  str(tmp / "tokens.safetensors"))
        (tmp / "images").mkdir()
        save_images(pairs.images.flatten(0, 1), [tmp / "images" / f"{i:04d}-{kind}.png"
                                                 for i in range(len(pairs.rows)) for kind in ("chosen", "rejected")])
        (tmp / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs.rows))
        (tmp / "summary.json").write_text(json.dumps(counts, indent=1) + "\n")


def load_pairs(folder: Path) -> Pairs:
    tokens = load_file(str(folder / "tokens.safetensors"))
    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines() if line.strip()]
    return Pairs(rows, tokens["chosen"], tokens["rejected"])


def train(config: Config, run_dir: str | Path, resume_from: Path | None = None,
          processes: Processes | None = None) -> Path:
    """Build the pairs (or reuse RUN/pairs), then train; return the final checkpoint."""
    from evaluators.suites import load_suite

    run_dir = Path(run_dir)
    processes = processes or init_processes(config.device)
    if processes.world > 1:
        raise UnirlError("ospo: one process for now (run without accelerate launch)")
    if config.loss not in ("ospo", "dpo"):
        raise UnirlError(f"config: 'loss' expected 'ospo' or 'dpo', got {config.loss!r}")
    if config.judge not in ("self_vqa", "self_qa", "geneval"):
        raise UnirlError(f"config: 'judge' expected 'self_vqa', 'self_qa' or 'geneval', got {config.judge!r}")
    torch.manual_seed(config.seed)
    suite = load_suite(config.prompts)
    if not suite.specs:
        raise UnirlError(f"prompts {config.prompts}: no prompts")
    check_tags_known("prompt_tags", config.prompt_tags, suite.specs, config.prompts)
    specs = [s for s in suite.specs if not config.prompt_tags or s.get("tag") in config.prompt_tags]
    model, params, score_reference = build_policy(config, resume_from, reference=config.loss == "dpo")
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    start = restore(resume_from, model, optimizer) if resume_from is not None else 0
    log = MetricsLogger(run_dir, resume_step=start, tensorboard=False)  # step 0 (the pairs) stays with the pairs
    guidance = model.default_guidance if config.guidance is None else config.guidance

    # 1-3. Initial prompts, hard negatives, self-judged pairs: once per run, from the initial model.
    if not (run_dir / "pairs" / "pairs.jsonl").is_file():
        t0 = time.time()
        initial = distinct_tag_balanced(specs, config.num_prompts, np.random.default_rng([config.seed, 1]))
        pairs, counts = build_pairs(model, initial, guidance, config)
        save_pairs(pairs, counts, run_dir / "pairs")
        margins = [(r["chosen_margins"], r["rejected_margins"]) for r in pairs.rows]
        log.log(0, rounded({
            "pairs/found_per_prompt": counts["pairs"] / counts["prompts"], "pairs/count": counts["pairs"],
            "pairs/dropped": counts["prompts"] - counts["pairs"],
            "pairs/chosen_margin": float(np.mean([np.mean(c) for c, _ in margins])),
            "pairs/rejected_margin": float(np.mean([min(r) for _, r in margins])),
            "time/pairs": time.time() - t0}))
    pairs = load_pairs(run_dir / "pairs")
    if start == 0:
        recipe = {"model": config.model, "prompts": suite.name, "prompts_sha256": suite.sha256, "seed": config.seed,
                  "guidance": guidance, "temperature": config.temperature, "group_size": config.group_size,
                  "judge": config.judge, "self_qa_counts": config.self_qa_counts,
                  "prompt_tags": config.prompt_tags, "margin_threshold": config.margin_threshold, "loss": config.loss,
                  "pairs": len(pairs.rows), "scoring": "length-normalised image-token log-probs, no CFG"}
        (run_dir / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")
    tracked = tracked_specs(specs, config.track_prompts, config.seed)
    judge = WeightedSum({config.judge: (build_judge(model, config), 1.0)})

    # 4. Learn.
    bad_steps = 0
    bar = progress(range(start, config.max_steps), desc="ospo", initial=start, total=config.max_steps)
    for step in bar:
        t0 = time.time()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        rng = np.random.default_rng([config.seed, step])
        idx = rng.choice(len(pairs.rows), size=config.batch_size, replace=len(pairs.rows) < config.batch_size)
        rows = [pairs.rows[i] for i in idx]
        chosen, rejected = pairs.chosen[idx], pairs.rejected[idx]
        x, x_negative = [r["prompt"] for r in rows], [r["negative_prompt"] for r in rows]
        # One pass for all three: y_w given x, y_l given x, y_w given the negative prompt.
        prompts, tokens = x + x + x_negative, torch.cat([chosen, rejected, chosen])
        with autocast(config, model):
            logps = model.image_token_logprobs(prompts, tokens, guidance=1.0, temperature=config.temperature).float()
        n = len(rows)
        if config.loss == "ospo":
            mean = logps.mean(-1)
            loss, stats = ospo_loss(mean[:n], mean[n:2 * n], mean[2 * n:], config.simpo_weight, config.copo_weight,
                                    config.sft_weight, config.beta1, config.beta2, config.gamma1, config.gamma2)
        else:
            with autocast(config, model):
                ref = score_reference(lambda m, p=prompts[:2 * n], t=tokens[:2 * n]: m.image_token_logprobs(
                    p, t, guidance=1.0, temperature=config.temperature).float())
            total, ref_total = logps.sum(-1), ref.sum(-1)
            loss, stats = dpo_loss(total[:n], total[n:2 * n], ref_total[:n], ref_total[n:], config.dpo_beta)
        finite = bool(torch.isfinite(loss))
        bad_steps = 0 if finite else bad_steps + 1
        if bad_steps >= config.max_bad_steps:
            raise UnirlError(f"step {step}: loss not finite for {bad_steps} steps in a row "
                             f"(max_bad_steps={config.max_bad_steps}); stopping. Lower learning_rate.")
        grad_norm = torch.zeros(())
        if finite:  # a non-finite step is skipped and counted
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
        metrics = rounded({"loss": loss.item(), "grad_norm": float(grad_norm), **stats, "skipped": int(not finite),
                           "learning_rate": learning_rate(config, step), "time/learn": time.time() - t0})
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{stats['rewards/accuracies']:.2f}")
        if (step + 1) % config.log_every == 0 or step == config.max_steps - 1:
            log.log(step + 1, metrics)
        if config.sample_every and (step + 1) % config.sample_every == 0 and tracked:
            write_samples(run_dir, step + 1, None, judge_tracked(model, judge, tracked, guidance, config))
        if (step + 1) % config.save_every == 0 and step + 1 < config.max_steps:
            save(run_dir, step + 1, model, optimizer, config)
    final = link_checkpoint(save(run_dir, config.max_steps, model, optimizer, config), "final")
    log.close()
    return final
