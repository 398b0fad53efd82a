"""Prompt specs in GenEval's schema, and prompt suites read from files.

A spec is a plain dict, exactly GenEval's metadata line::

    {"tag": "position",
     "include": [{"class": "teddy bear", "count": 1},
                 {"class": "dog", "count": 1, "position": ["right of", 0]}],
     "exclude": [{"class": "dog", "count": 2}],        # optional
     "prompt": "a photo of a dog right of a teddy bear"}

Free text prompts (a .txt file, one a line) become ``{"tag": "free", "include": [], "prompt": text}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unirl.errors import UnirlError

Spec = dict[str, Any]
POSITION_THRESHOLD = 0.1

RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")


def _require(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise UnirlError(f"{where}: expected {what}")


def validate_spec(spec: Any, where: str = "spec") -> Spec:
    """Check one spec against GenEval's schema; returns it unchanged or raises naming the field."""
    _require(isinstance(spec, dict), where, "a JSON object")
    _require(isinstance(spec.get("prompt"), str) and spec["prompt"].strip() != "", f"{where}.prompt",
             "a non-empty string")
    _require(isinstance(spec.get("tag", ""), str), f"{where}.tag", "a string")
    for key in ("include", "exclude"):
        clauses = spec.get(key, [])
        _require(isinstance(clauses, list), f"{where}.{key}", "a list of clauses")
        for i, clause in enumerate(clauses):
            at = f"{where}.{key}[{i}]"
            _require(isinstance(clause, dict), at, "an object with 'class' and 'count'")
            _require(isinstance(clause.get("class"), str), f"{at}.class", "a class name")
            count = clause.get("count")
            _require(isinstance(count, int) and not isinstance(count, bool) and count >= 1, f"{at}.count",
                     "a positive integer")
            if "color" in clause:
                _require(isinstance(clause["color"], str), f"{at}.color", "a colour name")
            if "position" in clause:
                pos = clause["position"]
                _require(isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS
                         and isinstance(pos[1], int) and 0 <= pos[1] < len(clauses),
                         f"{at}.position", f"[relation in {list(RELATIONS)}, index of another include clause]")
    return spec


def free_text_spec(prompt: str) -> Spec:
    return {"tag": "free", "include": [], "prompt": prompt}


def read_prompt_file(path: str | Path) -> list[Spec]:
    """Read a GenEval metadata jsonl (one spec a line) or a text file (one prompt a line).

    A file whose first non-blank line starts with ``{`` is read as jsonl."""
    path = Path(path)
    if not path.is_file():
        raise UnirlError(f"{path}: prompt file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UnirlError(f"{path}: expected a UTF-8 text or jsonl prompt file ({e.reason})") from None
    numbered = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise UnirlError(f"{path}: prompt file is empty; expected one prompt (or one JSON spec) a line")
    if not numbered[0][1].startswith("{"):
        return [free_text_spec(line) for _, line in numbered]
    specs = []
    for n, line in numbered:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UnirlError(f"{path}:{n}: expected a JSON object ({e.msg})") from None
        specs.append(validate_spec(obj, where=f"{path}:{n}"))
    return specs


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def specs_sha256(specs: list[Spec]) -> str:
    """Hash of a suite as the jsonl it would be written as (for suites that are not files)."""
    text = "".join(json.dumps(s) + "\n" for s in specs)
    return hashlib.sha256(text.encode()).hexdigest()


def draw_tag_balanced(specs: list[Spec], n: int, rng: np.random.Generator,
                      tag_weights: dict[str, float] | None = None) -> list[Spec]:
    """n specs, each from a tag drawn uniformly (or in proportion to `tag_weights`, 1 for a tag
    not named), then uniformly within the tag. GenEval's overall is a mean over tags and suites
    are rarely balanced (shapes:train is 94% color_attr), so drawing by spec would train and
    choose settings on one tag."""
    groups = by_tag(specs)
    if tag_weights:
        weights = np.array([float(tag_weights.get(str(g[0].get("tag", "")), 1.0)) for g in groups])
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"tag_weights: expected weights >= 0 and not all 0, got {tag_weights}")
        probabilities = weights / weights.sum()
    drawn = []
    for _ in range(n):
        group = groups[rng.choice(len(groups), p=probabilities) if tag_weights else rng.integers(len(groups))]
        drawn.append(group[rng.integers(len(group))])
    return drawn


def check_tags_known(field_name: str, tags: Any, specs: list[Spec], prompts: str) -> None:
    """A config field naming tags (a list, or a dict keyed by tag) must name tags the prompts have."""
    known = {str(s.get("tag", "")) for s in specs}
    if unknown := set(tags) - known:
        raise UnirlError(f"config: {field_name}: tags {', '.join(sorted(unknown))} are not in prompts "
                         f"{prompts} (its tags: {', '.join(sorted(known))})")


