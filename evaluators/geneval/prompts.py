"""GenEval's 553 evaluation prompts, regenerated from the generator's published recipe.

The recipe (GenEval, Ghosh et al. 2023, prompts/create_prompts.py): the 80 COCO classes in
COCO order (GenEval renames mouse, remote, keyboard and hair dryer), numpy's default_rng(43),
and per tag, in this order: single_object (every class once, in a random order), then 100 each
of two_object, counting (2 to 4, excluding count + 1), colors (never person), position and
color_attr (never person); exact duplicates are then removed, the first kept.
Each draw below is the generator's draw, in its order, so the same seed gives the same file.
"""

from __future__ import annotations

import json

import numpy as np

from unirl.specs import COLORS, RELATIONS, Spec, prompt_text

COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]


def geneval_prompts(seed: int = 43, per_tag: int = 100, classes: list[str] = COCO_CLASSES) -> list[Spec]:
    rng = np.random.default_rng(seed)
    n = len(classes)
    person = classes.index("person")

    def not_person(k: int = 1) -> np.ndarray:  # k distinct classes, never person
        return (rng.choice(n - 1, size=k, replace=False) + 1 + person) % n

    specs: list[Spec] = []

    def add(tag: str, include: list[dict], exclude: list[dict] | None = None) -> None:
        spec = {"tag": tag, "include": include, **({"exclude": exclude} if exclude else {})}
        specs.append(spec | {"prompt": prompt_text(include)})

    for i in rng.choice(n, size=n, replace=False):
        add("single_object", [{"class": classes[i], "count": 1}])
    for _ in range(per_tag):
        a, b = rng.choice(n, size=2, replace=False)
        add("two_object", [{"class": classes[a], "count": 1}, {"class": classes[b], "count": 1}])
    for _ in range(per_tag):
        i = rng.choice(n)
        count = int(rng.integers(2, 4, endpoint=True))
        add("counting", [{"class": classes[i], "count": count}], [{"class": classes[i], "count": count + 1}])
    for _ in range(per_tag):
        i = (rng.choice(n - 1) + 1 + person) % n
        color = COLORS[rng.choice(len(COLORS))]
        add("colors", [{"class": classes[i], "count": 1, "color": color}])
    for _ in range(per_tag):
        a, b = rng.choice(n, size=2, replace=False)
        relation = RELATIONS[rng.choice(len(RELATIONS))]
        add("position", [{"class": classes[b], "count": 1},
                         {"class": classes[a], "count": 1, "position": [relation, 0]}])
    for _ in range(per_tag):
        a, b = not_person(2)
        ca, cb = rng.choice(len(COLORS), size=2, replace=False)
        add("color_attr", [{"class": classes[a], "count": 1, "color": COLORS[ca]},
                           {"class": classes[b], "count": 1, "color": COLORS[cb]}])
    unique, seen = [], set()
    for spec in specs:
        key = json.dumps(spec, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(spec)
    return unique
