"""MetaWorld tasks through the gymnasium adapter (`pip install metaworld`, which brings gymnasium
and MuJoCo from the registry).

Frames come from MuJoCo's offscreen renderer: on a machine without a display set MUJOCO_GL=egl
(GPU) or MUJOCO_GL=osmesa (CPU, `apt install libosmesa6`) before starting. Demonstrations for
the warm-up come from MetaWorld's own scripted policies (metaworld.policies), which read the
state observation rather than the frame."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import torch

from modalities.robot.env import GymnasiumEnv, Task
from unirl.errors import UnirlError

CAMERA = "corner"


def _require_metaworld() -> Any:
    try:
        import gymnasium
        import metaworld  # noqa: F401  (registers the Meta-World/ environments)
    except ImportError as e:
        raise UnirlError(f"env metaworld: {e} (needs `pip install metaworld`, which brings gymnasium and "
                         "MuJoCo; set MUJOCO_GL=egl or osmesa on a machine without a display)") from None
    return gymnasium


def _words(name: str) -> str:
    return re.sub(r"-v\d+$", "", name).replace("-", " ")


def metaworld_tasks(spec: str) -> list[Task]:
    """Comma-separated MetaWorld task names (reach-v3,push-v3,…) → tasks whose text is the name in words."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UnirlError(f"metaworld tasks: expected task names separated by commas, got {spec!r}")
    return [Task(name=n, text=f"the robot arm: {_words(n)}", question=f"Did the robot arm {_words(n)}?")
            for n in names]


class MetaWorldEnv(GymnasiumEnv):
    """One MT1 environment per episode, rendering from the `corner` camera."""

    def __init__(self, image_size: int, horizon: int):
        gymnasium = _require_metaworld()
        if "MUJOCO_GL" not in os.environ and "DISPLAY" not in os.environ:
            raise UnirlError("env metaworld: no display; set MUJOCO_GL=egl (GPU) or MUJOCO_GL=osmesa (CPU)")

        def make(task: Task) -> Any:
            return gymnasium.make("Meta-World/MT1", env_name=task.name, render_mode="rgb_array", camera_name=CAMERA)

        super().__init__(make, image_size, horizon)

    def expert_actions(self, rng: np.random.Generator, noise: float = 0.0) -> torch.Tensor:
        import metaworld.policies as policies

        actions = rng.uniform(-1, 1, size=(len(self.envs), self.action_dim))
        for i, state in enumerate(self.states):
            if self.done[i] or rng.random() < noise:
                continue
            name = "Sawyer" + "".join(w.capitalize() for w in re.split(r"[-]", self.tasks[i].name)) + "Policy"
            policy = getattr(policies, name, None)
            if policy is None:
                raise UnirlError(f"env metaworld: no scripted policy {name} for task {self.tasks[i].name!r}")
            actions[i] = np.clip(policy().get_action(state), -1, 1)
        return torch.tensor(actions, dtype=torch.float32)
