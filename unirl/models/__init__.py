"""Unified models behind one interface. `load_model(spec)` is the only entry point.

Specs:
  toy                      the shipped toy model (assets/toy-janus), offline
  toy-planner              the toy pretrained as SAIL's table-top planner (assets/toy-sail-planner)
  janus-tiny               a random-init tiny Janus, for tests (seeded)
  showo-tiny               a random-init tiny Show-o, for tests (seeded)
  janus:PATH               an HF-format Janus / Janus-Pro folder (or a hub id where online)
  showo:PATH               a Show-o checkpoint folder (layout: unirl.models.showo.load_showo_folder)
  PATH                     any folder this toolkit saved (a checkpoint), or an HF Janus folder
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from unirl.errors import UnirlError
from unirl.models.base import ImageRollout, Images, UnifiedModel, resolve_device_dtype

__all__ = ["ImageRollout", "Images", "UnifiedModel", "load_model", "TOY_MODEL_DIR", "TOY_PLANNER_DIR"]

TOY_MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "toy-janus"
TOY_PLANNER_DIR = Path(__file__).resolve().parents[2] / "assets" / "toy-sail-planner"
SHIPPED = {  # spec: (folder, how to rebuild it)
    "toy": (TOY_MODEL_DIR, "unirl pretrain-toy"),
    "toy-planner": (TOY_PLANNER_DIR, "unirl train configs/sail/planner.yaml --out RUN, then "
                                     "unirl export RUN/checkpoints/final --out assets/toy-sail-planner"),
}


def _backend_of_folder(path: Path) -> str:
    card = path / "unirl_model.json"
    if card.is_file():
        return json.loads(card.read_text())["backend"]
    config = path / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type", "")
        if model_type == "janus":
            return "janus"
        if json.loads(config.read_text()).get("_class_name") == "Showo":
            return "showo"
        raise UnirlError(f"{config}: model_type {model_type!r} is not a supported backend "
                         f"(expected 'janus', or a Show-o config)")
    raise UnirlError(f"{path}: expected a model folder with config.json (or unirl_model.json)")


def load_model(spec: str, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
               seed: int | None = None) -> UnifiedModel:
    from unirl.models import janus, showo

    dev, dt = resolve_device_dtype(device, dtype)
    if spec == "janus-tiny":
        model, processor = janus.build_tiny_janus(seed=0 if seed is None else seed)
        return janus.JanusModel(model, processor, spec=spec, device=dev, dtype=dt)
    if spec == "showo-tiny":
        return showo.build_tiny_showo(seed=0 if seed is None else seed, device=dev, dtype=dt, spec=spec)
    if spec in SHIPPED:
        folder, how = SHIPPED[spec]
        if not folder.is_dir():
            raise UnirlError(f"{folder}: the {spec} model is not built yet (run `{how}`)")
        return janus.load_janus_folder(str(folder), spec, dev, dt)
    if spec.startswith("janus:"):
        path = spec.split(":", 1)[1]
        if not Path(path).is_dir() and (path.startswith((".", "/", "~")) or path.count("/") != 1):
            raise UnirlError(f"{path}: no such Janus model folder")
        return janus.load_janus_folder(path, spec, dev, dt)
    if spec.startswith("showo:"):
        return showo.load_showo_folder(spec.split(":", 1)[1], spec, dev, dt)
    path = Path(spec)
    if path.is_dir():
        backend = _backend_of_folder(path)
        if backend == "janus":
            return janus.load_janus_folder(str(path), spec, dev, dt)
        if backend == "showo":
            return showo.load_showo_folder(path, spec, dev, dt)
        raise UnirlError(f"{path}: backend {backend!r} is not available")
    raise UnirlError(f"{spec}: not a model spec (toy, toy-planner, janus-tiny, showo-tiny, janus:PATH, showo:PATH) "
                     f"nor a model folder")
