"""The exact detector of the shapes world, as batched tensor operations on the images' device.

1. colour segmentation: each pixel takes its nearest palette colour (or the table's grey), if
   within `max_color_distance`;
2. connected components per colour (8-connected), by iterated 3x3 max-pooling of pixel labels;
3. per component: area and box; then every shape is fitted to the box (its radius and centre
   solved from the shape's known extent) and rendered on the pixel grid; class = the shape whose
   rendering best overlaps the component, score = that IoU (about 0.95 to 1 on clean renders).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modalities.image.shapes import BACKGROUND, PALETTE, SHAPES, Scene, SceneObject, inside, render

COLOR_NAMES = tuple(PALETTE)


@dataclass
class Components:
    """All components of a batch, flattened: component k is in image `image[k]`."""

    image: torch.Tensor  # [M] long
    color: torch.Tensor  # [M] long, index into COLOR_NAMES
    shape: torch.Tensor  # [M] long, index into SHAPES
    score: torch.Tensor  # [M] float in [0,1]
    box: torch.Tensor  # [M,4] x1, y1, x2, y2 (x2, y2 one past the last pixel)
    area: torch.Tensor  # [M] pixels


_moments: dict[torch.device, torch.Tensor] = {}


def shape_moments(device: torch.device) -> torch.Tensor:
    """[S,7]: each shape's area, centroid (u, v) and box (u1, v1, u2, v2) in object units
    (centre 0, radius 1), measured on a large rendering."""
    if device not in _moments:
        radius, centre, size = 60.0, 80.0, 160
        scenes = [Scene({}, [SceneObject(s, "black", centre, centre, radius)]) for s in SHAPES]
        masks = render(scenes, size=size, device=device).sum(1) < 0.5  # black on grey
        area, cx, cy = mask_moments(masks)
        box = (mask_boxes(masks) - centre) / radius
        _moments[device] = torch.cat([torch.stack([area / radius**2, (cx - centre) / radius, (cy - centre) / radius],
                                                  -1), box], -1)
    return _moments[device]


def mask_moments(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[M,H,W] → area, centroid x, centroid y (pixel centres at +0.5)."""
    h, w = masks.shape[-2:]
    masks = masks.float()
    area = masks.sum((-1, -2))
    xs = torch.arange(w, device=masks.device, dtype=torch.float32) + 0.5
    ys = torch.arange(h, device=masks.device, dtype=torch.float32) + 0.5
    cx = (masks.sum(-2) * xs).sum(-1) / area.clamp(min=1)
    cy = (masks.sum(-1) * ys).sum(-1) / area.clamp(min=1)
    return area, cx, cy


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """[..., H, W] bool → [..., 4] x1, y1, x2, y2 with x2, y2 one past the last pixel (as mmdet's
    mask2bbox); an empty mask gives zeros."""
    h, w = masks.shape[-2:]
    xs, ys = masks.any(-2), masks.any(-1)
    col, row = torch.arange(w, device=masks.device), torch.arange(h, device=masks.device)
    boxes = torch.stack([torch.where(xs, col, w).amin(-1), torch.where(ys, row, h).amin(-1),
                         torch.where(xs, col + 1, 0).amax(-1), torch.where(ys, row + 1, 0).amax(-1)], -1).float()
    return torch.where(xs.any(-1)[..., None], boxes, torch.zeros_like(boxes))


