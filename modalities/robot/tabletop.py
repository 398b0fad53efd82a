"""The table-top toy: the shapes world as a robot's table, so SAIL's loop runs on a CPU.

The table is the shapes world's 6x6 lattice. The robot is a black circle; on the table are a
target and one or two distractors, coloured shapes (never black). A task names the target:
"move the robot to the red star". An action is two floats in [-1, 1], the robot's velocity
command along x and y; the robot moves one cell along an axis where the command exceeds 0.5 in
size (diagonals allowed), stays put if that cell holds an object, and stops at the table's
edge. An episode ends when the robot touches an object (is next to it, diagonals included):
a success if that object is the target; or after `horizon` steps.

Task variants are the (colour, shape) of the target: 9 colours x 8 shapes. `HELDOUT` keeps 9 of
them (each colour once) out of the training split: a held-out object may stand on the table in a
training episode, as a distractor, but is never the goal there (what is unseen is the task, not
the object: a planner that has never drawn an object cannot copy it into a frame). Distractors
share the target's colour or shape two times in three, so the robot must read both words.
A second kind of task names a place instead of an object: "move the robot to the top half" or
"to the top left corner", a success once the robot stands in that place's cells (touching an
object first ends it as a failure). A corner is where two halves meet, its 3x3 quarter of the
table. The `halves` split holds the four halves and `corners` the four corners; no split of
objects ever has them as goals, so they are new to a planner pretrained on objects, in what their
words ask and in where its understanding path should say the goal is. A spec may join splits with
commas ("train,halves").

Layouts are drawn on the host from a seed (a few integers each); frames are rendered for all
episodes in one batched call."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from modalities.image.shapes import IMAGE_SIZE, SHAPES, Scene, SceneObject, render
from modalities.robot.env import RobotEnv, Step, Task
from unirl.errors import UnirlError

GRID = 6
ROBOT = ("circle", "black")
OBJECT_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "white")
VARIANTS = [(c, s) for c in OBJECT_COLORS for s in SHAPES]
HELDOUT = [(c, SHAPES[(2 * i + 1) % len(SHAPES)]) for i, c in enumerate(OBJECT_COLORS)]
MOVES = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
CELLS = np.stack(np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="xy"), -1).reshape(-1, 2)  # [36, (x, y)]
CELL_INDEX = {tuple(c): j for j, c in enumerate(CELLS.tolist())}
HALVES = ("top", "bottom", "left", "right")
CORNERS = ("top left", "top right", "bottom left", "bottom right")
SPLITS = ("train", "heldout", "halves", "corners")


def task_for(color: str, shape: str) -> Task:
    return Task(name=f"{color}_{shape}", text=f"move the robot to the {color} {shape}",
                question=f"Is the robot next to the {color} {shape}?",
                locate=f"Where is the {color} {shape} relative to the circle?")


def place_task(place: str) -> Task:
    """A half ("top") or a corner ("top left") as a task."""
    where = f"{place} corner" if place in CORNERS else f"{place} half"
    return Task(name=where.replace(" ", "_"), text=f"move the robot to the {where}",
                question=f"Is the robot in the {where}?",
                locate=f"Where is the {where} relative to the circle?")


def tabletop_tasks(spec: str) -> list[Task]:
    """The task variants of a split: train (63 objects), heldout (9 objects), halves or corners (4
    places each); splits joined by commas give their tasks in that order."""
    tasks = []
    for split in spec.split(","):
        if split not in SPLITS:
            raise UnirlError(f"tabletop tasks: split expected one of {list(SPLITS)} (or several joined by commas), "
                             f"got {split!r}")
        if split in ("halves", "corners"):
            tasks += [place_task(p) for p in (HALVES if split == "halves" else CORNERS)]
        else:
            chosen = HELDOUT if split == "heldout" else [v for v in VARIANTS if v not in HELDOUT]
            tasks += [task_for(c, s) for c, s in chosen]
    return tasks


def _place(task: Task) -> str | None:
    """The half or corner a place task names; None for an object task."""
    place, _, kind = task.name.rpartition("_")
    return place.replace("_", " ") if kind in ("half", "corner") else None


def _variant(task: Task) -> tuple[str, str] | None:
    """The (colour, shape) an object task names; None for a place task."""
    if _place(task) is not None:
        return None
    color, _, shape = task.name.partition("_")
    if (color, shape) not in VARIANTS:
        raise UnirlError(f"tabletop: task {task.name!r} is not a table-top variant (colour_shape, *_half or *_corner)")
    return color, shape


def place_cells(place: str) -> np.ndarray:
    """[36] bool: the cells of a half ("top": the top three rows) or of a corner ("top left": where
    its two halves meet)."""
    half = GRID // 2
    sides = {"top": CELLS[:, 1] < half, "bottom": CELLS[:, 1] >= half,
             "left": CELLS[:, 0] < half, "right": CELLS[:, 0] >= half}
    return np.logical_and.reduce([sides[word] for word in place.split()])


def chebyshev(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).max(-1)


def _positions(n_objects: int, rng: np.random.Generator, region: np.ndarray | None = None,
               start_outside: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Robot cell [2] and object cells [n,2]: objects 3 cells apart (each has free cells to
    approach from), the robot 2 from all; with a goal `region` [M,2], objects off it and the
    robot 2 cells from it, or with `start_outside` the robot anywhere outside it and the objects
    anywhere."""
    for _ in range(1000):
        cells = rng.integers(0, GRID, size=(1 + n_objects, 2))
        robot, objects = cells[0], cells[1:]
        far = all(chebyshev(objects[i], objects[j]) >= 3 for i in range(n_objects) for j in range(i))
        if region is None:
            clear = True
        elif start_outside:
            clear = chebyshev(region, robot).min() >= 1
        else:
            clear = (chebyshev(region[:, None], objects[None]) >= 1).all() and chebyshev(region, robot).min() >= 2
        if far and clear and (chebyshev(objects, robot) >= 2).all():
            return robot, objects
    raise UnirlError("tabletop: could not place the objects (grid too small)")


