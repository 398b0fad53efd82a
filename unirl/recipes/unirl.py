"""UniRL: a unified model improves its image generation with its own understanding as the judge.

One step, top to bottom (see `train`):

1. a batch of prompt specs, drawn from the suite by a generator seeded with (seed, step);
2. rollout: `generate_images`, `group_size` images per prompt (no grad);
3. judges score each image: the model's own yes/no answers about the spec (self-VQA), its open
   answers (self-QA), or GenEval's judge with a detector (for comparison runs), by weight;
4. learn: GRPO on the image tokens (group-normalised advantages, clipped ratio, optional k3 KL
   to the frozen initial weights), `num_iterations` passes over the rollout; plus SFT on
   understanding ("generated images teach understanding": the spec's answers given the model's
   own accepted images) and optionally SFT on accepted generations, mixed by weight.

Everything a step draws is seeded by (seed, step), so a resumed run sees the same prompts and
samples as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unirl.algorithms.grpo import group_advantages, grpo_loss
from unirl.engine.checkpoint import link_checkpoint
from unirl.engine.distributed import ONE_PROCESS, Processes, clip_grad_norm, init_processes
from unirl.engine.metrics import MetricsLogger, rounded
from unirl.engine.policy import GRPOConfig, autocast, build_policy, learning_rate, restore, save
from unirl.engine.samples import judge_tracked, tracked_specs, write_samples
from unirl.errors import UnirlError
from unirl.models import ImageRollout, UnifiedModel
from unirl.progress import progress
from unirl.rewards.self_judges import SelfQAReward, SelfVQAReward, WeightedSum, flatten_per_image
from unirl.specs import Spec, check_tags_known, draw_tag_balanced, open_questions, yes_no_questions


@dataclass
class Config(GRPOConfig):
    """UniRL's GRPO + SFT. Field names follow TRL's GRPOConfig where one exists; the policy,
    optimiser, GRPO and LoRA fields are `GRPOConfig`'s."""

    recipe: str = "unirl"
    prompts: str = "shapes:train"
    """Prompt suite to train on: a suite name (shapes:train, geneval) or a .jsonl / .txt file."""
    prompts_per_step: int = 4
    balance_tags: bool = True
    """Draw each prompt's tag uniformly, then a prompt of that tag; False: uniformly over prompts."""
    prompt_tag_weights: dict[str, float] = field(default_factory=dict)
    """With balance_tags, draw tags in proportion to these weights (1 for a tag not named)."""
    guidance: float | None = None
    """Classifier-free guidance of rollouts and of the log-probs trained on; None: the model's default."""
    reward_self_vqa: float = 1.0
    reward_self_qa: float = 0.0
    reward_geneval: float = 0.0
    """Weights of the judges. The default rewards only with the model's own understanding."""
    reward_tag_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    """Judge weights for one tag's prompts, replacing the reward_* weights there (a judge not
    named weighs 0): {"counting": {"self_vqa": 1.0}}. A judge can be trusted on some tags and
    misrank others; `unirl eval judges` measures each judge's AUC per tag on training prompts."""
    self_vqa_mode: str = "margin"
    """margin: mean of p_yes − p_no over the spec's questions; verdict: mean of (p_yes > p_no)."""
    self_qa_thing: str = "object"
    """The noun of self-QA's main-object question ("What object is this?"); the shapes world says shape."""
    self_qa_counts: bool = False
    """Self-QA also asks how many of every object the prompt names (one circle in "a red circle
    and a blue star"): without it, extra objects make a colour or relation likelier to be found."""
    geneval_detector: str = "shapes"
    geneval_partial: bool = False
    grpo_weight: float = 1.0
    und_sft_weight: float = 0.0
    """Weight of the understanding NLL on accepted images (UniRL's generated images teach understanding)."""
    gen_sft_weight: float = 0.0
    """Weight of the image-token NLL of accepted images (rejection-sampling fine-tuning)."""
    accept_threshold: float = 0.5
    """An image is accepted for SFT when its combined reward is at least this."""
    track_prompts: int = 4
    """At every sample step, also draw and judge one image for each of this many fixed training
    prompts with a fixed seed (samples/step-<n>/tracked-*.png), for the report's across-steps view."""


