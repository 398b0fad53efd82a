"""GenEval's detector without mmdet: transformers' Mask2Former (COCO instance segmentation),
post-processed as mmdet's Mask2Former does for instances, and CLIP for colours.

Instances: the top `max_per_image` (query, class) pairs by class probability; each query's mask
logits resized to the image; binary mask = logit > 0; score = class prob × mean sigmoid over the
mask; box = the mask's extent (x2, y2 exclusive, as mmdet's mask2bbox). Batched on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from evaluators.geneval.detectors.base import ColorRequest, Detections, Detector
from evaluators.geneval.detectors.clip_colors import ClipColorClassifier
from evaluators.geneval.prompts import COCO_CLASSES
from modalities.image.shapes_detect import mask_boxes
from unirl.errors import UnirlError

DEFAULT_WEIGHTS = "facebook/mask2former-swin-small-coco-instance"
# COCO's own names for the four classes GenEval renames.
ALIASES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
           "hair dryer": "hair drier"}


def tiny_mask2former():
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    config = Mask2FormerConfig(
        backbone_config=dict(model_type="swin", image_size=64, embed_dim=16, depths=[1, 1, 1, 1],
                             num_heads=[1, 1, 2, 2], window_size=4,
                             out_features=["stage1", "stage2", "stage3", "stage4"]),
        feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, encoder_layers=1,
        decoder_layers=2, num_attention_heads=2, dim_feedforward=64, num_queries=20,
        id2label=dict(enumerate(COCO_CLASSES)), label2id={n: i for i, n in enumerate(COCO_CLASSES)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Mask2FormerForUniversalSegmentation(config)


def class_names(id2label: dict) -> list[str]:
    names = [id2label[i] for i in sorted(id2label)]
    if len(names) == 80 and not all(ALIASES.get(n, n) in COCO_CLASSES for n in names):
        return list(COCO_CLASSES)  # an 80-class COCO head with unusual names: COCO order is the contract
    return [ALIASES.get(n, n) for n in names]


class Mask2FormerDetector(Detector):
    name = "mask2former"

    def __init__(self, spec: str = "mask2former", device: str | torch.device | None = None, clip: str = "ViT-L-14",
                 max_per_image: int = 100, shortest_edge: int = 800, longest_edge: int = 1333):
        from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.spec, self.max_per_image = spec, max_per_image
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        if spec == "mask2former-tiny":
            model, clip, shortest_edge, longest_edge = tiny_mask2former(), "clip-tiny", 64, 128
        else:
            source = spec.split(":", 1)[1] if ":" in spec else DEFAULT_WEIGHTS
            local = Path(source).is_dir()
            try:
                model = Mask2FormerForUniversalSegmentation.from_pretrained(source, local_files_only=local)
            except OSError:
                where = f"{source}: not a Mask2Former folder" if local else (
                    f"{source}: Mask2Former weights are not in the local cache and the hub is unreachable")
                raise UnirlError(f"{where}; download {DEFAULT_WEIGHTS} once and pass --detector mask2former:PATH"
                                 ) from None
            try:
                processor = Mask2FormerImageProcessor.from_pretrained(source, local_files_only=local)
                mean, std = tuple(processor.image_mean), tuple(processor.image_std)
                shortest_edge = processor.size.get("shortest_edge", shortest_edge)
                longest_edge = processor.size.get("longest_edge", longest_edge) or longest_edge
            except OSError:
                pass  # no preprocessor config: mmdet's test resolution and ImageNet statistics
        self.model = model.to(self.device).eval()
        self.classes = class_names(model.config.id2label)
        self.shortest_edge, self.longest_edge = shortest_edge, longest_edge
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.clip = ClipColorClassifier(clip, self.device)

    def describe(self) -> dict:
        return {"detector": self.name, "weights": self.spec, "clip": self.clip.spec,
                "max_per_image": self.max_per_image, "input_edges": [self.shortest_edge, self.longest_edge]}

    def _input_size(self, h: int, w: int) -> tuple[int, int]:
        scale = min(self.shortest_edge / min(h, w), self.longest_edge / max(h, w))
        return round(h * scale), round(w * scale)

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[Detections]:
        images = images.to(self.device, torch.float32)
        n, _, h, w = images.shape
        ih, iw = self._input_size(h, w)
        pixels = F.interpolate(images, size=(ih, iw), mode="bilinear", align_corners=False, antialias=True)
        pixels = (pixels - self.mean) / self.std
        pad_h, pad_w = -ih % 32, -iw % 32  # the backbone wants multiples of 32; pad bottom/right as mmdet
        pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
        out = self.model(pixel_values=pixels, pixel_mask=None)
        probs = out.class_queries_logits.float().softmax(-1)[..., :-1]  # [N,Q,C], no-object dropped
        num_classes = probs.shape[-1]
        k = min(self.max_per_image, probs.shape[1] * num_classes)
        scores, flat = probs.flatten(1).topk(k, dim=1)  # [N,K]
        labels, queries = flat % num_classes, flat // num_classes
        mask_logits = out.masks_queries_logits.float().gather(
            1, queries[..., None, None].expand(-1, -1, *out.masks_queries_logits.shape[-2:]))
        # Mask logits are at 1/4 of the padded input: to the padded input, crop the padding, to the image.
        mask_logits = F.interpolate(mask_logits, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        mask_logits = F.interpolate(mask_logits[..., :ih, :iw], size=(h, w), mode="bilinear", align_corners=False)
        binary = mask_logits > 0
        mask_scores = (mask_logits.sigmoid() * binary).flatten(2).sum(-1) / (binary.flatten(2).sum(-1) + 1e-6)
        scores = scores * mask_scores
        boxes = mask_boxes(binary)  # [N,K,4]
        rows = torch.cat([boxes, scores[..., None]], dim=-1).cpu().numpy()
        labels_np = labels.cpu().numpy()
        results = []
        for i in range(n):  # regroup by class: host-side bookkeeping only
            per_class = {}
            for label in np.unique(labels_np[i]):
                idx = np.nonzero(labels_np[i] == label)[0]
                per_class[self.classes[label]] = (rows[i, idx], torch.from_numpy(idx))
            results.append(Detections(boxes={c: r for c, (r, _) in per_class.items()},
                                      extra={"masks": binary[i], "rows": {c: q for c, (_, q) in per_class.items()}}))
        return results

    @torch.no_grad()
    def colors(self, images: torch.Tensor, detections: list[Detections], requests: list[ColorRequest]) -> list[str]:
        if not requests:
            return []
        image_idx = torch.tensor([i for i, _, _ in requests], device=self.device)
        masks = torch.stack([detections[i].extra["masks"][detections[i].extra["rows"][c][j]] for i, c, j in requests])
        boxes = torch.tensor(np.stack([detections[i].boxes[c][j][:4] for i, c, j in requests]), device=self.device)
        return self.clip.classify(images.to(self.device)[image_idx], masks, boxes, [c for _, c, _ in requests])

