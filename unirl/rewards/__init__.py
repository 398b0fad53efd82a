"""Rewards: plain callables scoring what the model produced."""

from unirl.rewards.jigsaw import jigsaw_reward, parse_order

__all__ = ["jigsaw_reward", "parse_order"]