def build_judge(config: Config, model: UnifiedModel) -> WeightedSum:
    judges: dict[str, tuple[Any, float]] = {}
    weights = {"self_vqa": config.reward_self_vqa, "self_qa": config.reward_self_qa, "geneval": config.reward_geneval}
    for tag, tag_weights in config.reward_tag_weights.items():
        if unknown := set(tag_weights) - set(weights):
            raise UnirlError(f"config: reward_tag_weights.{tag}: expected judges among {', '.join(weights)}, "
                             f"got {', '.join(sorted(unknown))}")
    used = {name for name, w in weights.items() if w} | {
        name for tag_weights in config.reward_tag_weights.values() for name, w in tag_weights.items() if w}
    if "self_vqa" in used:
        judges["self_vqa"] = (SelfVQAReward(model, mode=config.self_vqa_mode), config.reward_self_vqa)
    if "self_qa" in used:
        self_qa = SelfQAReward(model, thing=config.self_qa_thing, counts=config.self_qa_counts)
        judges["self_qa"] = (self_qa, config.reward_self_qa)
    if "geneval" in used:
        from evaluators.geneval.detectors import load_detector
        from evaluators.geneval.reward import GenEvalReward

        detector = load_detector(config.geneval_detector, device=model.device)
        judge = GenEvalReward(detector, partial=config.geneval_partial)
        judges["geneval"] = (judge, config.reward_geneval)
    if not judges:
        raise UnirlError("config: every reward_* weight is 0; give at least one judge a weight")
    return WeightedSum(judges, config.reward_tag_weights)


def draw_prompts(specs: list[Spec], config: Config, step: int) -> list[Spec]:
    """The step's prompts, seeded by (seed, step). With `balance_tags`, each is drawn from a tag
    drawn uniformly (GenEval's overall is a mean over tags, and suites are rarely balanced:
    shapes:train is 94% color_attr), then uniformly within the tag."""
    rng = np.random.default_rng([config.seed, step])
    n = config.prompts_per_step
    if not config.balance_tags:
        return [specs[i] for i in rng.choice(len(specs), size=n, replace=len(specs) < n)]
    return draw_tag_balanced(specs, n, rng, tag_weights=config.prompt_tag_weights or None)


def understanding_targets(specs: list[Spec], accepted: torch.Tensor, thing: str
                          ) -> tuple[list[int], list[str], list[str]]:
    """For each accepted image: its spec's open questions and answers, and each yes/no question
    with answer "yes" (an accepted image is taken to show the spec)."""
    per_image = []
    for i, spec in enumerate(specs):
        per_image.append([(q, "yes") for q in yes_no_questions(spec)] + open_questions(spec, thing)
                         if accepted[i] else [])
    owner, pairs = flatten_per_image(per_image)
    return owner, [q for q, _ in pairs], [a for _, a in pairs]


def distinct_fraction(tokens: torch.Tensor, group_size: int) -> float:
    """Share of distinct token sequences per group, averaged (B-STaR's exploration signal: it
    falls towards 1/group_size as the policy collapses)."""
    groups = tokens.view(-1, group_size, tokens.shape[-1])
    return float(np.mean([len(torch.unique(g, dim=0)) / group_size for g in groups]))


