"""SAIL: a text-conditioned visual planner improves on its own experience (Self-Adapting
Improvement Loops, 2025). The unified model is the planner: given the current frame and the task
text it generates the next frame as image tokens; an inverse dynamics model turns (frame, planned
frame) into the action; the environment acts.

A run, top to bottom (see `train`):

0. warm-up, the in-domain pretraining SAIL starts from: scripted demonstrations (a noisy expert)
   on the *seen* tasks only. The planner learns next-frame prediction on the successful ones and
   the self-judge learns "Is the robot next to the …?" on their frames; the inverse dynamics
   model learns from every transition, random-command episodes included. A planner pretrained
   that way once (a run with `iterations: 0`, configs/sail/planner.yaml; shipped as toy-planner)
   is the `model` of configs/sail/toy.yaml, whose warm-up then keeps it as it is
   (`planner_warmup_steps: 0`) and only collects demonstrations and trains the IDM.
1..I. each iteration, on the *unseen* tasks: success per task is measured on fixed evaluation
   layouts (the same every iteration, `rollouts_per_task` per task); then as many episodes of
   plan → act on fresh layouts; the filter keeps successful ones (by the environment's ground
   truth, or by the model's own yes/no on the final frame); the planner fine-tunes on every kept
   episode so far (seen-task demonstrations mixed in, so it keeps what it knew); the inverse
   dynamics model retrains on every transition so far.
Then the last planner is measured on the same layouts: `success_by_iteration` has I + 1 entries,
the first before any self-improvement, each on the same episodes' starts.

Checkpoints (checkpoints/step-<i>, after warm-up i = 0 and after each iteration's fine-tune) hold
the planner; inverse_dynamics/step-<i>, experience/iteration-<i>.safetensors and sail_state.json
beside them hold the rest, so a run resumes at the iteration it stopped in.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from modalities.robot.env import RobotEnv, Task
from unirl.atomic import atomic_file, atomic_write_text
from unirl.engine.checkpoint import link_checkpoint
from unirl.engine.distributed import Processes, init_processes
from unirl.engine.metrics import MetricsLogger, rounded
from unirl.engine.policy import PolicyConfig, autocast, build_policy, restore, save
from unirl.errors import UnirlError
from unirl.models import UnifiedModel
from unirl.models.inverse_dynamics import InverseDynamics, InverseDynamicsConfig, as_float, as_uint8, fit
from unirl.progress import progress

# What recipe.json records beside the task names: the options two runs can differ in and differ in result.
RECIPE_FIELDS = ("model", "env", "seed", "filter", "guidance", "temperature", "horizon", "rollouts_per_task",
                 "iterations", "warmup_from", "where_hint", "hindsight_hints", "changed_weight", "changed_radius",
                 "balance_tasks", "own_fraction", "learning_rate", "finetune_steps", "demo_episodes",
                 "planner_warmup_steps")
# What sail_summary.json repeats of them beside the results: enough to tell two summaries' runs apart.
SUMMARY_FIELDS = ("filter", "model", "env", "seed", "rollouts_per_task", "guidance", "temperature", "horizon")


@dataclass
class Config(PolicyConfig):
    """SAIL's loop. `learning_rate` is the per-iteration fine-tune's; the policy and LoRA fields are
    `PolicyConfig`'s (`group_size`, `max_steps`, `save_every` and the LR ramp `warmup_steps` are
    not used: the loop's units are iterations, and every iteration ends with a checkpoint; any
    non-zero `sample_every` writes each iteration's first episodes to samples/step-<k>)."""

    recipe: str = "sail"
    env: str = "tabletop"
    """tabletop (the project's toy, runs on a CPU) or metaworld (needs `pip install metaworld`)."""
    seen_tasks: str = "train"
    """Tasks of the warm-up's demonstrations: a tabletop split (train, heldout, halves, corners) or MetaWorld task
    names, comma-separated."""
    unseen_tasks: str = "heldout"
    """Tasks the loop improves on and reports: never in the warm-up."""
    horizon: int = 6
    iterations: int = 3
    """I: rounds of act → filter → fine-tune; success is measured I + 1 times. 0 runs the warm-up
    alone and measures it once: pretraining a planner to start other runs from (`model:` its
    checkpoint, `planner_warmup_steps: 0`)."""
    rollouts_per_task: int = 12
    filter: str = "ground_truth"
    """Which episodes the planner learns from: ground_truth (the environment's success flag) or
    self (the model's own yes/no to the task's question about the final frame). expert is not
    SAIL but its ceiling: the scripted expert (with `demo_noise`) plays the learning episodes in
    the planner's place and its successes are kept, so a run measures what the fine-tune can
    make of the best experience the loop could collect."""
    guidance: float = 1.0
    """Classifier-free guidance of planned frames (text against the current frame alone)."""
    where_hint: bool = False
    """Before drawing, the planner asks itself where the goal is relative to the robot (the task's
    `locate` question, answered by its understanding path on frame t) and reads its own answer
    after the task: "move the robot to the red star, left of the robot". The answers the
    planner read in kept episodes are trained beside its frames (the judge's rows), so the loop
    also improves the answers that steer it."""
    where_temperature: float = 0.0
    """With `where_hint`, the loop's learning episodes sample the planner's answers at this
    temperature (0: greedy, as every measurement is): an answer it would not give greedily gets
    tried, and where it led to a success its where row teaches it."""
    hindsight_hints: bool = False
    """With `where_hint`, rewrite each kept transition's hint as the way the robot then moved (its
    action's larger axis): the planner then learns from texts its moves agree with, and the where
    rows from where a successful episode's robot went, not from what it was told."""
    hindsight_to_end: bool = False
    """With `hindsight_hints`, the hint is the way the robot went from that frame to the episode's
    end (its summed moves' larger axis): in a success, about where the goal was, which one move
    (often a diagonal) says less well."""
    where_labels: str = "self"
    """With `where_hint`, what the warm-up's demonstrations read and its where rows teach: self
    (the model's own answers) or truth (the environment's relation; scripted demonstrations on
    seen tasks know it, as they know the expert's moves). The loop always reads the model's own."""
    hindsight_demos: bool = False
    """With `where_hint`, the warm-up's demonstrations are read by the planner with the way the
    robot then moved as their hint (what `hindsight_hints` does to kept episodes), so it learns to
    draw the move its hint names, even where a noisy or detouring expert did something else; the
    where rows still teach the `where_labels` answers."""
    vision_context: bool = False
    """Also show frame t to the planner through the vision tower (the understanding path, which
    already knows where each named object is), before the task text; frame t's image tokens
    follow the text either way (what the next frame copies)."""
    cfg_dropout: float = 0.1
    """Fraction of planner training rows that drop the task text (what guidance contrasts with)."""
    demo_episodes: int = 1500
    demo_noise: float = 0.2
    """Probability that the scripted expert takes a random command instead (varied demonstrations)."""
    counterfactual_demos: bool = False
    """Also play every demonstration's layout with another seen-task object on the table as the
    goal: the same first frame under two task texts leads to two different next frames, so the
    planner cannot succeed without reading which object the task names."""
    explore_episodes: int = 128
    """Random-command episodes for the inverse dynamics model (every kind of move, blocked ones too)."""
    planner_warmup_steps: int = 800
    """0 keeps the planner as loaded (one already pretrained on the seen tasks); the warm-up still
    collects the demonstrations, the judge's rows and the inverse dynamics model."""
    warmup_lr: float = 1e-3
    """The warm-up teaches a new skill (frame in, frame out) and needs a larger step than fine-tuning."""
    warmup_lr_end: float | None = None
    """Where the warm-up's LR ends, decaying linearly from `warmup_lr` (None: constant)."""
    finetune_steps: int = 100
    batch_size: int = 32
    changed_weight: float = 0.0
    """Extra weight, in the next-frame NLL, of the tokens that differ from frame t's (what moved)."""
    changed_radius: int = 0
    """Give `changed_weight` also to the tokens within this many grid cells of a changed one: where
    the robot could have gone and did not, which is where a wrong plan is drawn."""
    own_fraction: float = 0.5
    """Share of each fine-tune batch drawn from kept unseen-task episodes (the rest: seen-task demonstrations)."""
    balance_tasks: bool = False
    """Draw the kept transitions evenly over their tasks: a task the planner rarely succeeds at is
    learned from as often as one it mostly succeeds at."""
    judge_batch_size: int = 16
    judge_weight: float = 1.0
    """Weight of the self-judge's yes/no NLL on seen-task frames, trained beside the planner."""
    warmup_from: str | None = None
    """A SAIL run directory whose warm-up to reuse instead of running one (its checkpoints/step-0,
    inverse_dynamics/step-0 and experience/ are copied in): runs that differ only after the
    warm-up, such as the two filters on one seed, then share it exactly."""
    idm: InverseDynamicsConfig = field(default_factory=InverseDynamicsConfig)
    idm_warmup_steps: int = 600
    idm_steps: int = 200
    idm_lr: float = 1e-3


