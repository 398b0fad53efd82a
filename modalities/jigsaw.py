"""Jigsaw puzzles for every modality, from toy data the project makes or from a user's folder,
as model inputs: each puzzle's images (tiles, clip frames, or the marked view), its question and
its answer. The recipe and the benchmark both draw from here.

    puzzles = make_puzzles(JigsawTask(modality="image", rows=2, cols=2), "toy", n=16, seed=3)
    model.sample_answers(puzzles.images, puzzles.questions, ...)
    puzzles.answers  # [n, k] 1-based labels
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unirl.errors import UnirlError

MODALITIES = ("image", "video", "3d")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass
class JigsawTask:
    """What a puzzle is. Defaults follow Visual Jigsaw: 3x3 image grids, 6 video clips with 10%
    trimmed at each boundary, 6 depth points."""

    modality: str = "image"
    rows: int = 3
    cols: int = 3
    clips: int = 6
    trim: float = 0.1
    frames_per_clip: int = 1
    video_frames: int = 48
    """Frames read from each video (uniformly) before it is cut into clips."""
    points: int = 6
    min_distance: float = 14.0
    min_depth_gap: float = 0.1
    image_size: int = 96
    """Folder images are resized to a square of this side (rounded up to divide the grid)."""
    toy_shade: float = 0.15
    """Toy image jigsaws: how much the table's brightness varies across the scene. Shapes sit
    inside lattice cells, so on a flat table a tile carries no clue to its place (a linear probe
    of the toy's tower reads a 2x2 tile's quadrant at chance, 0.26; at 0.15 shading, 0.996)."""

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise UnirlError(f"modality: expected one of {', '.join(MODALITIES)}, got {self.modality!r}")

    @property
    def pieces(self) -> int:
        return {"image": self.rows * self.cols, "video": self.clips, "3d": self.points}[self.modality]

    @property
    def chance_exact(self) -> float:
        """Exact accuracy of answering a uniformly random permutation: 1/k!."""
        return 1 / math.factorial(self.pieces)


@dataclass
class Puzzles:
    images: list[torch.Tensor]  # per puzzle [n_images, 3, H, W]
    questions: list[str]
    answers: torch.Tensor  # [n, k] long, 1-based


def make_puzzles(task: JigsawTask, data: str, n: int, seed: int, split: str = "train",
                 device: torch.device | str = "cpu") -> Puzzles:
    """n puzzles drawn with `seed`. data: "toy" (made here: shapes scenes of the given split,
    falling-shapes videos, scenes with depth) or a folder (images; videos; or ScanNet-style
    color/ + depth/)."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    if task.modality == "image":
        from modalities.image.jigsaw import image_jigsaw, jigsaw_question

        images = _toy_scenes(n, seed, split, device, task.toy_shade)[0] if data == "toy" else \
            _folder_images(data, n, rng, task)
        puzzle = image_jigsaw(images.to(device), task.rows, task.cols, generator)
        return Puzzles(list(puzzle.tiles), [jigsaw_question(task.rows, task.cols)] * n, puzzle.answer.cpu())
    if task.modality == "video":
        from modalities.video.jigsaw import video_jigsaw, video_jigsaw_question

        videos = _toy_videos(n, task, seed) if data == "toy" else _folder_videos(data, n, rng, task)
        puzzle = video_jigsaw(videos.to(device), task.clips, task.trim, task.frames_per_clip, generator)
        frames = puzzle.clips.flatten(1, 2)  # [n, K*F, 3, H, W]: clip by clip, frames in order
        question = video_jigsaw_question(task.clips, task.frames_per_clip)
        return Puzzles(list(frames), [question] * n, puzzle.answer.cpu())
    from modalities.depth.jigsaw import depth_jigsaw, depth_jigsaw_question

    images, depth = _toy_scenes(n, seed, split, device) if data == "toy" else _folder_rgbd(data, n, rng, task)
    puzzle = depth_jigsaw(images.to(device), depth.to(device), task.points, task.min_distance, task.min_depth_gap,
                          generator=generator)
    return Puzzles(list(puzzle.images[:, None]), [depth_jigsaw_question(task.points)] * n, puzzle.answer.cpu())


# ----------------------------------------------------------------------------- toy data
def _toy_scenes(n: int, seed: int, split: str, device: torch.device | str, shade: float = 0.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    from modalities.image.shapes import render, render_depth, sample_scenes, split_specs

    scenes = sample_scenes(split_specs(split), n, seed=seed)
    return render(scenes, device=device, shade=shade), render_depth(scenes, device=device)


def _toy_videos(n: int, task: JigsawTask, seed: int) -> torch.Tensor:
    from modalities.video.toy import toy_videos

    return toy_videos(n, frames=task.video_frames, seed=seed)


# ----------------------------------------------------------------------------- folders
def _files(folder: str, suffixes: tuple[str, ...], what: str) -> list[Path]:
    path = Path(folder)
    if not path.is_dir():
        raise UnirlError(f"data: expected 'toy' or a folder of {what}, got {folder!r} (not a folder)")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
    if not files:
        raise UnirlError(f"{folder}: no {what} ({', '.join(suffixes)})")
    return files


def _pick(files: list, n: int, rng: np.random.Generator) -> list:
    return [files[i] for i in rng.choice(len(files), size=n, replace=len(files) < n)]


def _grid_side(task: JigsawTask) -> tuple[int, int]:
    """Height and width: image_size rounded up to a multiple of the grid, so tiles cut evenly."""
    return (math.ceil(task.image_size / task.rows) * task.rows, math.ceil(task.image_size / task.cols) * task.cols)


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _folder_images(folder: str, n: int, rng: np.random.Generator, task: JigsawTask) -> torch.Tensor:
    from modalities.image.io import load_image

    size = _grid_side(task)
    files = _pick(_files(folder, IMAGE_SUFFIXES, "images"), n, rng)
    return torch.cat([_resize(load_image(p)[None], size) for p in files])


def _folder_videos(folder: str, n: int, rng: np.random.Generator, task: JigsawTask) -> torch.Tensor:
    from modalities.video.io import read_video

    side = (task.image_size, task.image_size)
    return torch.stack([_resize(read_video(p, num_frames=task.video_frames), side)
                        for p in _pick(_files(folder, VIDEO_SUFFIXES, "videos"), n, rng)])


def _folder_rgbd(folder: str, n: int, rng: np.random.Generator, task: JigsawTask) -> tuple[torch.Tensor, torch.Tensor]:
    from modalities.depth.io import load_rgbd, rgbd_pairs

    side = (task.image_size, task.image_size)
    images, depths = [], []
    for color, depth in _pick(rgbd_pairs(folder), n, rng):
        image, depth_map = load_rgbd(color, depth)
        images.append(_resize(image[None], side))
        # Nearest, so no depth is invented between a surface and a hole (0 = no reading).
        depths.append(F.interpolate(depth_map[None, None], size=side, mode="nearest")[0, 0])
    return torch.cat(images), torch.stack(depths)
