"""The shapes world: scenes of coloured shapes on a grey table, with GenEval-schema specs.

A scene is 1 to 4 objects, each a shape class, one of GenEval's 10 colours, a centre and a
radius (pixels). The table is a 6x6 lattice of 16-px cells and each object sits centred in its
own cell: 16 px is the token size of the toy model's VQ-VAE and vision tower, so every token sees
one whole object or none, and a small codebook represents the world exactly (with free
placement, an 8-px-token VQ blurred every shape into a blob and capped GenEval at 0.07).

Layouts are sampled on the host from a seed (cheap, a few numbers per scene);
pixels are rendered for many scenes at once as one tensor program: every object's implicit
shape function is evaluated on the pixel grid in a single batched call.

Every scene carries the spec it was sampled for, in GenEval's schema and phrasing, and positions
are sampled so that GenEval's `relative_position` rule holds with margin, so the evaluator and
the renderer agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from unirl.specs import (
    COLORS,
    NUMBER_WORDS,
    OPPOSITE,
    RELATIONS,
    Spec,
    count_question,
    draw_tag_balanced,
    exists_question,
    how_many_question,
    prompt_text,
    relation_question,
    relative_position,
)

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring")
PALETTE = {  # RGB in [0,1]; far apart from each other and from the background
    "red": (0.86, 0.12, 0.12), "orange": (0.98, 0.55, 0.05), "yellow": (0.97, 0.90, 0.10),
    "green": (0.10, 0.65, 0.20), "blue": (0.12, 0.30, 0.90), "purple": (0.55, 0.20, 0.75),
    "pink": (0.98, 0.55, 0.78), "brown": (0.50, 0.30, 0.12), "black": (0.05, 0.05, 0.05),
    "white": (0.98, 0.98, 0.98),
}
BACKGROUND = (0.62, 0.62, 0.62)
IMAGE_SIZE = 96
CELL = 16  # lattice pitch = the toy model's token size
RADIUS = (6.0, 7.4)  # object radius, px: pixels 1..14 of its cell, so neighbours are 2 px apart
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass
class SceneObject:
    shape: str
    color: str
    cx: float
    cy: float
    radius: float

    def box(self) -> list[float]:
        return [self.cx - self.radius, self.cy - self.radius, self.cx + self.radius, self.cy + self.radius]


@dataclass
class Scene:
    spec: Spec
    objects: list[SceneObject]


# ----------------------------------------------------------------------------- shape functions
def inside(shape_ids: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether points (u, v) (object-normalised: centre 0, radius 1, v pointing down) are inside
    each object's shape. shape_ids [K] broadcast against u, v [K, H, W]."""
    au, av = u.abs(), v.abs()
    r = torch.sqrt(u * u + v * v)
    theta = torch.atan2(u, -v) % (2 * math.pi / 5)  # 0 at each of the star's five points
    valley = torch.minimum(theta, 2 * math.pi / 5 - theta) / (math.pi / 5)  # 0 at a point, 1 between
    hx, hy = u * 1.15, -v * 1.15 + 0.1  # the heart curve (x²+y²-1)³ = x²y³, y up
    by_shape = torch.stack([
        r <= 1.0,  # circle
        torch.maximum(au, av) <= 0.82,  # square
        (v <= 0.75) & (au <= (v + 1.0) / 1.75 * 1.0),  # triangle, apex up
        r <= 1.0 - 0.55 * valley,  # star
        (hx * hx + hy * hy - 1) ** 3 - hx * hx * hy ** 3 <= 0,  # heart
        ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95)),  # cross
        au + av <= 1.0,  # diamond
        (r <= 1.0) & (r >= 0.42),  # ring
    ])  # [S, K, H, W]
    return by_shape.gather(0, shape_ids.view(1, -1, 1, 1).expand(1, *u.shape)).squeeze(0)


