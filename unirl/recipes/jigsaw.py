"""Visual Jigsaw: post-train understanding with a self-supervised ordering task and a verifiable
reward (Wu et al., 2025), for images, videos and depth.

One step, top to bottom (see `train`):

1. puzzles: `puzzles_per_step` fresh puzzles (toy data made on the fly, or drawn from a folder),
   seeded by (seed, step) so a resumed run sees the same ones;
2. rollout: `group_size` answers per puzzle, sampled from the model with their log-probs;
3. reward: `jigsaw_reward` of each answer against the puzzle's truth (1 exact, γ × positions
   right for a wrong permutation, 0 otherwise);
4. learn: GRPO on the answer tokens (`unirl.algorithms.grpo`, the same loss as UniRL's image
   tokens), `num_iterations` passes over the rollout.

`cold_start_steps` (0 in the paper's settings) first teach a model that has never written a list
of labels, by NLL on its puzzles (seeds no training step uses): with `cold_start_answers: random`
on random permutations, the answer's form and nothing about the order; with `truth` on the
puzzles' own answers, a supervised cold start (the truth is free: we cut the puzzles), after
which GRPO refines what the model can already sample.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from modalities.jigsaw import JigsawTask, Puzzles, make_puzzles
from unirl.algorithms.grpo import group_advantages, grpo_loss
from unirl.engine.checkpoint import link_checkpoint
from unirl.engine.distributed import Processes, init_processes
from unirl.engine.metrics import MetricsLogger, rounded
from unirl.engine.policy import GRPOConfig, autocast, build_policy, learning_rate, restore, save
from unirl.errors import UnirlError
from unirl.models import UnifiedModel
from unirl.progress import progress
from unirl.rewards.jigsaw import jigsaw_reward, parse_order

ColdStartAnswers = Literal["random", "truth"]


@dataclass
class Config(GRPOConfig):
    """Visual Jigsaw's GRPO on answers. The task fields are `JigsawTask`'s."""

    recipe: str = "jigsaw"
    task: JigsawTask = field(default_factory=JigsawTask)
    data: str = "toy"
    """toy (made by the project), or a folder of images / videos / ScanNet-style RGB-D pairs."""
    puzzles_per_step: int = 4
    max_new_tokens: int = 32
    partial_weight: float = 0.2
    """γ: a valid but wrong permutation earns γ × the fraction of positions right."""
    format_weight: float = 0.0
    repetition_penalty: float = 0.0
    cold_start_steps: int = 0
    """NLL steps before GRPO, for models that have never written the answer's form."""
    cold_start_answers: ColdStartAnswers = "random"
    """The cold start's targets: random (permutations: the form only) or truth (the puzzles' answers)."""
    cold_start_lr: float | None = None
    """The cold start's learning rate (None: learning_rate). The toy has never seen a digit or a comma:
    their embeddings start from random and need a larger step than RL fine-tuning takes."""
    cold_start_puzzles: int = 16
    """Puzzles per cold-start step."""


def label_list(order: torch.Tensor) -> str:
    return ", ".join(str(int(x)) for x in order)


def cold_start_orders(puzzles: Puzzles, answers: ColdStartAnswers, seed: int) -> torch.Tensor:
    """[n, k] 1-based label orders the cold start teaches: the puzzles' own (truth) or random ones."""
    if answers == "truth":
        return puzzles.answers
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(puzzles.answers.shape[1], generator=generator) + 1 for _ in puzzles.questions])


