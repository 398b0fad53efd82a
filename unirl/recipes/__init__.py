"""Recipes: each one readable file that wires models, judges and losses into a training loop.

A recipe module provides ``Config`` (a dataclass subclassing `unirl.config.RunConfig`) and
``train(config, run_dir, resume_from) -> None``. `unirl train CONFIG` picks the module from the
config's ``recipe:`` key.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from unirl.errors import UnirlError

RECIPES = {
    "unirl": "unirl.recipes.unirl",
    "ospo": "unirl.recipes.ospo",
    "jigsaw": "unirl.recipes.jigsaw",
    "sail": "unirl.recipes.sail",
}


def get_recipe(name: str, source: str = "config") -> ModuleType:
    if name not in RECIPES:
        raise UnirlError(f"{source}: 'recipe' expected one of {sorted(RECIPES)}, got {name!r}")
    try:
        return importlib.import_module(RECIPES[name])
    except ModuleNotFoundError as e:
        if e.name != RECIPES[name]:
            raise
        raise UnirlError(f"{source}: recipe {name!r} is not available yet") from None