# ----------------------------------------------------------------------------- experience
@dataclass
class Experience:
    """Transitions (frame t → frame t+1 under an action) with their episode's outcome. Frames are
    stored as uint8 (the inverse dynamics model's input) and as image tokens (the planner's)."""

    frames: torch.Tensor  # uint8 [N,3,H,W]
    next_frames: torch.Tensor  # uint8 [N,3,H,W]
    tokens: torch.Tensor  # long [N,T]
    next_tokens: torch.Tensor  # long [N,T]
    actions: torch.Tensor  # float [N,A]
    task: list[str]  # [N] task text
    success: torch.Tensor  # bool [N]: the episode succeeded (ground truth)
    kept: torch.Tensor  # bool [N]: the filter kept the episode

    TENSORS = ("frames", "next_frames", "tokens", "next_tokens", "actions", "success", "kept")

    def __len__(self) -> int:
        return len(self.task)

    def select(self, index: torch.Tensor) -> Experience:
        index = torch.as_tensor(index, dtype=torch.long)
        return Experience(*(getattr(self, k)[index] for k in self.TENSORS[:5]), [self.task[i] for i in index.tolist()],
                          self.success[index], self.kept[index])

    @staticmethod
    def cat(parts: list[Experience]) -> Experience:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise UnirlError("experience: nothing collected")
        tensors = {k: torch.cat([getattr(p, k) for p in parts]) for k in Experience.TENSORS}
        return Experience(**tensors, task=[t for p in parts for t in p.task])

    def save(self, path: Path) -> None:
        with atomic_file(path) as tmp:
            save_file({k: getattr(self, k).contiguous() for k in self.TENSORS}, str(tmp),
                      metadata={"task": json.dumps(self.task)})

    @staticmethod
    def load(path: Path) -> Experience:
        tensors, meta = _read(path)
        return Experience(**tensors, task=json.loads(meta["task"]))


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and metadata; a missing or unreadable one is a one-line error."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (OSError, RuntimeError, ValueError) as e:
        raise UnirlError(f"{path}: cannot read the saved experience ({e}); rerun without --resume") from None


