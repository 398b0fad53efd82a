"""Robot environments for SAIL: a batched gymnasium-style interface (`env.RobotEnv`), the
project's own table-top toy (`tabletop`), and an adapter for gymnasium environments such as
MetaWorld's (`env.GymnasiumEnv`, `metaworld`)."""

from __future__ import annotations

import torch

from modalities.robot.env import RobotEnv, Task
from unirl.errors import UnirlError

ENVS = ("tabletop", "metaworld")


def make_env(name: str, horizon: int, image_size: int, device: torch.device | str = "cpu") -> RobotEnv:
    """An environment by name, rendering frames of `image_size` (the planner's image size)."""
    if name == "tabletop":
        from modalities.robot.tabletop import TableTop

        return TableTop(horizon=horizon, image_size=image_size, device=device)
    if name == "metaworld":
        from modalities.robot.metaworld import MetaWorldEnv

        return MetaWorldEnv(image_size=image_size, horizon=horizon)
    raise UnirlError(f"env: expected one of {list(ENVS)}, got {name!r}")


def make_tasks(env: str, spec: str) -> list[Task]:
    """Tasks from a config string: tabletop splits (train, heldout, halves, corners; several joined by
    commas: train,halves), or MetaWorld task names separated by commas (reach-v3,push-v3)."""
    if env == "tabletop":
        from modalities.robot.tabletop import tabletop_tasks

        return tabletop_tasks(spec)
    if env == "metaworld":
        from modalities.robot.metaworld import metaworld_tasks

        return metaworld_tasks(spec)
    raise UnirlError(f"env: expected one of {list(ENVS)}, got {env!r}")