def fit_shapes(masks: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """For each component mask [M,H,W]: (best shape index [M], its IoU [M]). Every shape is
    placed twice, by moments (radius from the area, centre from the centroid) and by the box
    (radius from the width, centre from the box), rendered on the pixel grid, and compared with
    the component pixel by pixel; the better placement counts. Two placements because at a few
    pixels' radius either estimate alone is off by pixelation for thin shapes (rings, stars)."""
    device = masks.device
    moments = shape_moments(device)  # [S,7]
    s, (h, w) = len(SHAPES), masks.shape[-2:]
    grid_x = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    grid_y = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    ious = []
    for start in range(0, len(masks), chunk):
        mask = masks[start:start + chunk]
        area, mx, my = mask_moments(mask)
        box = mask_boxes(mask)
        by_area = (area[:, None] / moments[None, :, 0]).sqrt()  # [m,S]
        by_box = (box[:, 2:3] - box[:, 0:1]) / (moments[None, :, 5] - moments[None, :, 3])
        radius = torch.stack([by_area, by_box], -1)  # [m,S,2]
        cx = torch.stack([mx[:, None] - moments[None, :, 1] * by_area, box[:, 0:1] - moments[None, :, 3] * by_box], -1)
        cy = torch.stack([my[:, None] - moments[None, :, 2] * by_area,
                          box[:, 1:2] - moments[None, :, 4] * (box[:, 3:4] - box[:, 1:2])
                          / (moments[None, :, 6] - moments[None, :, 4])], -1)
        u = ((grid_x.view(1, 1, 1, 1, w) - cx[..., None, None]) / radius[..., None, None]).expand(-1, -1, -1, h, w)
        v = ((grid_y.view(1, 1, 1, h, 1) - cy[..., None, None]) / radius[..., None, None]).expand(-1, -1, -1, h, w)
        ids = torch.arange(s, device=device).repeat_interleave(2).repeat(len(mask))
        drawn = inside(ids, u.reshape(-1, h, w), v.reshape(-1, h, w)).view(len(mask), s, 2, h, w)
        inter = (drawn & mask[:, None, None]).sum((-1, -2)).float()
        union = (drawn | mask[:, None, None]).sum((-1, -2)).float()
        ious.append((inter / union.clamp(min=1)).amax(-1))
    iou = torch.cat(ious) if ious else torch.zeros(0, s, device=device)
    score, shape = iou.max(-1)
    return shape, score


def connected_components(masks: torch.Tensor, max_iterations: int = 256) -> torch.Tensor:
    """[B,H,W] bool → [B,H,W] long labels (0 = not in the mask), 8-connected; one label per
    component (the largest pixel index + 1 in it)."""
    b, h, w = masks.shape
    index = torch.arange(1, h * w + 1, device=masks.device, dtype=torch.float32).view(1, h, w)
    labels = torch.where(masks, index, torch.zeros(1, device=masks.device)).unsqueeze(1)
    keep = masks.unsqueeze(1).float()
    for step in range(max_iterations):
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * keep
        if step % 4 == 3 and torch.equal(grown, labels):
            break
        labels = grown
    return labels[:, 0].long()


@torch.no_grad()
def detect_components(images: torch.Tensor, max_color_distance: float = 0.3, min_area: int = 12) -> Components:
    images = images.float()
    n, _, h, w = images.shape
    palette = torch.tensor([PALETTE[c] for c in COLOR_NAMES] + [BACKGROUND], device=images.device)  # [C+1,3]
    distance = torch.cdist(images.permute(0, 2, 3, 1).reshape(n, h * w, 3), palette[None].expand(n, -1, -1))
    nearest_distance, nearest = distance.min(-1)
    nearest = torch.where(nearest_distance <= max_color_distance, nearest, torch.full_like(nearest, -1))
    nearest = nearest.view(n, h, w)
    colors = len(COLOR_NAMES)
    per_color = nearest[:, None] == torch.arange(colors, device=images.device).view(1, -1, 1, 1)  # [N,C,H,W]
    # Components only where a colour is present at all (most images use few of the 10).
    flat = per_color.view(n * colors, h, w)
    active = flat.flatten(1).any(-1).nonzero().flatten()
    labels = torch.zeros(n * colors, h, w, dtype=torch.long, device=images.device)
    labels[active] = connected_components(flat[active])
    labels = labels.view(n, colors, h, w)

    keys = labels + (torch.arange(n * colors, device=images.device).view(n, colors, 1, 1) * (h * w + 1))
    on = labels > 0
    unique, inverse = torch.unique(keys[on], return_inverse=True)
    m = len(unique)
    area = torch.zeros(m, device=images.device).index_add_(0, inverse, torch.ones_like(inverse, dtype=torch.float32))
    big = area >= min_area
    image_color = unique // (h * w + 1)
    component_masks = labels.view(n * colors, h, w)[image_color] == (unique % (h * w + 1)).view(-1, 1, 1)
    component_masks, image_color, area = component_masks[big], image_color[big], area[big]
    boxes = mask_boxes(component_masks)
    shape, score = fit_shapes(component_masks)
    return Components(image=image_color // colors, color=image_color % colors, shape=shape, score=score, box=boxes,
                      area=area)