def _object_masks(scenes: list[Scene], size: int, device: torch.device
                  ) -> tuple[list[SceneObject], torch.Tensor, torch.Tensor]:
    """Every object of every scene, its scene index [K] and its pixel mask [K,size,size]."""
    objects = [(i, o) for i, s in enumerate(scenes) for o in s.objects]
    scene_idx = torch.tensor([i for i, _ in objects], device=device, dtype=torch.long)
    if not objects:
        return [], scene_idx, torch.zeros(0, size, size, dtype=torch.bool, device=device)
    shape_ids = torch.tensor([SHAPES.index(o.shape) for _, o in objects], device=device)
    cx, cy, rad = (torch.tensor([getattr(o, a) for _, o in objects], device=device).view(-1, 1, 1)
                   for a in ("cx", "cy", "radius"))
    grid = torch.arange(size, device=device, dtype=torch.float32) + 0.5  # pixel centres
    u = (grid.view(1, 1, -1) - cx) / rad
    v = (grid.view(1, -1, 1) - cy) / rad
    return [o for _, o in objects], scene_idx, inside(shape_ids, u.expand(-1, size, -1), v.expand(-1, -1, size))


def render(scenes: list[Scene], size: int = IMAGE_SIZE, device: torch.device | str = "cpu",
           shade: float = 0.0) -> torch.Tensor:
    """Scenes → float images [N,3,size,size] in [0,1], all objects of all scenes in one batch.
    `shade`: the table darkens towards the top left and lightens towards the bottom right by up
    to this much (toy jigsaws: a flat table gives a tile no clue to where it came from)."""
    device = torch.device(device)
    images = torch.tensor(BACKGROUND, device=device).view(1, 3, 1, 1).repeat(len(scenes), 1, size, size)
    if shade:
        ramp = torch.linspace(-1, 1, size, device=device)
        images = (images + shade * (0.6 * ramp.view(1, 1, -1, 1) + 0.4 * ramp.view(1, 1, 1, -1))).clamp(0, 1)
    objects, scene_idx, masks = _object_masks(scenes, size, device)
    if not objects:
        return images
    colors = torch.tensor([PALETTE[o.color] for o in objects], device=device)  # [K,3]
    # Objects never overlap, so painting order does not matter: sum each scene's coloured masks.
    paint = torch.zeros(len(scenes), 3, size, size, device=device)
    paint.index_add_(0, scene_idx, masks[:, None].float() * colors[:, :, None, None])
    covered = torch.zeros(len(scenes), 1, size, size, device=device)
    covered.index_add_(0, scene_idx, masks[:, None].float())
    return torch.where(covered > 0, paint, images)


TABLE_DEPTH = (3.0, 1.0)  # metres at the top and the bottom row: the camera looks down the table


def render_depth(scenes: list[Scene], size: int = IMAGE_SIZE, device: torch.device | str = "cpu") -> torch.Tensor:
    """Depth maps [N,size,size] in metres for `render`'s images: the table recedes linearly from
    the bottom row (near) to the top (far), and each shape stands upright on it, at the depth of
    the table where its base touches it."""
    device = torch.device(device)
    far, near = TABLE_DEPTH
    rows = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    depth = (far + (near - far) * rows / size).view(1, size, 1).repeat(len(scenes), 1, size)
    objects, scene_idx, masks = _object_masks(scenes, size, device)
    if not objects:
        return depth
    base = torch.tensor([min(o.cy + o.radius, size) for o in objects], device=device)
    object_depth = far + (near - far) * base / size  # [K]
    stand = torch.zeros_like(depth)
    stand.index_add_(0, scene_idx, masks.float() * object_depth.view(-1, 1, 1))
    covered = torch.zeros_like(depth)
    covered.index_add_(0, scene_idx, masks.float())
    return torch.where(covered > 0, stand, depth)


