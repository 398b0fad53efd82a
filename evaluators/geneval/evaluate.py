"""Judge images against their specs with a detector and GenEval's rules; batched."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from evaluators.geneval.detectors import Detector
from evaluators.geneval.layout import read_layout
from evaluators.geneval.rules import (
    COUNTING_THRESHOLD,
    MAX_OBJECTS,
    NMS_THRESHOLD,
    POSITION_THRESHOLD,
    THRESHOLD,
    Objects,
    clauses_met,
    judge,
    select_indices,
)
from evaluators.geneval.summary import result_row
from modalities.image.io import load_image
from unirl.errors import UnirlError
from unirl.progress import progress
from unirl.specs import Spec


@dataclass
class Thresholds:
    """GenEval's defaults; recorded with every result."""

    threshold: float = THRESHOLD
    counting_threshold: float = COUNTING_THRESHOLD
    max_objects: int = MAX_OBJECTS
    nms_threshold: float = NMS_THRESHOLD
    position_threshold: float = POSITION_THRESHOLD


@dataclass
class Verdict:
    correct: bool
    partial: float  # fraction of include clauses met (0 when an exclude clause fails)
    reason: str
    objects: Objects


def judge_batch(images: torch.Tensor, specs: list[Spec], detector: Detector,
                thresholds: Thresholds | None = None) -> list[Verdict]:
    """One detector pass and one colour pass for the whole batch, then GenEval's rules per image."""
    thresholds = thresholds or Thresholds()
    if images.shape[0] != len(specs):
        raise UnirlError(f"judge_batch: {images.shape[0]} images for {len(specs)} specs")
    detections = detector.detect(images)
    kept: list[dict[str, list[int]]] = []
    for det, spec in zip(detections, specs):
        cutoff = thresholds.counting_threshold if spec.get("tag") == "counting" else thresholds.threshold
        per_class = {c: select_indices(b, cutoff, thresholds.max_objects, thresholds.nms_threshold)
                     for c, b in det.boxes.items()}
        kept.append({c: idx for c, idx in per_class.items() if idx})
    # Colours are asked only of the top-`count` boxes of coloured clauses, as GenEval's judge asks.
    wanted: dict[tuple[int, str], int] = {}
    for i, spec in enumerate(specs):
        for clause in spec.get("include", []):
            name = clause["class"]
            if "color" in clause and len(kept[i].get(name, [])) >= clause["count"]:
                wanted[(i, name)] = max(wanted.get((i, name), 0), clause["count"])
    requests = [(i, name, row) for (i, name), k in wanted.items() for row in kept[i][name][:k]]
    names = detector.colors(images, detections, requests)
    colors: dict[tuple[int, str], list[str]] = {}
    for (i, name, _), color in zip(requests, names):
        colors.setdefault((i, name), []).append(color)

    verdicts = []
    for i, spec in enumerate(specs):
        objects = {c: [detections[i].boxes[c][j] for j in idx] for c, idx in kept[i].items()}

        def color_of(name: str, boxes: list, i: int = i) -> list[str]:
            return colors[(i, name)][:len(boxes)]

        correct, reason = judge(spec, objects, color_of, thresholds.position_threshold)
        partial = clauses_met(spec, objects, color_of, thresholds.position_threshold)
        verdicts.append(Verdict(correct, partial, reason, objects))
    return verdicts


def evaluate_folder(root: str | Path, detector: Detector, thresholds: Thresholds | None = None,
                    batch_size: int = 16) -> tuple[list[dict[str, Any]], list[str]]:
    """GenEval's evaluate_images over a layout folder: (results rows, skipped files with why).

    An unreadable image is skipped and named; every other image is still judged."""
    thresholds = thresholds or Thresholds()
    items, skipped = [], []
    for folder in read_layout(root):
        for path in folder.samples:
            items.append((path, folder.spec))
    if not items:
        raise UnirlError(f"{root}: no sample images (expected NNNNN/samples/NNNN.png)")
    rows = []
    bar = progress(total=len(items), desc="judge", unit="image")
    for start in range(0, len(items), batch_size):
        loaded = []
        for path, spec in items[start:start + batch_size]:
            try:
                loaded.append((path, spec, load_image(path)))
            except UnirlError as e:
                skipped.append(str(e))
                print(f"skipped {e}", file=sys.stderr)
        # Images of one size go through the detector together.
        by_size: dict[tuple[int, int], list] = {}
        for item in loaded:
            by_size.setdefault(tuple(item[2].shape[-2:]), []).append(item)
        for group in by_size.values():
            verdicts = judge_batch(torch.stack([img for _, _, img in group]), [s for _, s, _ in group], detector,
                                   thresholds)
            rows += [result_row(str(path), spec, v.correct, v.reason, v.objects)
                     for (path, spec, _), v in zip(group, verdicts)]
        bar.update(len(items[start:start + batch_size]))
    bar.close()
    order = {str(path): n for n, (path, _) in enumerate(items)}
    rows.sort(key=lambda r: order[r["filename"]])
    return rows, skipped


def thresholds_record(thresholds: Thresholds | None) -> dict[str, Any]:
    return asdict(thresholds or Thresholds())
