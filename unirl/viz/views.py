"""Notebook views of what a run made and how it was judged: rollout grids, GenEval results with
the detected boxes, jigsaw puzzles with the model's arrangement. Each returns a `View`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from unirl.viz.html import ImageLike, View, esc, image_uri, read_image, read_jsonl, table


def _cell(image: ImageLike, lines: list[str], passed: bool | None) -> str:
    state = "" if passed is None else (" ur-pass" if passed else " ur-fail")
    return f'<div class="ur-cell{state}"><img src="{image_uri(image)}" alt="">{"".join(lines)}</div>'


def answer_text(answer: str | dict[str, Any]) -> str:
    """One judgement as a line: text as it is; a self-VQA item {"question", "margin"} as
    "Is there a star? yes (+0.93)"; an open answer {"question", "answer"} as "What …? star"."""
    if isinstance(answer, str):
        return answer
    if "margin" in answer:
        return f"{answer['question']} {'yes' if answer['margin'] > 0 else 'no'} ({answer['margin']:+.2f})"
    return f"{answer['question']} {answer['answer']}"


def rollout_grid(images: torch.Tensor | list[ImageLike], prompts: list[str], rewards: list[float] | None = None,
                 answers: list[list[str | dict[str, Any]]] | None = None, passed: list[bool] | None = None,
                 threshold: float = 0.5, title: str = "rollouts") -> View:
    """Image, prompt, reward and the model's answers about it, one cell per image; the border is
    green where `passed` (default: reward ≥ threshold), red where not.

    images: [N,3,H,W] in [0,1], or image files; rewards: floats or a tensor; answers: per image,
    lines or judgements as `answer_text` takes them (a self-VQA judge's info["questions"] as is)."""
    images = list(images)
    rewards = rewards.tolist() if isinstance(rewards, torch.Tensor) else rewards
    if len(prompts) != len(images):
        raise ValueError(f"rollout_grid: {len(images)} images but {len(prompts)} prompts")
    if passed is None and rewards is not None:
        passed = [r >= threshold for r in rewards]
    cells = []
    for i, image in enumerate(images):
        lines = [f'<div class="ur-prompt">{esc(prompts[i])}</div>']
        if rewards is not None:
            lines.append(f"<div>reward {rewards[i]:+.3f}</div>")
        lines += [f'<div class="ur-muted">{esc(answer_text(a))}</div>' for a in (answers[i] if answers else [])]
        cells.append(_cell(image, lines, None if passed is None else bool(passed[i])))
    return View(f'<div class="ur-grid">{"".join(cells)}</div>', title)


def answer_lines(row: dict[str, Any]) -> list[str]:
    """A sample row's judgements as text: self-VQA yes/no with margins, self-QA's answer."""
    return [answer_text(q) for q in row.get("self_vqa", []) + row.get("self_qa", [])]


def read_samples(step_dir: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(step_dir) / "samples.jsonl")


def samples_grid(step_dir: str | Path, tracked: bool | None = None, limit: int | None = 32) -> View:
    """The rollout grid of a run's samples/step-<n>/ (tracked: only the fixed prompts, or only
    the rollout's; None: both)."""
    step_dir = Path(step_dir)
    rows = [r for r in read_samples(step_dir) if tracked is None or bool(r.get("tracked")) == tracked][:limit]
    return rollout_grid([step_dir / r["image"] for r in rows], [r["prompt"] for r in rows],
                        [r["reward"] for r in rows], [answer_lines(r) for r in rows], title=step_dir.name)


def boxed_image(path: str | Path, details: dict[str, list[list[float]]], scale: int = 3) -> torch.Tensor:
    """A GenEval image enlarged `scale` times with its detections drawn (class and score)."""
    from torchvision.utils import draw_bounding_boxes

    image = read_image(path)
    image = image.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    boxes, labels = [], []
    for name, found in details.items():
        for x1, y1, x2, y2, score in found:
            boxes.append([x1 * scale, y1 * scale, (x2 + 1) * scale - 1, (y2 + 1) * scale - 1])
            labels.append(f"{name} {score:.2f}")
    if not boxes:
        return image
    return draw_bounding_boxes(image, torch.tensor(boxes, dtype=torch.float), labels=labels, colors="yellow",
                               width=2)


def geneval_view(eval_dir: str | Path, failures: int = 24) -> View:
    """A GenEval run (its summary.json and results.jsonl): the per-tag table, then failed images
    with GenEval's reason and the detected boxes."""
    eval_dir = Path(eval_dir)
    summary = json.loads((eval_dir / "summary.json").read_text())
    parts = [table(["tag", "accuracy"], [[t, v] for t, v in summary["per_tag"].items()]
                   + [["overall", summary["overall"]]])]
    rows = read_jsonl(eval_dir / "results.jsonl")
    failed = [r for r in rows if not r["correct"]][:failures]
    cells = []
    for r in failed:
        path = Path(r["filename"])
        if not path.is_absolute() and not path.is_file():  # written relative to where the eval ran
            path = eval_dir / "images" / Path(*path.parts[-3:])
        lines = [f'<div class="ur-prompt">{esc(r["prompt"])}</div>', f'<div class="ur-muted">{esc(r["tag"])}</div>',
                 f'<div class="ur-bad">{esc(r["reason"])}</div>']
        image = boxed_image(path, json.loads(r.get("details") or "{}")) if path.is_file() else None
        cells.append(_cell(image, lines, False) if image is not None
                     else f'<div class="ur-cell ur-fail">missing image {esc(path)}{"".join(lines)}</div>')
    if cells:
        parts.append(f"<h3>failures ({len(failed)} of {sum(not r['correct'] for r in rows)})</h3>"
                     f'<div class="ur-grid">{"".join(cells)}</div>')
    return View("".join(parts), f"GenEval {eval_dir}")


def arranged(pieces: list[str], order: list[int], truth: list[int], cols: int, width: int) -> str:
    """Piece order[j] (1-based) at raster position j of a grid, as HTML; a piece out of place is
    outlined in red. pieces: the pieces' data: URIs."""
    cells = "".join(f'<img src="{pieces[o - 1]}" width="{width}" style="display:block;'
                    f'outline:{"none" if o == t else "2px solid #d03a2f"};outline-offset:-2px" alt="{o}">'
                    for o, t in zip(order, truth))
    return f'<div style="display:grid;grid-template-columns:repeat({cols},{width}px);gap:0">{cells}</div>'


def jigsaw_view(pieces: torch.Tensor, truth: list[int], order: list[int] | None, answer: str = "",
                grid: tuple[int, int] | None = None, reward: float | None = None) -> View:
    """A jigsaw: the shuffled pieces as the model saw them ("Tile 1" … / clips / the marked image),
    the model's arrangement and the truth. With a grid (image jigsaws) both arrangements are laid
    out as grids of the pieces, misplaced ones outlined; otherwise (video, depth) they are label
    sequences.

    pieces: [k, 3, H, W] (a video clip's frames may be [k, F, 3, H, W]: its middle frame is shown)."""
    if pieces.dim() == 5:
        pieces = pieces[:, pieces.shape[1] // 2]
    k = len(truth)
    valid = order is not None and sorted(order) == list(range(1, k + 1))
    uris = [image_uri(p) for p in pieces]
    # one piece per label: "Tile i" (image) or "Clip i" (video); a depth puzzle is one marked image
    labels = [f"{'Tile' if grid else 'Clip'} {i + 1}" for i in range(k)] if len(uris) == k else [""] * len(uris)
    shown = "".join(f'<div style="text-align:center"><img src="{uri}" width="{64 if grid else 96}" alt=""><br>'
                    f"{label}</div>" for uri, label in zip(uris, labels))
    parts = [f'<div><h3>pieces</h3><div class="ur-row">{shown}</div></div>']
    if grid is not None and len(pieces) == k:
        cols, width = grid[1], 160 // grid[1]
        model_view = arranged(uris, order, truth, cols, width) if valid else \
            '<p class="ur-bad">not a valid arrangement</p>'
        parts += [f"<div><h3>model</h3>{model_view}</div>",
                  f"<div><h3>truth</h3>{arranged(uris, truth, truth, cols, width)}</div>"]
    marks = "".join('<span class="ur-good">&#10003;</span>' if valid and a == t else
                    '<span class="ur-bad">&#10007;</span>' for a, t in zip(order or [0] * k, truth))
    score = "" if reward is None else f" · reward {reward:.3f}"
    text = (f'<div>model: <code>{esc(answer)}</code> {marks}<br>truth: <code>{esc(", ".join(map(str, truth)))}'
            f"</code>{score}</div>")
    return View(f'<div class="ur-row">{"".join(parts)}</div>{text}', "jigsaw")