def learn(model: UnifiedModel, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
          rollout: ImageRollout, advantages: torch.Tensor, accepted: torch.Tensor, specs: list[Spec],
          ref_logprobs: torch.Tensor | None, guidance: float, config: Config, step: int,
          processes: Processes = ONE_PROCESS) -> tuple[bool, dict[str, float]]:
    """Step 3: `num_iterations` optimiser passes over one rollout batch (`specs`: one per image).

    Under several processes each holds an equal share of the batch; the SFT losses are divided
    by the whole batch's counts and gradients are averaged, so the update equals one process's
    update on the whole batch. Returns (finite, metrics); a non-finite loss on any process skips
    the step on all of them."""
    world = processes.world
    n_accepted = int(processes.sum(accepted.sum())) if config.gen_sft_weight else 0
    n_questions = 0
    if config.und_sft_weight:
        owner, questions, answers = understanding_targets(specs, accepted, config.self_qa_thing)
        n_questions = int(processes.sum(torch.tensor(len(questions))))
    metrics: dict[str, float] = {}
    for _ in range(config.num_iterations):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        with autocast(config, model):
            logprobs = model.image_token_logprobs(rollout.prompts, rollout.tokens, guidance=guidance,
                                                  temperature=config.temperature, rollout=rollout)
        loss_grpo, stats = grpo_loss(logprobs, rollout.logprobs.to(logprobs.device), advantages,
                                     ref_logprobs=ref_logprobs, beta=config.beta,
                                     eps_low=config.epsilon_low, eps_high=config.epsilon_high)
        loss = config.grpo_weight * loss_grpo
        parts = {"loss/grpo": loss_grpo.detach(), **{k: torch.tensor(v) for k, v in stats.items()}}
        # SFT terms: this process's sum over the batch's count (times the process count, which
        # the gradient average divides out again) is the whole batch's mean.
        if config.gen_sft_weight and n_accepted:
            loss_gen = -logprobs[accepted].sum() * world / (n_accepted * logprobs.shape[1])
            loss = loss + config.gen_sft_weight * loss_gen
            parts["loss/gen_sft"] = loss_gen.detach()
        if config.und_sft_weight and n_questions:
            with autocast(config, model):
                answer_logprobs = model.answer_logprobs(rollout.images[owner], questions, answers) \
                    if questions else logprobs.new_zeros(1)
            loss_und = -answer_logprobs.float().sum() * world / n_questions
            loss = loss + config.und_sft_weight * loss_und
            parts["loss/und_sft"] = loss_und.detach()
        if processes.sum(torch.isfinite(loss.detach()).float()) < world:
            return False, metrics
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        processes.average_gradients(params)
        grad_norm = clip_grad_norm(params, config.max_grad_norm)
        optimizer.step()
        parts["loss"] = loss.detach()
        names = list(parts)
        means = processes.sum(torch.stack([parts[k].float().cpu() for k in names])) / world
        metrics = dict(zip(names, means.tolist())) | {"grad_norm": float(grad_norm)}  # the same everywhere
    optimizer.zero_grad(set_to_none=True)
    return True, metrics


