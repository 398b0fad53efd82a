"""Hard negatives as spec edits (OSPO's stage 2): each negative is the base spec with one thing
changed (an object, a colour, a relation, a count, or an object dropped), so its spec is known
and it claims something the base spec rules out. Every negative's prompt is GenEval's phrasing
of its own spec (`prompt_text`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from unirl.specs import COLORS, OPPOSITE, Spec, prompt_text

EDITS = ("replace_object", "replace_color", "swap_colors", "replace_relation", "change_count", "drop_object")
COUNTS = (1, 2, 3, 4)


def _spec(tag: str, include: list[dict[str, Any]]) -> Spec:
    spec: Spec = {"tag": tag, "include": include}
    if tag == "counting":  # GenEval's counting specs rule out one more, too
        spec["exclude"] = [{"class": include[0]["class"], "count": include[0]["count"] + 1}]
    return spec | {"prompt": prompt_text(include)}


def _single_clause_tag(kept: dict[str, Any]) -> str:
    if kept["count"] > 1:
        return "counting"
    return "colors" if "color" in kept else "single_object"


def possible_edits(spec: Spec) -> list[tuple[str, int]]:
    """(edit, clause index) pairs that apply to this spec."""
    include = spec["include"]
    edits = [("replace_object", i) for i in range(len(include))]
    edits += [("replace_color", i) for i, c in enumerate(include) if "color" in c]
    colored = [i for i, c in enumerate(include) if "color" in c]
    if len(colored) == 2 and include[colored[0]]["color"] != include[colored[1]]["color"]:
        edits.append(("swap_colors", colored[0]))
    edits += [("replace_relation", i) for i, c in enumerate(include) if "position" in c]
    if spec.get("tag") == "counting" or (len(include) == 1 and include[0]["count"] > 1):
        edits.append(("change_count", 0))
    if len(include) > 1:
        edits += [("drop_object", i) for i in range(len(include))]
    return edits


def apply_edit(spec: Spec, edit: str, index: int, classes: Sequence[str], rng: np.random.Generator
               ) -> dict[str, Any]:
    """{"spec", "edit", "what"}: the base spec with one edit (replacements drawn with `rng` from
    `classes` / GenEval's colours / the other counts)."""
    include = copy.deepcopy(spec["include"])
    tag = spec.get("tag", "")
    clause = include[index]
    if edit == "replace_object":
        taken = {c["class"] for c in include}
        options = [c for c in classes if c not in taken]
        new = str(rng.choice(options))
        what = f"{clause['class']} → {new}"
        clause["class"] = new
    elif edit == "replace_color":
        taken = {c.get("color") for c in include}
        new = str(rng.choice([c for c in COLORS if c not in taken]))
        what = f"{clause['color']} → {new}"
        clause["color"] = new
    elif edit == "swap_colors":
        a, b = [c for c in include if "color" in c]
        a["color"], b["color"] = b["color"], a["color"]
        what = f"colours of {a['class']} and {b['class']} swapped"
    elif edit == "replace_relation":
        relation, target = clause["position"]
        clause["position"] = [OPPOSITE[relation], target]
        what = f"{relation} → {OPPOSITE[relation]}"
    elif edit == "change_count":
        new = int(rng.choice([n for n in COUNTS if n != clause["count"]]))
        what = f"{clause['count']} → {new}"
        clause["count"] = new
        tag = _single_clause_tag(clause)
    elif edit == "drop_object":
        what = f"{clause['class']} dropped"
        kept = [c for i, c in enumerate(include) if i != index]
        for c in kept:
            c.pop("position", None)  # the relation was to or from the dropped object
        include = kept
        tag = _single_clause_tag(kept[0]) if len(kept) == 1 else tag
    else:
        raise ValueError(f"edit {edit!r}: expected one of {', '.join(EDITS)}")
    return {"spec": _spec(tag, include), "edit": edit, "what": what}


def hard_negatives(spec: Spec, classes: Sequence[str], n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Up to n negatives of a spec with distinct prompts, the edits drawn without replacement
    (a spec with fewer possible edits gets fewer)."""
    edits = possible_edits(spec)
    out, seen = [], {spec["prompt"]}
    for k in rng.permutation(len(edits)):
        negative = apply_edit(spec, *edits[k], classes, rng)
        if negative["spec"]["prompt"] not in seen:
            seen.add(negative["spec"]["prompt"])
            out.append(negative)
        if len(out) == n:
            break
    return out