@dataclass
class Episodes:
    """What a batch of episodes left: their transitions, outcomes and final frames."""

    experience: Experience
    episode: torch.Tensor  # long [N]: each transition's episode
    success: torch.Tensor  # bool [E]
    first_frames: torch.Tensor  # float [E,3,H,W]
    final_frames: torch.Tensor  # float [E,3,H,W]
    tasks: list[Task]

    @staticmethod
    def cat(parts: list[Episodes]) -> Episodes:
        offsets = np.cumsum([0] + [len(p.tasks) for p in parts[:-1]])
        return Episodes(Experience.cat([p.experience for p in parts]),
                        torch.cat([p.episode + int(o) for p, o in zip(parts, offsets)]),
                        *(torch.cat([getattr(p, k) for p in parts])
                          for k in ("success", "first_frames", "final_frames")),
                        [t for p in parts for t in p.tasks])

    def keep(self, kept: torch.Tensor) -> Experience:
        """The transitions, marked kept where their episode is."""
        self.experience.kept = kept.bool().cpu()[self.episode]
        return self.experience


def run_episodes(env: RobotEnv, model: UnifiedModel, tasks: list[Task], seed: int,
                 policy: Policy, retarget: list[Task] | None = None, describe: Describe | None = None) -> Episodes:
    """One episode per task, all stepped together: `policy(frames, tokens, active, t, texts)` gives
    the actions [E,A] of step t, `texts` being what the planner reads for each active episode
    (`describe(frames, tasks)`, once per step; the task text by default). Transitions are recorded
    with those texts while their episode runs. With `retarget`, each layout's goal becomes another
    object on the table whose task is in that list."""
    obs = first = env.reset(tasks, seed)
    if retarget is not None:
        tasks = env.retarget(retarget)
    tokens = model.encode_images(obs)
    done = torch.zeros(len(tasks), dtype=torch.bool)
    parts, episode_of = [], []
    success = torch.zeros(len(tasks), dtype=torch.bool)
    for t in range(env.horizon):
        idx = (~done).nonzero().squeeze(-1)
        texts = (describe or task_texts)(obs[idx.to(obs.device)], [tasks[i] for i in idx.tolist()])
        actions = policy(obs, tokens, ~done, t, texts).cpu().float()
        step = env.step(actions)
        next_tokens = model.encode_images(step.observation)
        parts.append(Experience(as_uint8(obs[idx].cpu()), as_uint8(step.observation[idx].cpu()), tokens[idx].cpu(),
                                next_tokens[idx].cpu(), actions[idx], texts,
                                torch.zeros(len(idx), dtype=torch.bool), torch.zeros(len(idx), dtype=torch.bool)))
        episode_of.append(idx)
        success = step.info["success"].bool().cpu()
        done |= (step.terminated | step.truncated).cpu()
        obs, tokens = step.observation, next_tokens
        if done.all():
            break
    experience, episode = Experience.cat(parts), torch.cat(episode_of)
    experience.success = success[episode]
    return Episodes(experience, episode, success, first.float().cpu(), obs.float().cpu(), tasks)


# ----------------------------------------------------------------------------- policies
Describe = Callable[[torch.Tensor, list[Task]], list[str]]
Policy = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, list[str]], torch.Tensor]


def task_texts(frames: torch.Tensor, tasks: list[Task]) -> list[str]:
    return [t.text for t in tasks]


def hinted(task_text: str, answer: str) -> str:
    return f"{task_text}, {answer} the robot"


def unhinted(text: str) -> str:
    """The task text inside a `hinted` text; a text without a hint as it is."""
    return text.rpartition(", ")[0] if text.endswith(" the robot") and ", " in text else text


def hint_in(text: str, task_text: str) -> str:
    """The answer inside a `hinted` text."""
    return text[len(task_text) + 2:-len(" the robot")]


def moved_words(actions: torch.Tensor) -> list[str | None]:
    """The hint word for each action [N,2]: its larger axis's direction (x right, y down), None
    when it moves along neither (|a| <= 0.5: the table-top's dead zone)."""
    ax, ay = actions[:, 0].tolist(), actions[:, 1].tolist()
    words = []
    for x, y in zip(ax, ay):
        if max(abs(x), abs(y)) <= 0.5:
            words.append(None)
        elif abs(x) >= abs(y):
            words.append("left of" if x < 0 else "right of")
        else:
            words.append("above" if y < 0 else "below")
    return words


def moves_to_end(actions: torch.Tensor, episode: torch.Tensor) -> torch.Tensor:
    """Each transition's commanded cell moves [N,2] (rounded, as the table-top applies them) summed
    from it to its episode's end: where the robot went from there. Transitions are in step order."""
    moves = actions.float().clamp(-1, 1).round()
    order = torch.arange(len(moves))
    from_here = (episode[None, :] == episode[:, None]) & (order[None, :] >= order[:, None])  # [N,N]
    return from_here.float() @ moves


