"""GenEval's folder layout: <dir>/<index:05d>/metadata.jsonl (one JSON object, the prompt's spec)
and <dir>/<index:05d>/samples/<k:04d>.png. Reading also accepts 5-digit sample names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from modalities.image.io import save_images
from unirl.errors import UnirlError
from unirl.specs import Spec, validate_spec


@dataclass
class PromptFolder:
    index: int
    spec: Spec
    samples: list[Path]


def write_prompt_folder(root: Path, index: int, spec: Spec, images: torch.Tensor) -> Path:
    folder = root / f"{index:05d}"
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    (folder / "metadata.jsonl").write_text(json.dumps(spec) + "\n")
    save_images(images, [folder / "samples" / f"{k:04d}.png" for k in range(images.shape[0])])
    return folder


def read_layout(root: str | Path) -> list[PromptFolder]:
    """Every prompt folder under root, in index order. Files at the top level are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise UnirlError(f"{root}: not a folder of GenEval samples")
    folders = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        meta = folder / "metadata.jsonl"
        if not meta.is_file():
            raise UnirlError(f"{meta}: missing (every prompt folder needs its spec)")
        try:
            spec = json.loads(meta.read_text().strip().splitlines()[0])
        except (json.JSONDecodeError, IndexError):
            raise UnirlError(f"{meta}: expected one JSON object on its first line") from None
        validate_spec(spec, where=str(meta))
        samples = sorted((p for p in (folder / "samples").glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
        folders.append(PromptFolder(int(folder.name), spec, samples))
    if not folders:
        raise UnirlError(f"{root}: no prompt folders (expected 00000/metadata.jsonl, 00000/samples/0000.png, ...)")
    return folders
