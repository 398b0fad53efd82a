"""3D jigsaw (Visual Jigsaw's depth ordering): k points with valid depth, far enough apart in
the image and in depth, marked with numbered circles; the answer is the labels from nearest to
farthest.

    puzzle = depth_jigsaw(images, depth, k=6, generator=g)
    puzzle.images   # [B,3,H,W] with markers 1…k drawn
    puzzle.points   # [B,k,2] (x, y) pixel centres, label j+1 at points[:, j]
    puzzle.answer   # [B,k] 1-based labels, nearest first

Point picking and drawing are batched over images (the loops run over the k ≤ 9 markers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unirl.errors import UnirlError

# 3x5 bitmaps of the digits 1-9, row by row ("#" ink); markers are labelled with one digit.
_DIGITS = {
    1: ".#.##..#..#.###", 2: "##...#.#.#..###", 3: "##...#.#...###.", 4: "#.##.####..#..#",
    5: "####..##...###.", 6: ".###..####.####", 7: "###..#.#..#..#.", 8: "####.#####.####",
    9: "####.####..###.",
}
FONT = torch.tensor([[c == "#" for c in _DIGITS[d]] for d in range(1, 10)]).view(9, 5, 3)


@dataclass
class DepthJigsaw:
    images: torch.Tensor  # [B,3,H,W] with the markers
    points: torch.Tensor  # [B,k,2] float (x, y)
    depths: torch.Tensor  # [B,k] metres at each point
    answer: torch.Tensor  # [B,k] long, 1-based labels nearest first


def pick_points(depth: torch.Tensor, k: int = 6, min_distance: float = 14.0, min_depth_gap: float = 0.1,
                margin: int = 6, candidates: int = 512, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B,k,2] (x, y) pixels with depth > 0, at least `min_distance` pixels from each other and
    differing in depth by at least `min_depth_gap` metres, `margin` pixels inside the border (so
    a marker fits). Candidates are drawn at random among valid pixels; each of the k rounds takes,
    for every image at once, the first candidate compatible with the points already taken."""
    b, h, w = depth.shape
    inner = torch.zeros(h, w, dtype=torch.bool, device=depth.device)
    inner[margin:h - margin, margin:w - margin] = True
    valid = (depth > 0) & inner
    if not valid.flatten(1).any(1).all():
        raise UnirlError("depth: an image has no valid depth inside the border")
    # Drawn where the generator lives (then moved), so a seed picks the same points on every device.
    weights = valid.flatten(1).float().to(generator.device if generator is not None else depth.device)
    flat = torch.multinomial(weights, candidates, replacement=True, generator=generator).to(depth.device)  # [B,M]
    xy = torch.stack([flat % w, flat // w], dim=-1).float() + 0.5  # [B,M,2] pixel centres
    z = depth.flatten(1).gather(1, flat)  # [B,M]
    free = torch.ones_like(z, dtype=torch.bool)
    chosen = []
    for _ in range(k):
        if not free.any(1).all():
            raise UnirlError(f"depth: could not place {k} points {min_distance:g} px and {min_depth_gap:g} m apart "
                             "in every image (fewer points, or smaller gaps)")
        first = free.float().argmax(1)  # the first free candidate of each image
        point_xy, point_z = xy[torch.arange(b), first], z[torch.arange(b), first]
        chosen.append(point_xy)
        free &= (xy - point_xy[:, None]).norm(dim=-1) >= min_distance
        free &= (z - point_z[:, None]).abs() >= min_depth_gap
    return torch.stack(chosen, dim=1)


def draw_markers(images: torch.Tensor, points: torch.Tensor, radius: int = 6) -> torch.Tensor:
    """White discs with a black rim and the black digit j+1 at points[:, j], drawn on every image
    at once; returns new images."""
    b, _, h, w = images.shape
    k = points.shape[1]
    if k > 9:
        raise UnirlError(f"markers: at most 9 (one digit each), got {k}")
    font = FONT.to(images.device)
    scale = max(1, (2 * radius - 2) // 6)  # digit cell size: the 3x5 glyph fits inside the disc
    ys = torch.arange(h, device=images.device, dtype=torch.float32).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=images.device, dtype=torch.float32).view(1, 1, w) + 0.5
    out = images.clone()
    white = torch.ones(3, device=images.device).view(1, 3, 1, 1)
    for j in range(k):
        dx, dy = xs - points[:, j, 0].view(b, 1, 1), ys - points[:, j, 1].view(b, 1, 1)  # [B,H,W]
        distance = (dx ** 2 + dy ** 2).sqrt()
        disc, rim = distance <= radius, (distance > radius - 1.2) & (distance <= radius)
        col, row = torch.floor(dx / scale + 1.5).long(), torch.floor(dy / scale + 2.5).long()
        in_glyph = (col >= 0) & (col < 3) & (row >= 0) & (row < 5)
        ink = in_glyph & font[j][row.clamp(0, 4), col.clamp(0, 2)]
        out = torch.where(disc[:, None], white, out)
        out = torch.where((rim | ink)[:, None], torch.zeros_like(white), out)
    return out


def depth_jigsaw(images: torch.Tensor, depth: torch.Tensor, k: int = 6, min_distance: float = 14.0,
                 min_depth_gap: float = 0.1, radius: int = 6, generator: torch.Generator | None = None) -> DepthJigsaw:
    """Images [B,3,H,W] and depth [B,H,W] (metres, 0 = no reading) → marked images and answers.
    The points are drawn in random order, so label j+1 says nothing about depth."""
    if depth.shape != (images.shape[0], *images.shape[-2:]):
        raise UnirlError(f"depth: expected shape {(images.shape[0], *images.shape[-2:])}, got {tuple(depth.shape)}")
    points = pick_points(depth, k, min_distance, min_depth_gap, margin=radius, generator=generator)
    ix, iy = points[..., 0].long(), points[..., 1].long()
    depths = depth[torch.arange(depth.shape[0])[:, None], iy, ix]  # [B,k]
    return DepthJigsaw(draw_markers(images, points, radius), points, depths, depths.argsort(dim=1) + 1)


def depth_jigsaw_question(k: int) -> str:
    return (f"The image has {k} numbered points. List the point labels from the nearest to the camera to the "
            f"farthest, separated by commas.")
