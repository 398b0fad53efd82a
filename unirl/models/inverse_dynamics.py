"""The inverse dynamics model: which action turns frame t into frame t+1.

SAIL's planner imagines the next frame; this network reads the action that gets there off the
pair (current frame, planned frame). A small convolutional regressor: frames are resized to
`input_size`, stacked with their difference (what moved), and mapped to `action_dim` commands in
[-1, 1]. It trains by plain regression on collected transitions (`fit`), which need not be
successful ones: every transition shows what an action does."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from unirl.atomic import atomic_dir
from unirl.errors import UnirlError
from unirl.progress import progress

CONFIG_FILE, WEIGHTS_FILE = "inverse_dynamics.json", "inverse_dynamics.safetensors"


@dataclass
class InverseDynamicsConfig:
    action_dim: int = 2
    input_size: int = 48
    width: int = 32


class InverseDynamics(nn.Module):
    def __init__(self, config: InverseDynamicsConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.features = nn.Sequential(
            nn.Conv2d(9, w, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.GELU(),
        )
        side = config.input_size // 8
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * side * side, 128), nn.GELU(),
                                  nn.Linear(128, config.action_dim))

    def forward(self, frames: torch.Tensor, next_frames: torch.Tensor) -> torch.Tensor:
        """frames, next_frames [N,3,H,W] in [0,1] → actions [N, action_dim] in [-1, 1]."""
        size = (self.config.input_size, self.config.input_size)
        a, b = (F.interpolate(x.float(), size=size, mode="area") if x.shape[-2:] != size else x.float()
                for x in (frames, next_frames))
        return torch.tanh(self.head(self.features(torch.cat([a, b, b - a], dim=1))))

    def save(self, path: str | Path) -> None:
        with atomic_dir(Path(path), overwrite=True) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(asdict(self.config)) + "\n")
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp / WEIGHTS_FILE))

    @classmethod
    def load(cls, path: str | Path) -> InverseDynamics:
        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise UnirlError(f"{path}: not an inverse dynamics folder ({CONFIG_FILE} and {WEIGHTS_FILE} expected)")
        model = cls(InverseDynamicsConfig(**json.loads((path / CONFIG_FILE).read_text())))
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        return model


def fit(model: InverseDynamics, frames: torch.Tensor, next_frames: torch.Tensor, actions: torch.Tensor,
        steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Regress actions [N, action_dim] on (frames, next_frames) [N,3,H,W] (uint8 or float in
    [0,1]) with AdamW for `steps` minibatches; returns the losses (mean squared error)."""
    if len(frames) == 0:
        raise UnirlError("inverse dynamics: no transitions to train on")
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in progress(range(steps), desc="inverse dynamics", leave=False):
        idx = torch.randint(len(frames), (min(batch_size, len(frames)),), generator=generator)
        a, b = (as_float(x[idx]).to(device) for x in (frames, next_frames))
        loss = F.mse_loss(model(a, b), actions[idx].to(device).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def as_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (how experience is stored) or floats → floats in [0,1]."""
    return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()


def as_uint8(frames: torch.Tensor) -> torch.Tensor:
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8)
