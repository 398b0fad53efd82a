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

    A run directory that already holds a run is never overwritten: running the same config into
    it again continues it; another config needs --resume (or another --out)."""
    run_dir = Path(run_dir)
    text = yaml.safe_dump(to_dict(config) | (extra or {}), sort_keys=False)
    started = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if started and not resume:
        saved = run_dir / "config.yaml"
        if not (saved.is_file() and saved.read_text() == text):  # the same command again continues the run
            raise UnirlError(f"{run_dir}: already holds a run with another config "
                             "(pass --resume to continue it with this one, or choose another --out)")
        resume = True
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", text)
    return latest_checkpoint(run_dir) if resume else None