# ----------------------------------------------------------------------------- layouts
class _Layout:
    """Objects in distinct lattice cells, each centred in its cell, radius drawn from RADIUS."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng, self.cells = rng, size // CELL

    def place(self, placed: list[SceneObject], shape: str, color: str, where=None) -> SceneObject | None:
        taken = {(int(o.cx // CELL), int(o.cy // CELL)) for o in placed}
        for index in self.rng.permutation(self.cells * self.cells):
            col, row = divmod(int(index), self.cells)
            if (col, row) in taken:
                continue
            obj = SceneObject(shape, color, (col + 0.5) * CELL, (row + 0.5) * CELL, float(self.rng.uniform(*RADIUS)))
            if where is None or where(obj):
                return obj
        return None


def _other(rng: np.random.Generator, options: tuple[str, ...], *exclude: str) -> str:
    return str(rng.choice([o for o in options if o not in exclude]))


def scene_for_spec(spec: Spec, rng: np.random.Generator, size: int = IMAGE_SIZE, max_tries: int = 50) -> Scene:
    """Sample a scene that satisfies `spec` (its includes exactly, nothing excluded, relations
    with margin). Unspecified colours are random; no extra objects are added."""
    includes = spec["include"]
    for _ in range(max_tries):
        layout, placed, ok = _Layout(rng, size), [], True
        for clause in includes:
            for _ in range(clause["count"]):
                color = clause.get("color") or str(rng.choice(COLORS))
                where = None
                if "position" in clause:
                    relation, target = clause["position"]
                    anchor = next(o for o in placed if o.shape == includes[target]["class"])

                    def where(o, relation=relation, anchor=anchor):
                        # Hold with margin: still true with twice GenEval's threshold, and unambiguous.
                        return relative_position(o.box(), anchor.box(), 0.2) == {relation}
                obj = layout.place(placed, clause["class"], color, where=where)
                if obj is None:
                    ok = False
                    break
                placed.append(obj)
            if not ok:
                break
        if ok:
            return Scene(spec, placed)
    raise RuntimeError(f"could not lay out a scene for {spec['prompt']!r} in {size}px")


# ----------------------------------------------------------------------------- specs
def spec_for(tag: str, include: list[dict]) -> Spec:
    spec = {"tag": tag, "include": include}
    if tag == "counting":
        spec["exclude"] = [{"class": include[0]["class"], "count": include[0]["count"] + 1}]
    return spec | {"prompt": prompt_text(include)}


def all_specs() -> list[Spec]:
    """Every spec of GenEval's six tags over the shapes world, in a fixed order."""
    specs = []
    specs += [spec_for("single_object", [{"class": s, "count": 1}]) for s in SHAPES]
    specs += [spec_for("two_object", [{"class": a, "count": 1}, {"class": b, "count": 1}])
              for a in SHAPES for b in SHAPES if a < b]
    specs += [spec_for("counting", [{"class": s, "count": n}]) for s in SHAPES for n in (2, 3, 4)]
    specs += [spec_for("colors", [{"class": s, "count": 1, "color": c}]) for s in SHAPES for c in COLORS]
    specs += [spec_for("position", [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}])
              for a in SHAPES for b in SHAPES if a != b for rel in RELATIONS]
    specs += [spec_for("color_attr", [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}])
              for a in SHAPES for b in SHAPES if a != b for ca in COLORS for cb in COLORS if ca != cb]
    return specs


HELDOUT_PER_TAG = {"single_object": 2, "two_object": 6, "counting": 6, "colors": 20, "position": 30,
                   "color_attr": 30}


