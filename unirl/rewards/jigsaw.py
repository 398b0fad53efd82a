"""Visual Jigsaw's verifiable reward: how well a text answer orders the shuffled pieces.

    jigsaw_reward("3, 1, 2", [3, 1, 2])            # 1.0: the exact permutation
    jigsaw_reward("<answer>[3,2,1]</answer>", [3, 1, 2])   # 0.2 * 1/3: valid, one position right
    jigsaw_reward("3, 3, 2", [3, 1, 2])            # 0.0: not a permutation

Labels are 1-based, as the pieces are shown ("Tile 1" …). The answer is read from the last
<answer>…</answer> if there is one, else from the last \\boxed{…}, else from the whole text, and
must then be nothing but the labels: "5, 1, 3", "5 1 3" or "[5,1,3]".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_LABELS = re.compile(r"\[?\s*\d+(?:\s*[,\s]\s*\d+)*\s*,?\s*\]?")


def parse_order(text: str) -> list[int] | None:
    """The labels an answer lists, in order, or None when it lists none in an accepted form."""
    for pattern in (_ANSWER_TAG, _BOXED):
        found = pattern.findall(text)
        if found:
            text = found[-1]
            break
    text = text.strip().rstrip(".")
    if not _LABELS.fullmatch(text):
        return None
    return [int(label) for label in re.findall(r"\d+", text)]


def jigsaw_reward(text: str, truth: Sequence[int], partial_weight: float = 0.2, format_weight: float = 0.0,
                  repetition_penalty: float = 0.0) -> float:
    """1 for the exact permutation; for a valid permutation that is wrong, `partial_weight` (γ)
    times the fraction of positions right; 0 for anything else (wrong length, repeated or
    out-of-range labels, no answer).

    Options, both off by default: `format_weight` is added when the answer is inside
    <answer>…</answer> and parses; `repetition_penalty` is subtracted times 1 − (distinct in-range
    labels listed) / max(labels listed, k): 0 for a permutation, more for repeats, omissions,
    out-of-range or surplus labels, 1 for no list. So "1, 1, 1, 1" gets a gradient towards
    permutations and no other shape escapes it (measured on the toy: penalising repeats alone,
    GRPO moved to unparseable, then one-label, then over-long answers within 13-25 steps)."""
    truth = list(truth)
    order = parse_order(text)
    reward = 0.0
    if repetition_penalty:
        listed = set(order or []) & set(range(1, len(truth) + 1))
        reward -= repetition_penalty * (1 - len(listed) / max(len(order or []), len(truth)))
    if order is None:
        return reward
    if _ANSWER_TAG.search(text):
        reward += format_weight
    if order == truth:
        return reward + 1.0
    if len(order) == len(truth) and sorted(order) == list(range(1, len(truth) + 1)):
        reward += partial_weight * sum(a == b for a, b in zip(order, truth)) / len(truth)
    return reward
