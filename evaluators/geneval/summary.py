"""GenEval's results.jsonl and the numbers its summary_scores.py prints for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unirl.atomic import atomic_write_text
from unirl.errors import UnirlError

RESULT_KEYS = ("filename", "tag", "prompt", "correct", "reason", "metadata", "details")


def result_row(filename: str, spec: dict, correct: bool, reason: str, objects: dict) -> dict[str, Any]:
    """One results.jsonl line with GenEval's keys (metadata and details as JSON strings)."""
    details = {name: [[float(v) for v in box[:5]] for box in boxes] for name, boxes in objects.items()}
    return {"filename": filename, "tag": spec.get("tag", ""), "prompt": spec["prompt"], "correct": bool(correct),
            "reason": reason, "metadata": json.dumps(spec), "details": json.dumps(details)}


def write_results(rows: list[dict[str, Any]], path: str | Path) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_results(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise UnirlError(f"{path}: results file not found")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UnirlError(f"{path}:{n}: expected a JSON object ({e.msg})") from None
        missing = [k for k in ("tag", "correct", "metadata") if k not in row]
        if missing:
            raise UnirlError(f"{path}:{n}: missing GenEval key(s) {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise UnirlError(f"{path}: no results")
    return rows


def sampling_stderr(by_tag_prompt: dict[str, dict[str, list[bool]]]) -> tuple[dict[str, float], float]:
    """Standard error of each tag's accuracy and of the overall score under re-sampling the
    images of the same prompts (another seed): the error bar for comparing two checkpoints on one
    prompt suite. A prompt whose k images are right q of the time adds k²·q(1−q)/(k−1) to its
    tag's sum of squares (one image adds none); tags are independent."""
    per_tag = {}
    for tag, prompts in by_tag_prompt.items():
        n = sum(len(v) for v in prompts.values())
        ss = 0.0
        for v in prompts.values():
            k, q = len(v), sum(v) / len(v)
            ss += k * k * q * (1 - q) / (k - 1) if k > 1 else 0.0
        per_tag[tag] = ss ** 0.5 / n
    overall = sum(se * se for se in per_tag.values()) ** 0.5 / len(per_tag)
    return per_tag, overall


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """images, prompts, correct_images, correct_prompts, per_tag (tags in first-seen order), overall,
    and the sampling standard errors `per_tag_stderr` and `overall_stderr` (`sampling_stderr`).

    As summary_scores.py: prompts are grouped by their metadata string; a prompt is correct when
    any of its images is; overall is the unweighted mean of the per-tag image accuracies."""
    by_prompt: dict[str, bool] = {}
    by_tag: dict[str, list[bool]] = {}
    by_tag_prompt: dict[str, dict[str, list[bool]]] = {}
    for row in rows:
        correct = bool(row["correct"])
        by_prompt[row["metadata"]] = by_prompt.get(row["metadata"], False) or correct
        by_tag.setdefault(row["tag"], []).append(correct)
        by_tag_prompt.setdefault(row["tag"], {}).setdefault(row["metadata"], []).append(correct)
    per_tag = {tag: sum(v) / len(v) for tag, v in by_tag.items()}
    per_tag_stderr, overall_stderr = sampling_stderr(by_tag_prompt)
    return {
        "images": len(rows),
        "prompts": len(by_prompt),
        "correct_images": sum(bool(r["correct"]) for r in rows) / len(rows),
        "correct_prompts": sum(by_prompt.values()) / len(by_prompt),
        "per_tag": per_tag,
        "overall": sum(per_tag.values()) / len(per_tag),
        "per_tag_stderr": per_tag_stderr,
        "overall_stderr": overall_stderr,
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"images: {summary['images']}  prompts: {summary['prompts']}",
             f"correct images: {summary['correct_images']:.2%}  correct prompts: {summary['correct_prompts']:.2%}"]
    stderr = summary.get("per_tag_stderr", {})
    lines += [f"  {tag:<16} {score:.2%}" + (f"  ± {stderr[tag]:.2%}" if tag in stderr else "")
              for tag, score in summary["per_tag"].items()]
    overall = f"overall (mean over tags): {summary['overall']:.5f}"
    if "overall_stderr" in summary:
        overall += f"  ± {summary['overall_stderr']:.5f} (sampling standard error)"
    lines.append(overall)
    return "\n".join(lines)
