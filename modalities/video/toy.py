"""Toy videos of the shapes world: 1 to 3 shapes falling across the table, each at its own
speed and sideways drift. Falling gives time a direction (a clip played backwards would show
shapes rising), so a clip order is decidable from the frames alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from modalities.image.shapes import COLORS, IMAGE_SIZE, RADIUS, SHAPES, Scene, SceneObject, render
from modalities.video.io import write_video


def toy_video_objects(n: int, frames: int, seed: int) -> list[list[list[SceneObject]]]:
    """[video][frame] → that frame's objects: positions linear in time, inside the image throughout."""
    rng = np.random.default_rng(seed)
    videos = []
    for _ in range(n):
        tracks = []
        for _ in range(int(rng.integers(1, 4))):
            r = float(rng.uniform(*RADIUS))
            fall = float(rng.uniform(0.45, 0.75)) * (IMAGE_SIZE - 2 * r)  # total drop over the video
            y0 = float(rng.uniform(r, IMAGE_SIZE - r - fall))
            x0, x1 = (float(v) for v in rng.uniform(r, IMAGE_SIZE - r, size=2))
            tracks.append((SHAPES[rng.integers(len(SHAPES))], COLORS[rng.integers(len(COLORS))], r, x0, x1, y0, fall))
        t = np.linspace(0, 1, frames)
        videos.append([[SceneObject(shape, color, x0 + (x1 - x0) * float(s), y0 + fall * float(s), r)
                        for shape, color, r, x0, x1, y0, fall in tracks] for s in t])
    return videos


def toy_videos(n: int, frames: int = 48, seed: int = 0) -> torch.Tensor:
    """[n, frames, 3, 96, 96] in [0,1]: every frame of every video rendered in one batch."""
    objects = toy_video_objects(n, frames, seed)
    pixels = render([Scene({}, frame) for video in objects for frame in video])
    return pixels.view(n, frames, *pixels.shape[1:])


def write_toy_videos(folder: str | Path, n: int, frames: int = 48, seed: int = 0, fps: int = 8) -> list[Path]:
    """Real .mp4 files (read back through decord like anyone's videos): folder/video_0000.mp4 …"""
    folder = Path(folder)
    videos = toy_videos(n, frames, seed)
    return [write_video(folder / f"video_{i:04d}.mp4", video, fps) for i, video in enumerate(videos)]
