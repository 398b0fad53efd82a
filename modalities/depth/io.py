"""RGB-D pairs from a ScanNet-style folder: color/NAME.jpg|png beside depth/NAME.png, depth a
16-bit PNG in millimetres (0 = no reading)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from modalities.image.io import load_image
from unirl.errors import UnirlError

COLOR_SUFFIXES = (".jpg", ".jpeg", ".png")


def rgbd_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """(colour, depth) paths matched by file stem; a colour image without its depth is an error."""
    folder = Path(folder)
    color_dir, depth_dir = folder / "color", folder / "depth"
    for d in (color_dir, depth_dir):
        if not d.is_dir():
            raise UnirlError(f"{folder}: expected a ScanNet-style folder with color/ and depth/ (missing {d.name}/)")
    pairs = []
    for color in sorted(p for p in color_dir.iterdir() if p.suffix.lower() in COLOR_SUFFIXES):
        depth = depth_dir / f"{color.stem}.png"
        if not depth.is_file():
            raise UnirlError(f"{color}: no depth map {depth}")
        pairs.append((color, depth))
    if not pairs:
        raise UnirlError(f"{color_dir}: no .jpg or .png colour images")
    return pairs


def load_depth(path: str | Path) -> torch.Tensor:
    """A 16-bit depth PNG in millimetres → float [H,W] in metres, 0 where there is no reading."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            mode = img.mode
            array = np.asarray(img)
    except FileNotFoundError:
        raise UnirlError(f"{path}: depth file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UnirlError(f"{path}: not a readable depth image ({type(e).__name__})") from None
    if mode not in ("I;16", "I;16B", "I;16L", "I") or array.ndim != 2:
        raise UnirlError(f"{path}: expected a single-channel 16-bit depth PNG in millimetres, got mode {mode}")
    return torch.from_numpy(array.astype(np.float32)) / 1000.0


def save_depth(path: str | Path, depth: torch.Tensor) -> None:
    """Depth [H,W] in metres → a 16-bit PNG in millimetres (ScanNet's format)."""
    from unirl.atomic import atomic_file

    millimetres = (depth.detach().cpu().clamp(0, 65.535) * 1000).round().to(torch.int32).numpy().astype(np.uint16)
    with atomic_file(path) as tmp:
        Image.fromarray(millimetres).save(tmp, format="PNG")


def load_rgbd(color: str | Path, depth: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """[3,H,W] in [0,1] and [H,W] metres; the two must be the same size."""
    image, depth_map = load_image(color), load_depth(depth)
    if image.shape[-2:] != depth_map.shape:
        raise UnirlError(f"{depth}: depth is {tuple(depth_map.shape)}, its colour image {tuple(image.shape[-2:])}")
    return image, depth_map
