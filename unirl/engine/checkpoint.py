"""Checkpoints: written atomically, found again on resume.

runs/<name>/checkpoints/step-<n>/ holds the model folder (safetensors weights + configs, loadable
by `load_model`), optimizer.pt, rng.pt and state.json. It is written to a temporary sibling and
renamed into place only when complete, so a crash never leaves a half-written step-<n>.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from unirl.errors import UnirlError

STATE_FILE = "state.json"


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain Python values, so `torch.load(weights_only=True)` reads them."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, model, optimizer: torch.optim.Optimizer | None = None,
                    extra: dict[str, Any] | None = None, name: str | None = None,
                    tensors: dict[str, dict[str, torch.Tensor]] | None = None,
                    optimizer_state: dict[str, Any] | None = None) -> Path:
    """Write checkpoints/<name or step-n>/ atomically; returns its path. `tensors`: more files,
    {file name: tensors}, written as safetensors (e.g. LoRA adapters). `optimizer_state`: saved
    instead of `optimizer.state_dict()` (FSDP's gathered state)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / (name or f"step-{step}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        model.save_pretrained(tmp)
        if optimizer_state is None and optimizer is not None:
            optimizer_state = optimizer.state_dict()
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        for filename, named in (tensors or {}).items():
            save_file(named, str(tmp / filename))
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **(extra or {})}, indent=1))
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def link_checkpoint(checkpoint: str | Path, name: str) -> Path:
    """Give a complete checkpoint a second name beside it (e.g. "final"), atomically, its files
    hard-linked rather than written again (checkpoints are replaced, never edited in place)."""
    checkpoint = Path(checkpoint)
    final = checkpoint.parent / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=checkpoint.parent))
    try:
        shutil.copytree(checkpoint, tmp, copy_function=os.link, dirs_exist_ok=True)
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename a complete temporary folder to `final`, replacing an older one."""
    if final.exists():
        old = final.parent / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete step-<n> checkpoint of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    steps = []
    for path in root.glob("step-*") if root.is_dir() else []:
        suffix = path.name.removeprefix("step-")
        if suffix.isdigit() and (path / STATE_FILE).is_file():
            steps.append((int(suffix), path))
    return max(steps)[1] if steps else None


def load_training_state(checkpoint: str | Path, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore optimizer and RNG states from a checkpoint; returns its state.json."""
    checkpoint = Path(checkpoint)
    state_path = checkpoint / STATE_FILE
    if not state_path.is_file():
        raise UnirlError(f"{checkpoint}: not a complete checkpoint (no {STATE_FILE})")
    if optimizer is not None and (checkpoint / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    if (checkpoint / "rng.pt").is_file():
        set_rng_state(torch.load(checkpoint / "rng.pt", weights_only=True))
    return json.loads(state_path.read_text())

