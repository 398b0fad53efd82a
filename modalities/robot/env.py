"""The environment interface SAIL drives: gymnasium's reset/step, batched over episodes.

`RobotEnv` runs N episodes side by side (one per task of a list) and returns image observations
[N,3,H,W] in [0,1], so the planner, the inverse dynamics model and the judge see one batch per
step. Episodes that ended keep returning their last frame and ignore further actions.
`GymnasiumEnv` wraps any gymnasium environments (one per episode) that render RGB frames and
report `info["success"]`, MetaWorld's among them."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unirl.errors import UnirlError


@dataclass
class Task:
    """One task variant: the text the planner and the judge read, and the variant's name."""

    name: str
    text: str  # "move the robot to the red star"
    question: str  # the self-judge's yes/no question about the final frame
    locate: str = ""  # where the goal is, asked of a frame ("Where is the red star relative to the circle?")


@dataclass
class Step:
    """What `RobotEnv.step` returns, gymnasium's five values batched (info holds "success" [N])."""

    observation: torch.Tensor  # [N,3,H,W] in [0,1]
    reward: torch.Tensor  # [N]
    terminated: torch.Tensor  # [N] bool: the episode ended on its own (success or failure)
    truncated: torch.Tensor  # [N] bool: the horizon ran out
    info: dict[str, Any]


class RobotEnv(abc.ABC):
    """N episodes at once. `action_dim` floats per action, each in [-1, 1]."""

    action_dim: int
    horizon: int

    @abc.abstractmethod
    def reset(self, tasks: list[Task], seed: int) -> torch.Tensor:
        """Start one episode per task (layouts drawn from `seed`); return the first frames [N,3,H,W]."""

    @abc.abstractmethod
    def step(self, actions: torch.Tensor) -> Step:
        """Apply actions [N, action_dim]; episodes already ended are left as they are."""

    def expert_actions(self, rng: np.random.Generator, noise: float = 0.0) -> torch.Tensor:
        """A scripted expert's actions [N, action_dim] for the running episodes (demonstrations)."""
        raise UnirlError(f"{type(self).__name__}: no scripted expert for demonstrations")

    def retarget(self, allowed: list[Task]) -> list[Task]:
        """Right after `reset`: give each episode another object already in its scene as the goal
        (one whose task is in `allowed`; episodes without one keep theirs), nothing moved, and
        return the new tasks. Counterfactual demonstrations: the same frame, another goal."""
        raise UnirlError(f"{type(self).__name__}: cannot retarget episodes (counterfactual demonstrations)")

    def goal_relations(self) -> list[set[str]]:
        """Where each running episode's goal is relative to the robot, in the understanding
        path's words ("left of", "right of", "above", "below"; two on an exact diagonal): the
        truth behind `where_hint`, for labelled demonstrations and for measuring the answers."""
        raise UnirlError(f"{type(self).__name__}: does not know where the goal is (where_labels: truth)")

    def close(self) -> None:  # noqa: B027 (most environments hold nothing to release)
        """Release what the episodes hold (simulators, renderers)."""


class GymnasiumEnv(RobotEnv):
    """Episodes of gymnasium environments, one environment per episode, made by
    `make(task) -> gymnasium.Env` (render_mode="rgb_array"). Frames come from `env.render()`,
    resized to `image_size`; success from `info["success"]` (MetaWorld's convention); actions
    are rescaled from [-1, 1] to the action space's bounds."""

    def __init__(self, make: Callable[[Task], Any], image_size: int, horizon: int):
        self.make, self.image_size, self.horizon = make, image_size, horizon
        self.envs: list[Any] = []

    def _frames(self) -> torch.Tensor:
        frames = [np.asarray(env.render()) for env in self.envs]
        if any(f.ndim != 3 or f.shape[-1] != 3 for f in frames):
            raise UnirlError("environment: render() must return RGB frames [H,W,3] (render_mode='rgb_array')")
        pixels = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
        return F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                             align_corners=False).clamp(0, 1)

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []

    def reset(self, tasks: list[Task], seed: int) -> torch.Tensor:
        self.close()
        self.tasks = tasks
        self.envs = [self.make(task) for task in tasks]
        spaces = [env.action_space for env in self.envs]
        self.action_dim = int(spaces[0].shape[0])
        self.low = torch.tensor(np.stack([s.low for s in spaces]), dtype=torch.float32)
        self.high = torch.tensor(np.stack([s.high for s in spaces]), dtype=torch.float32)
        # The state observations, for scripted experts that read them.
        self.states = [env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)]
        self.done = torch.zeros(len(tasks), dtype=torch.bool)
        self.success = torch.zeros(len(tasks), dtype=torch.bool)
        self.t = 0
        self.last = self._frames()
        return self.last

    def step(self, actions: torch.Tensor) -> Step:
        actions = actions.detach().float().cpu().clamp(-1, 1)
        scaled = self.low + (actions + 1) / 2 * (self.high - self.low)
        rewards = torch.zeros(len(self.envs))
        terminated = self.done.clone()
        for i, env in enumerate(self.envs):
            if self.done[i]:
                continue
            self.states[i], reward, term, _, info = env.step(scaled[i].numpy())
            rewards[i] = float(reward)
            self.success[i] |= bool(info.get("success", False))
            terminated[i] = bool(term) or bool(self.success[i])
        self.t += 1
        truncated = ~terminated & (self.t >= self.horizon)
        frames = self._frames()
        self.last = torch.where(self.done.view(-1, 1, 1, 1), self.last, frames)
        self.done = terminated | truncated
        return Step(self.last, rewards, terminated, truncated, {"success": self.success.clone()})