class TableTop(RobotEnv):
    """Batched table-top episodes (see the module docstring). State lives on the host as small
    integer arrays; `observation()` renders every episode's frame in one call on `device`."""

    action_dim = 2

    def __init__(self, horizon: int = 6, distractors: tuple[int, int] = (1, 2), image_size: int = IMAGE_SIZE,
                 device: torch.device | str = "cpu"):
        self.horizon, self.distractors, self.image_size = horizon, distractors, image_size
        self.device = torch.device(device)
        self.cell = image_size / GRID

    # --------------------------------------------------------------------- layouts
    def _layout(self, task: Task, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
        """Robot cell [2], object cells [K,2] (the target first) and object variants [K]. A place
        task's objects are all distractors. A corner's lie outside it and its robot starts 2 cells
        from it; a half's robot starts anywhere outside it and its objects anywhere, so that
        neither gives away which half is the goal (a planner must read the task to find it)."""
        variant = _variant(task)
        k = int(rng.integers(self.distractors[0], self.distractors[1] + 1))
        if variant is None:
            return self._place_layout(_place(task), k, rng)
        color, shape = variant
        variants = [(color, shape)]
        while len(variants) < 1 + k:
            kind = rng.integers(3)
            c = color if kind == 0 else OBJECT_COLORS[rng.integers(len(OBJECT_COLORS))]
            s = shape if kind == 1 else SHAPES[rng.integers(len(SHAPES))]
            if (c, s) not in variants:
                variants.append((c, s))
        return (*_positions(len(variants), rng), variants)

    @staticmethod
    def _place_layout(place: str, k: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
        variants = [VARIANTS[i] for i in rng.choice(len(VARIANTS), size=k, replace=False)]
        return (*_positions(k, rng, CELLS[place_cells(place)], start_outside=place in HALVES), variants)

    def reset(self, tasks: list[Task], seed: int) -> torch.Tensor:
        if not tasks:
            raise UnirlError("tabletop: reset needs at least one task")
        rng = np.random.default_rng(seed)
        layouts = [self._layout(task, rng) for task in tasks]
        self.tasks = list(tasks)
        self.robot = np.stack([r for r, _, _ in layouts])
        self.objects = [o for _, o, _ in layouts]
        self.variants = [v for _, _, v in layouts]
        self.places = [_place(t) for t in tasks]
        n = len(tasks)
        self.t = 0
        self.done = np.zeros(n, dtype=bool)
        self.success = np.zeros(n, dtype=bool)
        return self.observation()

    def retarget(self, allowed: list[Task]) -> list[Task]:
        if self.t != 0:
            raise UnirlError("tabletop: retarget episodes right after reset, before any step")
        names = {t.name for t in allowed}
        for i, variants in enumerate(self.variants):
            if self.places[i] is not None:
                continue
            other = next((k for k in range(1, len(variants)) if "_".join(variants[k]) in names), None)
            if other is not None:  # the goal is the first object: swap roles, not places
                order = [other] + [k for k in range(len(variants)) if k != other]
                self.objects[i], self.variants[i] = self.objects[i][order], [variants[k] for k in order]
                self.tasks[i] = task_for(*self.variants[i][0])
        return list(self.tasks)

    # --------------------------------------------------------------------- dynamics
    def step(self, actions: torch.Tensor) -> Step:
        moves = np.rint(actions.detach().float().cpu().clamp(-1, 1).numpy()).astype(int)  # |a| > 0.5 moves a cell
        terminated = self.done.copy()
        for i in np.flatnonzero(~self.done):
            new = np.clip(self.robot[i] + moves[i], 0, GRID - 1)
            if not (self.objects[i] == new).all(-1).any():  # an object's cell blocks the robot
                self.robot[i] = new
            touching = chebyshev(self.objects[i], self.robot[i]) <= 1
            if self.places[i] is not None:  # in the place first: a success; else any touch ends it
                self.success[i] = bool(place_cells(self.places[i])[CELL_INDEX[tuple(self.robot[i].tolist())]])
                terminated[i] = self.success[i] or bool(touching.any())
            elif touching.any():
                terminated[i] = True
                self.success[i] = bool(touching[0]) and not touching[1:].any()
        self.t += 1
        truncated = ~terminated & (self.t >= self.horizon)
        newly_done = (terminated | truncated) & ~self.done
        reward = torch.tensor(newly_done & self.success, dtype=torch.float32)
        self.done = terminated | truncated
        return Step(self.observation(), reward, torch.from_numpy(terminated), torch.from_numpy(truncated),
                    {"success": torch.from_numpy(self.success.copy())})

    def goal_relations(self) -> list[set[str]]:
        """An object's relation is its larger axis (both on a diagonal); a place's, every side
        that all its cells lie on."""
        relations = []
        for i in np.flatnonzero(~self.done):
            if self.places[i] is None:
                dx, dy = (self.objects[i][0] - self.robot[i]).tolist()  # y grows downwards
            else:
                sides = np.sign(CELLS[place_cells(self.places[i])] - self.robot[i])  # [cells, 2]
                dx, dy = (int(side[0]) if (side == side[0]).all() else 0 for side in sides.T)
            words = set()
            if dx and abs(dx) >= abs(dy):
                words.add("left of" if dx < 0 else "right of")
            if dy and abs(dy) >= abs(dx):
                words.add("above" if dy < 0 else "below")
            relations.append(words)
        return relations

    def observation(self) -> torch.Tensor:
        radius = 0.42 * self.cell

        def at(cell: np.ndarray, color: str, shape: str) -> SceneObject:
            return SceneObject(shape, color, (cell[0] + 0.5) * self.cell, (cell[1] + 0.5) * self.cell, radius)

        scenes = [Scene({}, [at(self.robot[i], ROBOT[1], ROBOT[0])] +
                        [at(c, color, shape) for c, (color, shape) in zip(self.objects[i], self.variants[i])])
                  for i in range(len(self.tasks))]
        return render(scenes, size=self.image_size, device=self.device)

    # --------------------------------------------------------------------- a scripted expert
    def expert_actions(self, rng: np.random.Generator, noise: float = 0.0) -> torch.Tensor:
        """Commands along a shortest path to a cell next to the target that touches no
        distractor (breadth-first over the lattice); with probability `noise` a random command.
        Magnitudes vary in (0.6, 1] so the inverse dynamics model sees the whole command range."""
        actions = rng.uniform(-1, 1, size=(len(self.tasks), 2))
        for i in np.flatnonzero(~self.done):
            if rng.random() < noise:
                continue
            move = self._first_move(self.robot[i], self.objects[i], self.places[i])
            actions[i] = np.array(move) * rng.uniform(0.6, 1.0, size=2)
        return torch.tensor(actions, dtype=torch.float32)

    @staticmethod
    def _first_move(robot: np.ndarray, objects: np.ndarray, place: str | None = None) -> tuple[int, int]:
        near = np.stack([chebyshev(CELLS, o) for o in objects])  # [K, cells]
        if place is None:
            free = (near[1:] >= 2).all(0) & (near > 0).all(0)  # off every object, touching no distractor
            goal = free & (near[0] == 1)
        else:
            free = (near >= 2).all(0)  # touching no object: every one is a distractor here
            goal = free & place_cells(place)
        first: dict[tuple[int, int], tuple[int, int] | None] = {tuple(robot): None}
        queue = deque([tuple(robot)])
        while queue:
            cur = queue.popleft()
            if goal[CELL_INDEX[cur]]:
                return first[cur] or (0, 0)
            for dx, dy in MOVES:
                nxt = (cur[0] + dx, cur[1] + dy)
                if nxt in CELL_INDEX and nxt not in first and free[CELL_INDEX[nxt]]:
                    first[nxt] = first[cur] or (dx, dy)
                    queue.append(nxt)
        goal_cell = objects[0] if place is None else CELLS[place_cells(place)].mean(0)
        target = goal_cell - robot  # no clean path: head for the goal anyway
        return int(np.sign(target[0])), int(np.sign(target[1]))
