"""metrics.jsonl always; TensorBoard too when it is installed."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends one JSON line per logged step to RUN/metrics.jsonl (TRL's metric names).

    On resume from step k, lines for steps after k (work that was lost) are dropped first, so
    the file always describes the run that the newest checkpoint continues."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.lock = threading.Lock()  # stages may train side by side in threads
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard is an optional extra
                self.writer = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, "time": round(time.time(), 3), **metrics}
        with self.lock, self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def rounded(metrics: dict[str, Any], digits: int = 6) -> dict[str, Any]:
    """Finite floats rounded for metrics.jsonl (non-finite ones kept, so a NaN shows as one)."""
    return {k: (round(v, digits) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