def split_specs(split: str, seed: int = 0) -> list[Spec]:
    """Disjoint train / held-out suites: per tag a fixed random subset is held out (no prompt
    text is in both; every word of a held-out prompt is in a train prompt, and of a held-out
    counting prompt in a train counting prompt); held-out is small enough to evaluate in seconds."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split: expected 'train' or 'heldout', got {split!r}")
    rng = np.random.default_rng(seed)
    chosen = []
    for tag in TAGS:
        specs = [s for s in all_specs() if s["tag"] == tag]
        held = set(rng.choice(len(specs), size=HELDOUT_PER_TAG[tag], replace=False).tolist())
        if tag == "counting":  # specs run shape by shape, numbers 2, 3, 4 within each
            # One number for each held-out shape, each number as often: every shape and number
            # word stays in train counting prompts, so held-out counting asks for new pairings
            # of known words (the draw above held out all three "hearts" prompts). Drawn apart,
            # so the other tags keep the held-out prompts that earlier toys were trained without.
            pairs = np.random.default_rng([seed, 1])
            shapes = pairs.choice(len(SHAPES), size=HELDOUT_PER_TAG[tag], replace=False)
            numbers = pairs.permutation(np.resize(np.arange(3), len(shapes)))
            held = set((3 * shapes + numbers).tolist())
        chosen += [s for i, s in enumerate(specs) if (i in held) == (split == "heldout")]
    return chosen


def sample_scenes(specs: list[Spec], n: int, seed: int, size: int = IMAGE_SIZE,
                  tag_weights: dict[str, float] | None = None) -> list[Scene]:
    """n scenes, each for a spec drawn uniformly over tags (or by `tag_weights`), then uniformly
    within the tag."""
    rng = np.random.default_rng(seed)
    return [scene_for_spec(spec, rng, size) for spec in draw_tag_balanced(specs, n, rng, tag_weights)]


# ----------------------------------------------------------------------------- questions
QUESTION_TYPES = ("what", "count", "color", "where", "yes_no")


def scene_questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(type, question, answer) about a scene, answers from the scene itself. Yes/no questions
    use the self-VQA phrasing of `unirl.specs` and are half yes, half no."""
    objects = scene.objects
    counts: dict[str, int] = {}
    for o in objects:
        counts[o.shape] = counts.get(o.shape, 0) + 1
    single = [o for o in objects if counts[o.shape] == 1]
    absent = [s for s in SHAPES if s not in counts]
    out = []
    if len(objects) == 1:
        out.append(("what", "What shape is this?", objects[0].shape))
    else:  # name a shape by its colour, so every shape is asked about in every split's scenes
        by_color: dict[str, list[SceneObject]] = {}
        for o in objects:
            by_color.setdefault(o.color, []).append(o)
        unique = [group[0] for group in by_color.values() if len(group) == 1]
        if unique:
            o = unique[rng.integers(len(unique))]
            out.append(("what", f"What shape is the {o.color} object?", o.shape))
    shape = str(rng.choice(list(counts)))
    out.append(("count", how_many_question(shape), NUMBER_WORDS[counts[shape]]))
    if single:
        o = single[rng.integers(len(single))]
        out.append(("color", f"What color is the {o.shape}?", o.color))
    relation_pairs = []
    for a in single:
        for b in single:
            if a is not b:
                rel = relative_position(a.box(), b.box(), 0.2)
                if len(rel) == 1:
                    relation_pairs.append((a, next(iter(rel)), b))
    if relation_pairs:
        a, rel, b = relation_pairs[rng.integers(len(relation_pairs))]
        out.append(("where", f"Where is the {a.shape} relative to the {b.shape}?", rel))

    # One yes/no question, yes or no with equal probability.
    o = objects[rng.integers(len(objects))]
    kind = rng.integers(3 if relation_pairs else 2)
    if kind == 0:  # existence, with or without colour
        use_color = bool(rng.integers(2))
        if rng.integers(2):
            out.append(("yes_no", exists_question(o.shape, o.color if use_color else None), "yes"))
        elif use_color and counts[o.shape] == 1:
            out.append(("yes_no", exists_question(o.shape, _other(rng, COLORS, o.color)), "no"))
        else:
            out.append(("yes_no", exists_question(str(rng.choice(absent))), "no"))
    elif kind == 1:  # exact count
        n = counts[o.shape]
        if rng.integers(2):
            out.append(("yes_no", count_question(o.shape, n), "yes"))
        else:
            wrong = int(rng.choice([k for k in (1, 2, 3, 4) if k != n]))
            out.append(("yes_no", count_question(o.shape, wrong), "no"))
    else:  # relation
        a, rel, b = relation_pairs[rng.integers(len(relation_pairs))]
        if rng.integers(2):
            out.append(("yes_no", relation_question(a.shape, rel, b.shape), "yes"))
        else:
            out.append(("yes_no", relation_question(a.shape, OPPOSITE[rel], b.shape), "no"))
    return out


def most_numerous_question(scene: Scene) -> tuple[str, str, str] | None:
    """How many of the scene's most numerous shape, when there are several of it: `scene_questions`
    asks about a shape at random, and 87% of those answers are "one"."""
    counts: dict[str, int] = {}
    for o in scene.objects:
        counts[o.shape] = counts.get(o.shape, 0) + 1
    shape = max(counts, key=counts.get)
    return ("count", how_many_question(shape), NUMBER_WORDS[counts[shape]]) if counts[shape] > 1 else None


