"""GenEval's verdict rules, exactly: which detections count, and whether they satisfy a spec.

Behaviour follows GenEval's evaluation/evaluate_images.py (Ghosh et al. 2023): per-class
confidence threshold (a stricter one for counting prompts), at most `max_objects` per class,
greedy NMS with GenEval's +1-pixel IoU, include clauses ANDed and exclude clauses ORed, colour
and position judged on the `count` most confident boxes, and GenEval's relative_position
(centres offset by 0.1 of the two boxes' summed size; image y points down). Reasons are worded
as GenEval words them and joined with newlines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from unirl.specs import COLORS, POSITION_THRESHOLD, Spec, relative_position

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
NMS_THRESHOLD = 1.0

Box = np.ndarray  # [5]: x1, y1, x2, y2, score
Objects = dict[str, list[Box]]
ColorOf = Callable[[str, list[Box]], list[str]]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU with GenEval's inclusive pixel convention (width = x2 - x1 + 1)."""
    def area(box):
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)

    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union else 0


def select_indices(boxes: np.ndarray, threshold: float, max_objects: int = MAX_OBJECTS,
                   nms_threshold: float = NMS_THRESHOLD) -> list[int]:
    """Row indices of one class's (N,5) detections that GenEval keeps, most confident first."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    order = np.argsort(boxes[:, 4])[::-1]
    order = order[boxes[order, 4] > threshold][:max_objects].tolist()
    kept = []
    while order:
        best = order.pop(0)
        kept.append(best)
        if nms_threshold != 1:
            order = [i for i in order if box_iou(boxes[best], boxes[i]) < nms_threshold]
    return kept


def select_objects(raw: dict[str, Any], tag: str, threshold: float = THRESHOLD,
                   counting_threshold: float = COUNTING_THRESHOLD, max_objects: int = MAX_OBJECTS,
                   nms_threshold: float = NMS_THRESHOLD) -> Objects:
    """raw: class → (N,5) x1,y1,x2,y2,score in any order. Returns class → kept boxes, most
    confident first; a class with none kept is absent."""
    cutoff = counting_threshold if tag == "counting" else threshold
    objects = {}
    for name, boxes in raw.items():
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
        kept = select_indices(boxes, cutoff, max_objects, nms_threshold)
        if kept:
            objects[name] = [boxes[i] for i in kept]
    return objects


def _ordered(relations: set[str]) -> list[str]:
    return [r for r in ("left of", "right of", "above", "below") if r in relations]


def judge(metadata: Spec, objects: Objects, color_of: ColorOf | None = None,
          position_threshold: float = POSITION_THRESHOLD) -> tuple[bool, str]:
    """GenEval's verdict for one image: (correct, reason lines joined by newlines)."""
    correct, reasons, matched_groups = True, [], []
    for clause in metadata.get("include", []):
        name, count = clause["class"], clause["count"]
        found = objects.get(name, [])[:count]
        matched = True
        if len(found) < count:
            matched = False
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in clause:
                if color_of is None:
                    raise ValueError(f"spec asks for a colour ({clause['color']} {name}) but no colour classifier")
                colors = color_of(name, found)
                want = clause["color"]
                if colors.count(want) < count:
                    matched = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reasons.append(f"expected {want} {name}>={count}, found {colors.count(want)} {want}; and {seen}")
            if "position" in clause and matched:
                relation, target = clause["position"]
                if matched_groups[target] is None:
                    matched = False
                    reasons.append(f"no target for {name} to be {relation}")
                else:
                    for box in found:
                        for target_box in matched_groups[target]:
                            relations = relative_position(box, target_box, position_threshold)
                            if relation not in relations:
                                matched = False
                                reasons.append(f"expected {name} {relation} target, found "
                                               f"{' and '.join(_ordered(relations))} target")
                                break
                        if not matched:
                            break
        correct &= matched
        matched_groups.append(found if matched else None)
    for clause in metadata.get("exclude", []):
        name, count = clause["class"], clause["count"]
        if len(objects.get(name, [])) >= count:
            correct = False
            reasons.append(f"expected {name}<{count}, found {len(objects[name])}")
    return correct, "\n".join(reasons)


def clauses_met(metadata: Spec, objects: Objects, color_of: ColorOf | None = None,
                position_threshold: float = POSITION_THRESHOLD) -> float:
    """Partial credit: the fraction of include clauses GenEval's rules accept one by one
    (positions judged against their target's own verdict), times 0 if an exclude fails."""
    includes = metadata.get("include", [])
    if not includes:
        return float(judge(metadata, objects, color_of, position_threshold)[0])
    met = 0
    for clause in includes:
        # Judge the clause with its position target (if any) as its own small spec.
        if "position" in clause:
            target = clause["position"][1]
            sub = {"include": [includes[target], dict(clause, position=[clause["position"][0], 0])]}
        else:
            sub = {"include": [clause]}
        met += judge(sub, objects, color_of, position_threshold)[0]
    excluded_ok = judge({"exclude": metadata.get("exclude", [])}, objects)[0]
    return met / len(includes) * excluded_ok
