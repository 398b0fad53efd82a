"""Colour of a detected object by CLIP zero-shot classification, as GenEval does it: the object's
mask composited over a #999999 background, cropped to its box, resized (shorter side) and
centre-cropped to CLIP's input, scored against the 10 colour names under three templates
whose text embeddings are averaged. All crops of a batch go through one batched ROI resample
and one CLIP forward on the device."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torchvision.ops import roi_align

from unirl.errors import UnirlError
from unirl.specs import COLORS

TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")
BACKGROUND = 0x99 / 255.0
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip(spec: str, device: torch.device) -> tuple[torch.nn.Module, object, int]:
    """ViT-L-14 (openai weights from open_clip's cache or the hub), ARCH:/path/to/weights
    (a local open_clip checkpoint file), or clip-tiny (random init, for tests)."""
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-L-14")  # the BPE vocabulary ships with open_clip
    if spec == "clip-tiny":
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16,
                                                                          patch_size=8, image_size=32),
                                   text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2,
                                                        layers=1))
    else:
        arch, _, path = spec.partition(":")
        if path and not Path(path).is_file():
            raise UnirlError(f"{path}: CLIP weights file not found")
        if arch not in open_clip.list_models():
            raise UnirlError(f"--clip {spec}: unknown open_clip architecture {arch!r}")
        try:
            logging.disable(logging.ERROR)  # open_clip logs its own download failure before raising
            model = open_clip.create_model(arch, pretrained=path or "openai", device=device)
        except Exception as e:  # offline without cached weights, open_clip raises hub errors of several kinds
            raise UnirlError(f"--clip {spec}: could not load {arch} weights ({type(e).__name__}); offline, download "
                             f"them once and pass --clip {arch}:/path/to/open_clip_model.bin") from None
        finally:
            logging.disable(logging.NOTSET)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return model.to(device).eval(), tokenizer, int(size)


class ClipColorClassifier:
    def __init__(self, spec: str = "ViT-L-14", device: torch.device | str = "cpu"):
        self.spec, self.device = spec, torch.device(device)
        self.model, self.tokenizer, self.size = load_clip(spec, self.device)
        self.mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        self._text: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_classifier(self, classname: str) -> torch.Tensor:
        """[dim, 10]: per colour, the normalised mean of its normalised template embeddings."""
        if classname not in self._text:
            texts = [t.format(c=c, obj=classname) for c in COLORS for t in TEMPLATES]
            emb = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
            emb = torch.nn.functional.normalize(emb, dim=-1).view(len(COLORS), len(TEMPLATES), -1).mean(1)
            self._text[classname] = torch.nn.functional.normalize(emb, dim=-1).T
        return self._text[classname]

    @torch.no_grad()
    def crops(self, images: torch.Tensor, masks: torch.Tensor | None, boxes: torch.Tensor) -> torch.Tensor:
        """images [R,3,H,W] (one per request), masks [R,H,W] bool or None, boxes [R,4] →
        CLIP inputs [R,3,S,S]: masked over grey, box-cropped, shorter side to S, centre-cropped."""
        if masks is not None:
            images = torch.where(masks[:, None], images, torch.full_like(images, BACKGROUND))
        x1, y1, x2, y2 = boxes.round().unbind(-1)
        w, h = (x2 - x1).clamp(min=1), (y2 - y1).clamp(min=1)
        side = torch.minimum(w, h)
        cx, cy = x1 + w / 2, y1 + h / 2
        # Sample between the centres of the edge pixels, so no pixel outside the box bleeds in
        # (a PIL crop-then-resize never sees them either).
        half = (side - 1).clamp(min=0) / 2
        square = torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1)
        rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], square], dim=1)
        out = roi_align(images.float(), rois.float(), output_size=self.size, spatial_scale=1.0, sampling_ratio=-1,
                        aligned=True)
        return (out - self.mean) / self.std

    @torch.no_grad()
    def classify(self, images: torch.Tensor, masks: torch.Tensor | None, boxes: torch.Tensor,
                 classnames: list[str]) -> list[str]:
        if len(classnames) == 0:
            return []
        features = self.model.encode_image(self.crops(images.to(self.device), masks, boxes.to(self.device))).float()
        features = torch.nn.functional.normalize(features, dim=-1)
        names = sorted(set(classnames))
        bank = torch.stack([self.text_classifier(n) for n in names])  # [C, dim, 10]
        which = torch.tensor([names.index(n) for n in classnames], device=self.device)
        logits = torch.einsum("rd,rdk->rk", features, bank[which])
        return [COLORS[i] for i in logits.argmax(-1).tolist()]