def cold_start(model: UnifiedModel, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
               config: Config) -> list[float]:
    """NLL of answers to real puzzles drawn with seeds no training step uses: random permutations
    (the answer's form, not its content) or the puzzles' true answers (`cold_start_answers`)."""
    losses = []
    for group in optimizer.param_groups:
        group["lr"] = config.cold_start_lr or config.learning_rate
    for step in progress(range(config.cold_start_steps), desc=f"cold start ({config.cold_start_answers} answers)"):
        seed = 2**40 + config.seed * 1_000_003 + step  # beyond any training step's seed
        puzzles = make_puzzles(config.task, config.data, config.cold_start_puzzles, seed=seed, device=model.device)
        orders = cold_start_orders(puzzles, config.cold_start_answers, seed)
        with autocast(config, model):
            logprobs = model.answer_logprobs(puzzles.images, puzzles.questions, [label_list(o) for o in orders])
        loss = -logprobs.float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
    optimizer.zero_grad(set_to_none=True)
    return losses


def score_answers(texts: list[str], answers: torch.Tensor, config: Config) -> tuple[torch.Tensor, dict[str, float]]:
    """Rewards [N] for answers to puzzles [N, k] (one row per answer), and exact / valid rates."""
    rewards, exact, valid = [], [], []
    for text, truth in zip(texts, answers.tolist()):
        rewards.append(jigsaw_reward(text, truth, config.partial_weight, config.format_weight,
                                     config.repetition_penalty))
        order = parse_order(text)
        exact.append(order == truth)
        valid.append(order is not None and sorted(order) == list(range(1, len(truth) + 1)))
    return torch.tensor(rewards), {"exact_accuracy": sum(exact) / len(exact), "format_valid": sum(valid) / len(valid)}