def train(config: Config, run_dir: str | Path, resume_from: Path | None = None,
          processes: Processes | None = None) -> Path:
    """Train, writing into `run_dir` (metrics, samples, checkpoints); return the final checkpoint.
    Under `accelerate launch`, each process takes an equal share of every step's prompts."""
    from evaluators.suites import load_suite

    run_dir = Path(run_dir)
    processes = processes or init_processes(config.device)
    torch.manual_seed(config.seed)
    suite = load_suite(config.prompts)
    if not suite.specs:
        raise UnirlError(f"prompts {config.prompts}: no prompts")
    for field_name in ("reward_tag_weights", "prompt_tag_weights"):
        check_tags_known(field_name, getattr(config, field_name), suite.specs, config.prompts)
    model, params, score_reference = build_policy(config, resume_from, processes, reference=config.beta > 0)
    guidance = model.default_guidance if config.guidance is None else config.guidance
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    start = restore(resume_from, model, optimizer) if resume_from is not None else 0
    judge = build_judge(config, model)
    main = processes.is_main
    # From a checkpoint: lines after it are dropped; from scratch (an interrupted first stretch): all of them.
    log = MetricsLogger(run_dir, resume_step=start if resume_from else -1, tensorboard=False) if main else None
    recipe = {"model": config.model, "prompts": suite.name, "prompts_sha256": suite.sha256, "seed": config.seed,
              "guidance": guidance, "temperature": config.temperature, "group_size": config.group_size,
              "judges": {k: w for k, (_, w) in judge.judges.items()}, "processes": processes.world}
    if start == 0 and main:
        (run_dir / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")
    bad_steps = 0
    tracked = tracked_specs(suite.specs, config.track_prompts, config.seed)

    bar = progress(range(start, config.max_steps), desc="unirl", initial=start, total=config.max_steps,
                   disable=not main)
    for step in bar:
        t0 = time.time()
        step_specs = draw_prompts(suite.specs, config, step)
        specs = processes.shard(step_specs, "prompts_per_step")
        per_image = [s for s in specs for _ in range(config.group_size)]
        # 1. Rollout: G images per prompt, with the log-probs they were drawn with.
        with autocast(config, model):
            rollout = model.generate_images([s["prompt"] for s in specs], num_per_prompt=config.group_size,
                                            guidance=guidance, temperature=config.temperature,
                                            seed=config.seed * 1_000_003 + step + 7_777_777 * processes.rank)
        t1 = time.time()
        # 2. Judge.
        with autocast(config, model):
            rewards, info = judge(rollout.images, per_image)
        rewards = rewards.float().to(model.device)
        advantages = group_advantages(rewards, config.group_size, scale_std=config.scale_rewards)
        accepted = rewards >= config.accept_threshold
        t2 = time.time()
        # 3. Learn.
        finite = bool(processes.sum(torch.isfinite(rewards).all().float()) == processes.world)
        metrics: dict[str, float] = {}
        if finite:
            with autocast(config, model):
                ref_logprobs = score_reference(lambda m, r=rollout: m.image_token_logprobs(
                    r.prompts, r.tokens, guidance=guidance, temperature=config.temperature, rollout=r))
            finite, metrics = learn(model, params, optimizer, rollout, advantages, accepted, per_image,
                                    ref_logprobs, guidance, config, step, processes)
        bad_steps = 0 if finite else bad_steps + 1
        if bad_steps >= config.max_bad_steps:
            raise UnirlError(f"step {step}: reward or loss not finite for {bad_steps} steps in a row "
                             f"(max_bad_steps={config.max_bad_steps}); stopping. "
                             "Lower learning_rate or check the judges.")
        t3 = time.time()

        # 4. Log, sample, checkpoint: over every process's images, written by the main one.
        all_rewards = processes.gather(rewards)
        group_std = all_rewards.view(-1, config.group_size).std(1, unbiased=False)
        per_judge = {name: processes.gather(values.float().to(model.device))
                     for name, values in info["per_judge"].items()}
        metrics |= {
            "reward": all_rewards.mean().item(), "reward_std": group_std.mean().item(),
            "frac_reward_zero_std": (group_std < 1e-6).float().mean().item(),
            "advantages_abs_mean": processes.gather(advantages).abs().mean().item(),
            "accepted_fraction": processes.gather(accepted.float()).mean().item(),
            # Monte-Carlo estimate on the sampled tokens
            "entropy": -processes.gather(rollout.logprobs.float()).mean().item(),
            "distinct_fraction": distinct_fraction(processes.gather(rollout.tokens), config.group_size),
            "learning_rate": learning_rate(config, step), "skipped": int(not finite),
            "images_per_second": len(all_rewards) / max(t3 - t0, 1e-9),
            "time/rollout": t1 - t0, "time/judge": t2 - t1, "time/learn": t3 - t2,
        }
        image_tags = [str(s.get("tag", "")) for s in step_specs for _ in range(config.group_size)]
        for tag in sorted(set(image_tags)):  # which tags the policy is learning (rank order = gather order)
            of_tag = torch.tensor([t == tag for t in image_tags], device=all_rewards.device)
            metrics[f"rewards/tag/{tag}"] = all_rewards[of_tag].mean().item()
        for name, values in per_judge.items():
            judged = values[~values.isnan()]  # a judge weighted 0 for a tag skips its images
            if len(judged):
                metrics[f"rewards/{name}/mean"] = judged.mean().item()
                metrics[f"rewards/{name}/std"] = judged.std(unbiased=False).item()
        metrics = rounded(metrics)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}")
        if main and ((step + 1) % config.log_every == 0 or step == config.max_steps - 1):
            log.log(step + 1, metrics)
        if config.sample_every and (step + 1) % config.sample_every == 0:
            # Every process generates the tracked images (a sharded model needs them all); the main writes.
            judged = judge_tracked(model, judge, tracked, guidance, config) if tracked else None
            if main:  # the rollout images: the main process's share
                write_samples(run_dir, step + 1, (rollout.images, per_image, rewards, info), judged)
        if (step + 1) % config.save_every == 0 and step + 1 < config.max_steps:
            save(run_dir, step + 1, model, optimizer, config, processes)
            processes.barrier()
    # step-<n> for resuming, final for loading: one write, two names.
    last = save(run_dir, config.max_steps, model, optimizer, config, processes)
    final = run_dir / "checkpoints" / "final"
    if main:
        final = link_checkpoint(last, "final")
        log.close()
    processes.barrier()
    return final
