"""Image jigsaw (Visual Jigsaw): cut an image into an m×n grid, shuffle the tiles, show them as
separate images "Tile 1" … "Tile k", and ask for the labels in the original's raster order.

Everything is one tensor operation over the whole batch, on the images' device:

    puzzle = image_jigsaw(images, rows=3, cols=3, generator=g)
    puzzle.tiles      # [B, k, 3, H/rows, W/cols], in the shuffled order shown
    puzzle.answer     # [B, k] 1-based labels: answer[b, p] is the shown tile that belongs at p
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modalities.permutation import shuffle_pieces
from unirl.errors import UnirlError
from unirl.models.base import IMAGE_SLOT


@dataclass
class Jigsaw:
    tiles: torch.Tensor   # [B, k, C, h, w], shown in this order as Tile 1 … Tile k
    answer: torch.Tensor  # [B, k] long, 1-based: the label of the tile at each original raster position
    rows: int
    cols: int


def cut_tiles(images: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[B, C, H, W] → [B, rows*cols, C, H/rows, W/cols], tiles in raster order. H and W must
    divide evenly: a cropped remainder would leave a seam the model could read the order from."""
    if images.dim() != 4:
        raise UnirlError(f"images: expected a tensor [B,C,H,W], got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise UnirlError(f"grid: expected at least 2 tiles, got {rows}x{cols}")
    if h % rows or w % cols:
        raise UnirlError(f"grid: {rows}x{cols} does not divide a {h}x{w} image evenly")
    th, tw = h // rows, w // cols
    return images.reshape(b, c, rows, th, cols, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c, th, tw)


def image_jigsaw(images: torch.Tensor, rows: int = 3, cols: int = 3,
                 generator: torch.Generator | None = None) -> Jigsaw:
    tiles, answer = shuffle_pieces(cut_tiles(images, rows, cols), generator)
    return Jigsaw(tiles, answer, rows, cols)


def reassemble(tiles: torch.Tensor, order: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Put shown tiles [B, k, C, h, w] back by an answer [B, k] (1-based labels in raster order):
    the original images when the answer is right."""
    b, k, c, th, tw = tiles.shape
    batch = torch.arange(b, device=tiles.device)[:, None]
    placed = tiles[batch, order.to(tiles.device) - 1]  # [B, k, C, h, w] in raster order
    return placed.reshape(b, rows, cols, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, rows * th, cols * tw)


def jigsaw_question(rows: int, cols: int) -> str:
    """The tiles in their slots, labelled, then the task (the tiles go into the slots in order)."""
    k = rows * cols
    tiles = "\n".join(f"Tile {j}: {IMAGE_SLOT}" for j in range(1, k + 1))
    return (f"{tiles}\nThese are the {k} tiles of an image cut into a {rows}x{cols} grid, shuffled. List the tile "
            f"labels in the original image's order, row by row from the top left, separated by commas.")