def distinct_tag_balanced(specs: list[Spec], n: int, rng: np.random.Generator) -> list[Spec]:
    """Up to n distinct specs, taking one of each tag (in a random order) before a second of any."""
    groups = [[g[i] for i in rng.permutation(len(g))] for g in by_tag(specs)]
    groups = [groups[i] for i in rng.permutation(len(groups))]
    ranked = [g[depth] for depth in range(max(map(len, groups), default=0)) for g in groups if depth < len(g)]
    return ranked[:n]


def by_tag(specs: list[Spec]) -> list[list[Spec]]:
    groups: dict[str, list[Spec]] = {}
    for spec in specs:
        groups.setdefault(str(spec.get("tag", "")), []).append(spec)
    return list(groups.values())


def relative_position(box_a: Sequence[float], box_b: Sequence[float],
                      position_threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of A to B. The centre offset is shrunk by position_threshold·(size A + size B)
    per axis; a relation holds when its axis carries over half of the offset's direction."""
    corners = np.array([box_a[:4], box_b[:4]], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = corners.mean(axis=1)
    size_a, size_b = np.abs(corners[:, 1] - corners[:, 0])
    offset = center_a - center_b
    shrunk = np.maximum(np.abs(offset) - position_threshold * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def with_article(phrase: str) -> str:
    return f"an {phrase}" if phrase[0] in "aeiou" else f"a {phrase}"


def plural(name: str) -> str:
    return f"{name}es" if name.endswith("s") else f"{name}s"


def object_phrase(clause: dict[str, Any]) -> str:
    """"a red circle", "three stars", "two blue hearts": GenEval's phrasing of one include clause."""
    color = f"{clause['color']} " if "color" in clause else ""
    if clause["count"] == 1:
        return with_article(f"{color}{clause['class']}")
    return f"{NUMBER_WORDS[clause['count']]} {color}{plural(clause['class'])}"


def prompt_text(include: list[dict[str, Any]]) -> str:
    """GenEval's prompt for include clauses: "a photo of a dog right of a teddy bear",
    "a photo of a purple wine glass and a black apple", "a photo of two clocks"."""
    positioned = [c for c in include if "position" in c]
    if positioned:
        (clause,) = positioned
        relation, target = clause["position"]
        return f"a photo of {object_phrase(clause)} {relation} {object_phrase(include[target])}"
    return "a photo of " + " and ".join(object_phrase(c) for c in include)


# ----------------------------------------------------------------------------- questions
def exists_question(name: str, color: str | None = None) -> str:
    return f"Is there {with_article(f'{color} {name}' if color else name)}?"


def count_question(name: str, count: int, color: str | None = None) -> str:
    things = f"{color} {name}" if color else name
    if count == 1:
        return f"Is there exactly one {things}?"
    return f"Are there exactly {NUMBER_WORDS[count]} {f'{color} ' if color else ''}{plural(name)}?"


def relation_question(name: str, relation: str, target: str) -> str:
    return f"Is the {name} {relation} the {target}?"


def how_many_question(name: str) -> str:
    return f"How many {plural(name)} are there?"


def yes_no_questions(spec: Spec) -> list[str]:
    """The questions whose answer is "yes" exactly when an image satisfies the spec's include
    clauses: "Is there a red circle?", "Are there exactly three stars?", "Is the square left of
    the heart?". The self-VQA judge asks these."""
    include = spec.get("include", [])
    questions = []
    for clause in include:
        name, count, color = clause["class"], clause["count"], clause.get("color")
        questions.append(exists_question(name, color) if count == 1 else count_question(name, count, color))
        if "position" in clause:
            relation, target = clause["position"]
            questions.append(relation_question(name, relation, include[target]["class"]))
    return questions


def open_questions(spec: Spec, thing: str = "object", counts: bool = False) -> list[tuple[str, str]]:
    """UniRL's self-QA: open questions for a tag and the answers the spec implies: the main
    object ("What object is this?"; the shapes world says "shape"), how many, which colour (for
    colour attribution, of every object: one right colour alone does not bind both), which
    position. `counts`: also how many of every object the prompt names ("a red circle and a
    blue star" implies one circle), so that drawing extra objects to make a colour or a relation
    likelier to be found is not rewarded. Empty when a tag has no such question."""
    include = spec.get("include", [])
    if not include:
        return []
    first, tag = include[0], spec.get("tag")
    questions = []
    if tag == "single_object":
        questions = [(f"What {thing} is this?", first["class"])]
    elif tag in ("counting", "two_object"):
        questions = [(how_many_question(first["class"]), NUMBER_WORDS[first["count"]])]
    elif tag in ("colors", "color_attr"):
        questions = [(f"What color is the {c['class']}?", c["color"]) for c in include if "color" in c]
    elif tag == "position":
        clause = next(c for c in include if "position" in c)
        relation, target = clause["position"]
        questions = [(f"Where is the {clause['class']} relative to the {include[target]['class']}?", relation)]
    if counts:
        questions += [(how_many_question(c["class"]), NUMBER_WORDS[c["count"]]) for c in include
                      if (how_many_question(c["class"]), NUMBER_WORDS[c["count"]]) not in questions]
    return questions


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces: "The Red." → "red"."""
    words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    return " ".join(w for w in words if w not in ("a", "an", "the"))