def relabel_hints(episodes: Episodes, to_end: bool = False) -> None:
    """`hindsight_hints`: each kept transition's hinted text, with the way it moved as the hint
    (`to_end`: the way it went from there to the episode's end)."""
    actions = episodes.experience.actions
    words = moved_words(moves_to_end(actions, episodes.episode) if to_end else actions)
    for i, (e, kept, word) in enumerate(zip(episodes.episode.tolist(), episodes.experience.kept.tolist(), words)):
        if kept and word is not None:
            episodes.experience.task[i] = hinted(episodes.tasks[e].text, word)


def planner_texts(model: UnifiedModel, config: Config, truth: RobotEnv | None = None, batch: int = 256,
                  temperature: float = 0.0, seed: int = 0) -> Describe:
    """What the planner reads with each frame: the task, and with `where_hint` its own answer to
    the task's `locate` question about that frame (greedy, or sampled at `temperature` with a seed
    that changes every call; one batched pass per `batch` frames), or with `truth` the
    environment's relation (the first in alphabetical order on a diagonal)."""
    if not config.where_hint:
        return task_texts
    calls = itertools.count()

    def describe(frames: torch.Tensor, tasks: list[Task]) -> list[str]:
        if truth is not None:
            answers = [min(r) for r in truth.goal_relations()]
        else:
            answers = where_answers(model, frames, tasks, config, batch, temperature, seed + 7919 * next(calls))
        return [hinted(t.text, a) for t, a in zip(tasks, answers)]

    return describe


@torch.no_grad()
def where_answers(model: UnifiedModel, frames: torch.Tensor, tasks: list[Task], config: Config,
                  batch: int = 256, temperature: float = 0.0, seed: int = 0) -> list[str]:
    """The model's answers to each task's `locate` question about its frame (greedy at temperature 0)."""
    if any(not t.locate for t in tasks):
        raise UnirlError(f"where_hint: task {next(t.name for t in tasks if not t.locate)!r} has no locate question")
    answers: list[str] = []
    for i in range(0, len(tasks), batch):
        with autocast(config, model):
            answers += model.sample_answers(as_float(frames[i:i + batch]).to(model.device),
                                            [t.locate for t in tasks[i:i + batch]], temperature=temperature,
                                            seed=seed + i, max_new_tokens=4).texts
    return [a.strip() for a in answers]


def planner_policy(model: UnifiedModel, idm: InverseDynamics, env: RobotEnv, seed: int, config: Config,
                   plans: list[torch.Tensor] | None = None):
    """SAIL's act: the planner imagines frame t+1 from frame t and its text; the inverse dynamics
    model reads the action off (frame t, imagined frame). `plans` collects the imagined frames."""

    @torch.no_grad()
    def act(obs: torch.Tensor, tokens: torch.Tensor, active: torch.Tensor, t: int, texts: list[str]) -> torch.Tensor:
        idx = active.nonzero().squeeze(-1)
        with autocast(config, model):
            rollout = model.generate_images(texts, guidance=config.guidance,
                                            temperature=config.temperature, seed=seed + 7919 * t,
                                            context_tokens=tokens[idx.to(tokens.device)],
                                            context_images=obs[idx.to(obs.device)] if config.vision_context else None)
        actions = torch.zeros(len(active), env.action_dim)
        actions[idx] = idm(obs[idx.to(obs.device)].to(model.device), rollout.images).float().cpu()
        if plans is not None:
            plans.append(torch.zeros_like(obs).index_copy_(0, idx.to(obs.device), rollout.images.to(obs)).cpu())
        return actions

    return act


def scripted_policy(env: RobotEnv, seed: int, noise: float):
    """The environment's expert, a random command with probability `noise` (1: random episodes)."""
    rng = np.random.default_rng(seed)

    def act(obs: torch.Tensor, tokens: torch.Tensor, active: torch.Tensor, t: int, texts: list[str]) -> torch.Tensor:
        if noise >= 1.0:
            return torch.tensor(rng.uniform(-1, 1, size=(len(active), env.action_dim)), dtype=torch.float32)
        return env.expert_actions(rng, noise)

    return act


# ----------------------------------------------------------------------------- the self-judge
@dataclass
class JudgeSet:
    """Yes/no examples for the self-judge, from seen-task demonstrations."""

    frames: torch.Tensor  # uint8 [M,3,H,W]
    questions: list[str]
    answers: list[str]

    def __len__(self) -> int:
        return len(self.questions)

    def select(self, index: torch.Tensor) -> JudgeSet:
        index = index.tolist()
        return JudgeSet(self.frames[index], [self.questions[i] for i in index], [self.answers[i] for i in index])

    @staticmethod
    def cat(parts: list[JudgeSet]) -> JudgeSet:
        return JudgeSet(torch.cat([p.frames for p in parts]), [q for p in parts for q in p.questions],
                        [a for p in parts for a in p.answers])

    def save(self, path: Path) -> None:
        with atomic_file(path) as tmp:
            save_file({"frames": self.frames.contiguous()}, str(tmp),
                      metadata={"questions": json.dumps(self.questions), "answers": json.dumps(self.answers)})

    @staticmethod
    def load(path: Path) -> JudgeSet:
        frames, meta = _read(path)
        return JudgeSet(frames["frames"], json.loads(meta["questions"]), json.loads(meta["answers"]))