def write_samples(run_dir: Path, step: int, puzzles: Puzzles, texts: list[str], rewards: torch.Tensor,
                  config: Config, limit: int = 8) -> None:
    """samples/step-<n>/: each puzzle's pieces as the model saw them (p<i>-<j>.png), the first
    answer of its group, the parsed order, the truth and the reward (samples.jsonl)."""
    from modalities.image.io import save_images
    from unirl.atomic import atomic_dir

    task = config.task
    with atomic_dir(run_dir / "samples" / f"step-{step}", overwrite=True) as tmp:
        rows = []
        for i in range(min(limit, len(puzzles.questions))):
            pieces = puzzles.images[i]
            names = [f"p{i}-{j}.png" for j in range(len(pieces))]
            save_images(pieces, [tmp / n for n in names])
            answer = i * config.group_size  # the first answer of the puzzle's group
            truth = puzzles.answers[i].tolist()
            rows.append({"modality": task.modality, "pieces": names, "question": puzzles.questions[i],
                         "answer": texts[answer], "order": parse_order(texts[answer]), "truth": truth,
                         "reward": round(float(rewards[answer]), 4),
                         "grid": [task.rows, task.cols] if task.modality == "image" else None,
                         "frames_per_piece": len(pieces) // len(truth) if task.modality == "video" else 1})
        (tmp / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def train(config: Config, run_dir: str | Path, resume_from: Path | None = None,
          processes: Processes | None = None) -> Path:
    """Train, writing into `run_dir` (metrics, samples, checkpoints); return the final checkpoint."""
    run_dir = Path(run_dir)
    processes = processes or init_processes(config.device)
    if processes.world > 1:
        raise UnirlError("jigsaw: one process for now (run without accelerate launch)")
    torch.manual_seed(config.seed)
    model, params, score_reference = build_policy(config, resume_from, reference=config.beta > 0)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    start = restore(resume_from, model, optimizer) if resume_from is not None else 0
    # From a checkpoint: lines after it are dropped; from scratch (an interrupted first stretch): all of them.
    log = MetricsLogger(run_dir, resume_step=start if resume_from else -1, tensorboard=False)
    if start == 0:
        recipe = {"model": config.model, "modality": config.task.modality, "data": config.data, "seed": config.seed,
                  "temperature": config.temperature, "group_size": config.group_size, "pieces": config.task.pieces,
                  "partial_weight": config.partial_weight, "cold_start_steps": config.cold_start_steps,
                  "cold_start_answers": config.cold_start_answers, "lr_warmup_steps": config.warmup_steps}
        (run_dir / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")
        if config.cold_start_steps:
            losses = cold_start(model, params, optimizer, config)
            log.log(0, {"cold_start/loss_first": losses[0], "cold_start/loss_last": losses[-1]})
    bad_steps = 0
    bar = progress(range(start, config.max_steps), desc="jigsaw", initial=start, total=config.max_steps)
    for step in bar:
        t0 = time.time()
        # 1. Puzzles, each repeated for its group.
        puzzles = make_puzzles(config.task, config.data, config.puzzles_per_step, seed=config.seed * 1_000_003 + step,
                               device=model.device)
        grouped = Puzzles([img for img in puzzles.images for _ in range(config.group_size)],
                          [q for q in puzzles.questions for _ in range(config.group_size)],
                          puzzles.answers.repeat_interleave(config.group_size, dim=0))
        # 2. Rollout.
        with autocast(config, model):
            rollout = model.sample_answers(grouped.images, grouped.questions, temperature=config.temperature,
                                           seed=config.seed * 1_000_003 + step, max_new_tokens=config.max_new_tokens)
        t1 = time.time()
        # 3. Reward.
        rewards, rates = score_answers(rollout.texts, grouped.answers, config)
        rewards = rewards.to(model.device)
        advantages = group_advantages(rewards, config.group_size, scale_std=config.scale_rewards)
        t2 = time.time()
        # 4. Learn.
        with autocast(config, model):
            ref_logprobs = score_reference(lambda m, r=rollout, p=grouped: m.answer_token_logprobs(
                p.images, p.questions, r.tokens, r.mask, temperature=config.temperature))
        metrics: dict[str, float] = {}
        finite = bool(torch.isfinite(rewards).all())
        for _ in range(config.num_iterations if finite else 0):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            with autocast(config, model):
                logprobs = model.answer_token_logprobs(grouped.images, grouped.questions, rollout.tokens,
                                                       rollout.mask, temperature=config.temperature)
            loss, stats = grpo_loss(logprobs.float(), rollout.logprobs.to(logprobs.device), advantages,
                                    ref_logprobs=ref_logprobs, beta=config.beta, eps_low=config.epsilon_low,
                                    eps_high=config.epsilon_high, mask=rollout.mask.to(logprobs.device))
            if not torch.isfinite(loss):
                finite = False
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            metrics = {"loss": loss.item(), "grad_norm": float(grad_norm), **stats}
        optimizer.zero_grad(set_to_none=True)
        bad_steps = 0 if finite else bad_steps + 1
        if bad_steps >= config.max_bad_steps:
            raise UnirlError(f"step {step}: reward or loss not finite for {bad_steps} steps in a row "
                             f"(max_bad_steps={config.max_bad_steps}); stopping. Lower learning_rate.")
        t3 = time.time()
        group_std = rewards.view(-1, config.group_size).std(1, unbiased=False)
        mask = rollout.mask.float()
        metrics |= {
            "reward": rewards.mean().item(), "reward_std": group_std.mean().item(),
            "frac_reward_zero_std": (group_std < 1e-6).float().mean().item(), **rates,
            "completion_length": mask.sum(1).mean().item(),
            "entropy": -(rollout.logprobs.float() * mask).sum().item() / max(mask.sum().item(), 1),
            "learning_rate": learning_rate(config, step), "skipped": int(not finite),
            "time/rollout": t1 - t0, "time/judge": t2 - t1, "time/learn": t3 - t2,
        }
        metrics = rounded(metrics)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", exact=f"{rates['exact_accuracy']:.2f}")
        if (step + 1) % config.log_every == 0 or step == config.max_steps - 1:
            log.log(step + 1, metrics)
        if config.sample_every and (step + 1) % config.sample_every == 0:
            write_samples(run_dir, step + 1, puzzles, rollout.texts, rewards, config)
        if (step + 1) % config.save_every == 0 and step + 1 < config.max_steps:
            save(run_dir, step + 1, model, optimizer, config)
    final = link_checkpoint(save(run_dir, config.max_steps, model, optimizer, config), "final")
    log.close()
    return final
