"""The run directory (DESIGN.md): config.yaml, metrics.jsonl, samples/, checkpoints/, report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from unirl.atomic import atomic_write_text
from unirl.config import to_dict
from unirl.engine.checkpoint import latest_checkpoint
from unirl.errors import UnirlError


def prepare_run_dir(run_dir: str | Path, config: Any, resume: bool, extra: dict[str, Any] | None = None
                    ) -> Path | None:
    """Create or reopen a run directory, write its resolved config.yaml, and return the
    checkpoint to resume from (None: start from step 0).

    A run directory that already holds a run is never overwritten silently: resume it or
    choose another --out."""
    run_dir = Path(run_dir)
    started = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if started and not resume:
        raise UnirlError(f"{run_dir}: already holds a run (pass --resume to continue it, or choose another --out)")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(config) | (extra or {}), sort_keys=False))
    return latest_checkpoint(run_dir) if resume else None