def judge_set(demos: Episodes, seed: int) -> JudgeSet:
    """The final frame with its own task's question (yes on success), the first frame with it
    (no: the robot has not moved yet), and a successful final frame with another task's question
    (no); the no's subsampled to as many as the yes's."""
    rng = np.random.default_rng(seed)
    n = len(demos.tasks)
    other = [demos.tasks[(i + int(rng.integers(1, n))) % n] for i in range(n)] if n > 1 else demos.tasks
    success = demos.success.tolist()
    yes = [(demos.final_frames[i], demos.tasks[i].question, "yes") for i in range(n) if success[i]]
    no = ([(demos.final_frames[i], demos.tasks[i].question, "no") for i in range(n) if not success[i]]
          + [(demos.first_frames[i], demos.tasks[i].question, "no") for i in range(n)]
          + [(demos.final_frames[i], other[i].question, "no") for i in range(n)
             if success[i] and other[i].text != demos.tasks[i].text])
    no = [no[i] for i in rng.permutation(len(no))[:max(len(yes), 1)]]
    rows = yes + no
    return JudgeSet(as_uint8(torch.stack([r[0] for r in rows])), [r[1] for r in rows], [r[2] for r in rows])


def where_rows(episodes: Episodes, kept: torch.Tensor) -> JudgeSet:
    """The kept episodes' frames with their task's `locate` question and the answer the planner
    read there (from its hinted text)."""
    index = kept.bool().cpu()[episodes.episode].nonzero().squeeze(-1).tolist()
    tasks = [episodes.tasks[e] for e in episodes.episode[index].tolist()]
    texts = [episodes.experience.task[i] for i in index]
    return JudgeSet(episodes.experience.frames[index], [t.locate for t in tasks],
                    [hint_in(x, t.text) for x, t in zip(texts, tasks)])


@torch.no_grad()
def where_accuracy(model: UnifiedModel, env: RobotEnv, tasks: list[Task], seed: int, config: Config) -> float:
    """How often the model's answer to the `locate` question about each layout's first frame is
    true (a measurement only: the loop never reads the truth)."""
    frames = env.reset(tasks, seed)
    truth = env.goal_relations()
    answers = where_answers(model, frames, tasks, config)
    return float(np.mean([a in r for a, r in zip(answers, truth)]))


@torch.no_grad()
def self_judge(model: UnifiedModel, frames: torch.Tensor, tasks: list[Task], config: Config,
               batch: int = 64) -> torch.Tensor:
    """The model's verdict on each final frame: p(yes) > p(no) to the task's question. [E] bool"""
    verdicts = []
    for i in range(0, len(tasks), batch):
        with autocast(config, model):
            p_yes, p_no = model.yes_no(frames[i:i + batch].to(model.device), [t.question for t in tasks[i:i + batch]])
        verdicts.append((p_yes > p_no).cpu())
    return torch.cat(verdicts)


