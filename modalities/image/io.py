"""Reading and writing image files as tensors [3,H,W] in [0,1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from unirl.errors import UnirlError


def load_image(path: str | Path) -> torch.Tensor:
    """An RGB image file → float [3,H,W] in [0,1]; a missing or non-image file is one clear error."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise UnirlError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UnirlError(f"{path}: not a readable image ({type(e).__name__})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [N,3,H,W] in [0,1] → uint8 [N,H,W,3] on the host, in one conversion."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_images(images: torch.Tensor, paths: list[Path]) -> None:
    for array, path in zip(to_uint8(images), paths, strict=True):
        Image.fromarray(array).save(path)