# ----------------------------------------------------------------------------- learning
def train_planner(model: UnifiedModel, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                  steps: int, lr: float, demos: Experience, own: Experience | None, judges: JudgeSet,
                  config: Config, seed: int, desc: str, own_judges: JudgeSet | None = None,
                  lr_end: float | None = None) -> dict[str, float]:
    """Next-frame NLL on (task, frame t) → frame t+1 batches (a share `own_fraction` from the
    kept own episodes when there are any, the rest from seen-task demonstrations; `cfg_dropout`
    of the rows without their task text), plus `judge_weight` × the NLL of the judge's rows (the
    same share from `own_judges`, the kept episodes' where rows, when there are any). The LR goes
    linearly from `lr` to `lr_end` (constant without it)."""
    generator = torch.Generator().manual_seed(seed)
    n_own = round(config.batch_size * config.own_fraction) if own is not None and len(own) else 0
    own_weights = task_balanced_weights(own.task) if n_own and config.balance_tasks else None
    has_own_judges = own_judges is not None and len(own_judges) > 0
    n_own_judges = round(config.judge_batch_size * config.own_fraction) if has_own_judges else 0
    losses, judge_losses = [], []
    for step in progress(range(steps), desc=desc, leave=False):
        for group in optimizer.param_groups:
            group["lr"] = lr if lr_end is None else lr + (lr_end - lr) * step / max(1, steps - 1)
        parts = [demos.select(torch.randint(len(demos), (config.batch_size - n_own,), generator=generator))]
        if n_own:
            parts.append(own.select(torch.randint(len(own), (n_own,), generator=generator) if own_weights is None
                                    else torch.multinomial(own_weights, n_own, replacement=True, generator=generator)))
        batch = Experience.cat(parts)
        unconditional = torch.rand(len(batch), generator=generator) < config.cfg_dropout
        with autocast(config, model):
            logprobs = model.image_token_logprobs(
                batch.task, batch.next_tokens, guidance=1.0, unconditional=unconditional, context_tokens=batch.tokens,
                context_images=as_float(batch.frames).to(model.device) if config.vision_context else None)
        # Most of a next frame repeats frame t; what moved is the few tokens that differ, and the
        # plan is in them: `changed_weight` counts each of those that many times more.
        weights = 1.0 + config.changed_weight * changed_mask(batch.tokens, batch.next_tokens,
                                                             config.changed_radius).to(logprobs.device)
        loss = -(weights * logprobs.float()).sum() / weights.sum()
        losses.append(loss.item())
        if config.judge_weight > 0:
            rows = [judges.select(torch.randint(len(judges), (config.judge_batch_size - n_own_judges,),
                                                generator=generator))]
            if n_own_judges:
                rows.append(own_judges.select(torch.randint(len(own_judges), (n_own_judges,), generator=generator)))
            rows = JudgeSet.cat(rows)
            with autocast(config, model):
                judge_logprobs = model.answer_logprobs(as_float(rows.frames).to(model.device), rows.questions,
                                                       rows.answers)
            judge_loss = -judge_logprobs.float().mean()
            judge_losses.append(judge_loss.item())
            loss = loss + config.judge_weight * judge_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tail = max(1, steps // 5)  # the last fifth: where the fine-tune ended, not where it began
    metrics = {"planner/loss": float(np.mean(losses[-tail:]))}
    if judge_losses:
        metrics["judge/loss"] = float(np.mean(judge_losses[-tail:]))
    return metrics


def task_balanced_weights(texts: list[str]) -> torch.Tensor:
    """[N] sampling weights, 1 / (rows of the same task): every task drawn equally often, whatever
    hint its rows read."""
    tasks = [unhinted(t) for t in texts]
    counts = Counter(tasks)
    return torch.tensor([1.0 / counts[t] for t in tasks])


def changed_mask(tokens: torch.Tensor, next_tokens: torch.Tensor, radius: int = 0) -> torch.Tensor:
    """[N,T] float: 1 where a token differs from frame t's, or lies within `radius` cells of one
    on the square token grid."""
    changed = (next_tokens != tokens).float()
    if radius == 0:
        return changed
    side = int(round(changed.shape[1] ** 0.5))
    if side * side != changed.shape[1]:
        raise UnirlError(f"changed_radius: needs a square grid of image tokens, got {changed.shape[1]} tokens")
    grid = changed.view(-1, 1, side, side)
    return torch.nn.functional.max_pool2d(grid, 2 * radius + 1, stride=1, padding=radius).view_as(changed)


def train_idm(idm: InverseDynamics, experience: Experience, steps: int, config: Config, seed: int) -> dict[str, float]:
    """Retrain the inverse dynamics model on every transition so far; report its fit."""
    losses = fit(idm, experience.frames, experience.next_frames, experience.actions, steps,
                 batch_size=64, lr=config.idm_lr, seed=seed)
    return {"idm/loss": float(np.mean(losses[-max(1, steps // 5):]))}


# ----------------------------------------------------------------------------- the loop
FILTERS = ("ground_truth", "self", "expert")
WHERE_LABELS = ("self", "truth")
WARMUP_FILES = ("demos.safetensors", "explore.safetensors", "judge.safetensors")


def run_warmup(model: UnifiedModel, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
               env: RobotEnv, seen: list[Task], store: Path, config: Config, log: MetricsLogger) -> InverseDynamics:
    """Step 0 on the seen tasks: demonstrations for the planner and the judge, every transition
    (random-command episodes too) for the inverse dynamics model. Returns the trained IDM."""
    t0 = time.time()
    base_seed = config.seed * 1_000_003
    demo_tasks = [seen[i % len(seen)] for i in range(config.demo_episodes)]
    describe = planner_texts(model, config, truth=env if config.where_labels == "truth" else None)
    demos = run_episodes(env, model, demo_tasks, base_seed + 2**32, scripted_policy(env, base_seed, config.demo_noise),
                         describe=describe)
    if config.counterfactual_demos:  # the same layouts (same tasks, same seed), other goals
        twins = run_episodes(env, model, demo_tasks, base_seed + 2**32,
                             scripted_policy(env, base_seed + 2, config.demo_noise), retarget=seen, describe=describe)
        demos = Episodes.cat([demos, twins])
    explore_tasks = [seen[i % len(seen)] for i in range(config.explore_episodes)]
    explore = run_episodes(env, model, explore_tasks, base_seed + 2**33, scripted_policy(env, base_seed + 1, 1.0))
    judges = judge_set(demos, base_seed)
    if config.where_hint:  # keep the answers the hints come from: the planner's training would overwrite them
        where = where_rows(demos, torch.ones(len(demos.tasks), dtype=torch.bool))
        pick = torch.randperm(len(where), generator=torch.Generator().manual_seed(base_seed))[:len(judges)]
        judges = JudgeSet.cat([judges, where.select(pick)])
    demo_experience = demos.keep(demos.success)
    if config.where_hint and config.hindsight_demos:
        relabel_hints(demos)
    demo_experience.save(store / "demos.safetensors")
    explore.keep(torch.zeros(len(explore.tasks), dtype=torch.bool)).save(store / "explore.safetensors")
    judges.save(store / "judge.safetensors")
    idm = InverseDynamics(config.idm).to(model.device)
    idm_metrics = train_idm(idm, Experience.cat([demo_experience, explore.experience]), config.idm_warmup_steps,
                            config, base_seed)
    kept_demos = demo_experience.select(demo_experience.kept.nonzero().squeeze(-1))
    planner_metrics = train_planner(model, params, optimizer, config.planner_warmup_steps, config.warmup_lr,
                                    kept_demos, None, judges, config, base_seed, "warm-up",
                                    lr_end=config.warmup_lr_end) if config.planner_warmup_steps > 0 else {}
    log.log(0, rounded({"demo/success": demos.success.float().mean().item(), "demo/transitions": len(demos.experience),
                        **{f"warmup/{k}": v for k, v in (idm_metrics | planner_metrics).items()},
                        "time/warmup": time.time() - t0}))
    return idm


def reuse_warmup(source: Path, run_dir: Path, log: MetricsLogger) -> InverseDynamics:
    """`warmup_from`: the source run's experience, IDM and step-0 metrics line, copied in (the
    planner and optimiser state were loaded from its step-0 checkpoint)."""
    import shutil

    for name in WARMUP_FILES:
        if not (source / "experience" / name).is_file():
            raise UnirlError(f"warmup_from: {source / 'experience' / name} missing (did its warm-up finish?)")
        with atomic_file(run_dir / "experience" / name) as tmp:
            shutil.copyfile(source / "experience" / name, tmp)
    idm = InverseDynamics.load(source / "inverse_dynamics" / "step-0")
    idm.save(run_dir / "inverse_dynamics" / "step-0")
    first = next((json.loads(line) for line in (source / "metrics.jsonl").read_text().splitlines()
                  if line.strip() and json.loads(line).get("step") == 0), None)
    if first is not None:
        log.log(0, {k: v for k, v in first.items() if k not in ("step", "time")} | {"warmup_from": str(source)})
    return idm


def write_samples(run_dir: Path, step: int, episodes: Episodes, plans: list[torch.Tensor], verdicts: torch.Tensor,
                  limit: int = 4) -> None:
    """samples/step-<n>/: the first episodes' frames as they happened (f<e>-<t>.png) and as the
    planner imagined each next one (p<e>-<t>.png), with the task, outcome and self-judge verdict."""
    from modalities.image.io import save_images
    from unirl.atomic import atomic_dir

    with atomic_dir(run_dir / "samples" / f"step-{step}", overwrite=True) as tmp:
        rows = []
        for e in range(min(limit, len(episodes.tasks))):
            seen = episodes.experience.frames[episodes.episode == e]
            frames = [as_float(f) for f in seen] + [episodes.final_frames[e]]
            names = [f"f{e}-{t}.png" for t in range(len(frames))]
            plan_names = [f"p{e}-{t + 1}.png" for t in range(len(frames) - 1)]
            save_images(torch.stack(frames), [tmp / n for n in names])
            save_images(torch.stack([plans[t][e] for t in range(len(plan_names))]), [tmp / n for n in plan_names])
            rows.append({"task": episodes.tasks[e].text, "frames": names, "plans": plan_names,
                         "success": bool(episodes.success[e]), "judged_success": bool(verdicts[e])})
        (tmp / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def success_metrics(episodes: Episodes, verdicts: torch.Tensor) -> dict[str, float]:
    success = episodes.success.float()
    metrics = {"success/unseen": success.mean().item()}
    for task in dict.fromkeys(t.name for t in episodes.tasks):
        mine = torch.tensor([t.name == task for t in episodes.tasks])
        metrics[f"success/{task}"] = success[mine].mean().item()
    truth = episodes.success
    metrics["judge/accuracy"] = (verdicts == truth).float().mean().item()
    metrics["judge/precision"] = truth[verdicts].float().mean().item() if verdicts.any() else float("nan")
    metrics["judge/recall"] = verdicts[truth].float().mean().item() if truth.any() else float("nan")
    return metrics


def train(config: Config, run_dir: str | Path, resume_from: Path | None = None,
          processes: Processes | None = None) -> Path:
    """Run the loop, writing into `run_dir`; return the final planner checkpoint."""
    from modalities.robot import make_env, make_tasks

    run_dir = Path(run_dir)
    processes = processes or init_processes(config.device)
    if processes.world > 1:
        raise UnirlError("sail: one process for now (run without accelerate launch)")
    if config.filter not in FILTERS:
        raise UnirlError(f"filter: expected one of {list(FILTERS)}, got {config.filter!r}")
    if config.where_labels not in WHERE_LABELS:
        raise UnirlError(f"where_labels: expected one of {list(WHERE_LABELS)}, got {config.where_labels!r}")
    if config.changed_radius < 0:
        raise UnirlError(f"changed_radius: expected 0 or more grid cells, got {config.changed_radius}")
    if config.iterations < 0:
        raise UnirlError(f"iterations: expected 0 (the warm-up alone) or more, got {config.iterations}")
    torch.manual_seed(config.seed)
    warmup = Path(config.warmup_from) / "checkpoints" / "step-0" if config.warmup_from and resume_from is None else None
    if warmup is not None and not warmup.is_dir():
        raise UnirlError(f"warmup_from: {warmup} not found (a SAIL run directory that finished its warm-up)")
    model, params, _ = build_policy(config, resume_from or warmup)
    if not model.image_context:
        raise UnirlError(f"{config.model}: the {model.backend} backend cannot generate an image from an image yet "
                         "(SAIL's planner needs it; the janus backend can)")
    env = make_env(config.env, config.horizon, model.generation_image_size, model.device)
    seen, unseen = make_tasks(config.env, config.seen_tasks), make_tasks(config.env, config.unseen_tasks)
    if {t.text for t in seen} & {t.text for t in unseen}:
        raise UnirlError("seen_tasks and unseen_tasks: share tasks; the unseen ones must stay out of the warm-up")
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    start = restore(resume_from or warmup, model, optimizer) if resume_from or warmup else 0
    log = MetricsLogger(run_dir, resume_step=start if resume_from else -1, tensorboard=False)
    store = run_dir / "experience"
    store.mkdir(parents=True, exist_ok=True)
    state_file = run_dir / "sail_state.json"
    base_seed = config.seed * 1_000_003

    if resume_from is None:
        recipe = {"seen_tasks": [t.name for t in seen], "unseen_tasks": [t.name for t in unseen],
                  **{name: getattr(config, name) for name in RECIPE_FIELDS}}
        atomic_write_text(run_dir / "recipe.json", json.dumps(recipe, indent=1) + "\n")
        if warmup is not None:
            idm = reuse_warmup(Path(config.warmup_from), run_dir, log).to(model.device)
        else:
            idm = run_warmup(model, params, optimizer, env, seen, store, config, log)
            idm.save(run_dir / "inverse_dynamics" / "step-0")
        atomic_write_text(state_file, json.dumps({"success_by_iteration": []}) + "\n")
        save(run_dir, 0, model, optimizer, config)
    else:
        idm = InverseDynamics.load(run_dir / "inverse_dynamics" / f"step-{start}").to(model.device)
    demos_all = Experience.load(store / "demos.safetensors")
    kept_demos = demos_all.select(demos_all.kept.nonzero().squeeze(-1))
    all_transitions = [demos_all, Experience.load(store / "explore.safetensors")]
    judges = JudgeSet.load(store / "judge.safetensors")
    own = [Experience.load(store / f"iteration-{k}.safetensors") for k in range(1, start + 1)]
    own_where = [JudgeSet.load(store / f"where-{k}.safetensors") for k in range(1, start + 1) if config.where_hint]
    all_transitions += own
    state = json.loads(state_file.read_text())
    state = {k: v[:start] for k, v in state.items()}  # what a crash after the last checkpoint left is redone

    # 1..I. Measure, then act on the unseen tasks, filter, fine-tune; then measure the last planner.
    # Every measurement plays the same layouts with the same sampling seeds, so iterations differ
    # only in the planner and IDM; what the loop learns from is played on fresh layouts.
    rollout_tasks = [task for task in unseen for _ in range(config.rollouts_per_task)]
    eval_seed = base_seed + 104_729
    describe = planner_texts(model, config)
    bar = progress(range(start + 1, config.iterations + 2), desc="sail", initial=start, total=config.iterations + 1)
    for k in bar:
        t0 = time.time()
        plans: list[torch.Tensor] = []
        measured = run_episodes(env, model, rollout_tasks, eval_seed,
                                planner_policy(model, idm, env, eval_seed, config, plans),
                                describe=describe)
        verdicts = self_judge(model, measured.final_frames, measured.tasks, config)
        metrics = success_metrics(measured, verdicts)
        if config.where_hint:
            metrics["where/accuracy"] = where_accuracy(model, env, rollout_tasks, eval_seed, config)
            state.setdefault("where_accuracy_by_iteration", []).append(metrics["where/accuracy"])
        state.setdefault("success_by_iteration", []).append(metrics["success/unseen"])
        state.setdefault("judge_accuracy_by_iteration", []).append(metrics["judge/accuracy"])
        state.setdefault("success_by_task", []).append({t.name: metrics[f"success/{t.name}"] for t in unseen})
        bar.set_postfix(success=f"{metrics['success/unseen']:.3f}")
        if config.sample_every:
            write_samples(run_dir, k, measured, plans, verdicts)
        if k == config.iterations + 1:  # the last planner's measurement: nothing left to learn from it
            log.log(k, rounded(metrics | {"time/rollout": time.time() - t0}))
            break
        seed = base_seed + 7919 * k
        explore = planner_texts(model, config, temperature=config.where_temperature, seed=seed)
        act = (scripted_policy(env, seed, config.demo_noise) if config.filter == "expert"
               else planner_policy(model, idm, env, seed, config))
        episodes = run_episodes(env, model, rollout_tasks, seed, act, describe=explore)
        kept = episodes.success if config.filter != "self" else self_judge(
            model, episodes.final_frames, episodes.tasks, config)
        state.setdefault("kept_by_iteration", []).append(int(kept.sum()))
        metrics |= {"rollout/success": episodes.success.float().mean().item(), "kept": int(kept.sum()),
                    "time/rollout": time.time() - t0}
        experience = episodes.keep(kept)
        if config.where_hint and config.hindsight_hints:
            relabel_hints(episodes, to_end=config.hindsight_to_end)
        experience.save(store / f"iteration-{k}.safetensors")
        own.append(experience)
        all_transitions.append(experience)
        if config.where_hint:
            own_where.append(where_rows(episodes, kept))
            own_where[-1].save(store / f"where-{k}.safetensors")
        kept_own = Experience.cat(own)
        kept_own = kept_own.select(kept_own.kept.nonzero().squeeze(-1))
        t1 = time.time()
        metrics |= train_planner(model, params, optimizer, config.finetune_steps, config.learning_rate, kept_demos,
                                 kept_own, judges, config, seed, f"fine-tune {k}",
                                 JudgeSet.cat(own_where) if own_where else None)
        metrics |= train_idm(idm, Experience.cat(all_transitions), config.idm_steps, config, seed)
        metrics |= {"kept_transitions": len(kept_own), "time/learn": time.time() - t1}
        log.log(k, rounded(metrics))
        idm.save(run_dir / "inverse_dynamics" / f"step-{k}")
        atomic_write_text(state_file, json.dumps(state) + "\n")
        save(run_dir, k, model, optimizer, config)

    summary = {**state, "unseen_tasks": [t.name for t in unseen],
               **{name: getattr(config, name) for name in SUMMARY_FIELDS}}
    atomic_write_text(run_dir / "sail_summary.json", json.dumps(summary, indent=1) + "\n")
    final = link_checkpoint(run_dir / "checkpoints" / f"step-{config.iterations}", "final")
    env.close()
    log.close()
    return final
