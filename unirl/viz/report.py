"""`unirl report RUN_DIR`: one self-contained HTML page about a run (RUN_DIR/report.html).

Config and sampling recipe, metric plots, the tracked prompts' images across steps side by side,
the newest samples with what the model answered, and before/after evaluation tables when the
folder holds them (`make demo`'s layout: before/, after/, run/). It reads only files a run writes
atomically (samples/step-<n>/, summaries) or line by line (metrics.jsonl), so it works on a run
that is still going; run it again to refresh."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from unirl.atomic import atomic_write_text
from unirl.errors import UnirlError
from unirl.viz.html import esc, image_uri, page, read_image, read_jsonl, table
from unirl.viz.plots import metric_plots, read_metric_rows
from unirl.viz.views import answer_lines, geneval_view, jigsaw_view, read_samples, rollout_grid

SKIPPED_DIRS = {"samples", "checkpoints", "tensorboard", "run"}


def sample_steps(run: Path) -> list[Path]:
    """samples/step-<n>/ folders, by step."""
    found = [(int(m.group(1)), p) for p in (run / "samples").glob("step-*")
             if p.is_dir() and (m := re.fullmatch(r"step-(\d+)", p.name))]
    return [p for _, p in sorted(found)]


def spread(items: list[Any], most: int) -> list[Any]:
    """At most `most` items, evenly spaced, first and last included."""
    if len(items) <= most:
        return items
    return [items[round(i * (len(items) - 1) / (most - 1))] for i in range(most)]


def status_line(run: Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    last = max((r.get("step", 0) for r in rows), default=0)
    total = config["iterations"] + 1 if config.get("recipe") == "sail" else config.get("max_steps", "?")
    done = (run / "checkpoints" / "final").exists()
    updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(max((r.get("time", 0) for r in rows), default=0))) \
        if rows else "never"
    state = "finished" if done else "in progress (or stopped)"
    return f"{state}: step {last} of {total}; metrics last written {updated}"


def tracked_table(steps: list[Path]) -> str:
    """Rows: the tracked prompts; columns: sample steps; cells: the image and its reward."""
    tracked = {s: [r for r in read_samples(s) if r.get("tracked")] for s in steps}
    columns = spread([s for s in steps if tracked[s]], 8)
    if not columns:
        return ""
    per_step = {s: tracked[s] for s in columns}
    prompts = list(dict.fromkeys(r["prompt"] for s in columns for r in per_step[s]))
    header = "".join(f"<th>{esc(s.name)}</th>" for s in columns)
    body = []
    for prompt in prompts:
        cells = []
        for s in columns:
            row = next((r for r in per_step[s] if r["prompt"] == prompt), None)
            cells.append("<td></td>" if row is None else
                         f'<td><img src="{image_uri(s / row["image"])}" width="128" '
                         f'title="{esc(" / ".join(answer_lines(row)))}"><br>reward {row["reward"]:+.3f}</td>')
        body.append(f'<tr><th style="min-width:140px">{esc(prompt)}</th>{"".join(cells)}</tr>')
    return (f"<h2>Same prompts across steps</h2><p class=\"ur-muted\">one image per tracked prompt, the same "
            f"seed at every step</p><table><tr><th>prompt</th>{header}</tr>{''.join(body)}</table>")


def newest_samples(step: Path, limit: int = 16) -> str:
    rows = [r for r in read_samples(step) if not r.get("tracked")][:limit]
    if not rows:
        return ""
    if "frames" in rows[0]:  # a SAIL run: episodes
        body = episodes_table(step, rows)
    elif "pieces" in rows[0]:  # a jigsaw run
        views = []
        for r in rows:
            pieces = torch.stack([read_image(step / name) for name in r["pieces"]]).float() / 255
            if r.get("frames_per_piece", 1) > 1:
                pieces = pieces.view(len(r["truth"]), r["frames_per_piece"], *pieces.shape[1:])
            views.append(jigsaw_view(pieces, r["truth"], r["order"], r["answer"],
                                     grid=tuple(r["grid"]) if r.get("grid") else None, reward=r["reward"]).body)
        body = "<hr>".join(views)
    else:
        body = rollout_grid([step / r["image"] for r in rows], [r["prompt"] for r in rows],
                            [r["reward"] for r in rows], [answer_lines(r) for r in rows]).body
    return f"<h2>Newest samples ({esc(step.name)})</h2>{body}"


def episodes_table(step: Path, rows: list[dict[str, Any]]) -> str:
    """SAIL episodes: what happened, frame by frame, and under it what the planner imagined next."""
    body = []
    for r in rows:
        real = "".join(f'<td><img src="{image_uri(step / n)}" width="72"></td>' for n in r["frames"])
        plans = "<td></td>" + "".join(f'<td><img src="{image_uri(step / n)}" width="72"></td>' for n in r["plans"])
        verdict = f"{'success' if r['success'] else 'failure'}; judged {'yes' if r['judged_success'] else 'no'}"
        body.append(f'<tr><th rowspan="2" style="min-width:140px">{esc(r["task"])}<br>'
                    f'<span class="ur-muted">{esc(verdict)}</span></th>{real}</tr><tr>{plans}</tr>')
    return ('<p class="ur-muted">each episode: the frames as they happened (top) and the frame the planner '
            f"imagined for each step (below)</p><table>{''.join(body)}</table>")


def sail_section(run: Path) -> str:
    """Held-out task success per iteration (`sail_summary.json`, or the partial state mid-run)."""
    path = next((p for p in (run / "sail_summary.json", run / "sail_state.json") if p.is_file()), None)
    if path is None:
        return ""
    summary = json.loads(path.read_text())
    by_task = summary.get("success_by_task", [])
    if not by_task:
        return ""
    columns = [f"iteration {i}" for i in range(len(by_task))]
    rows = [["unseen tasks (mean)", *summary["success_by_iteration"]]]
    rows += [[name, *(it.get(name, "") for it in by_task)] for name in by_task[0]]
    rows += [["self-judge accuracy", *summary.get("judge_accuracy_by_iteration", [])],
             ["episodes kept", *summary.get("kept_by_iteration", [])]]
    return (f"<h2>Task success by iteration</h2><p class=\"ur-muted\">filter: {esc(summary.get('filter', '?'))}; "
            "iteration 0 is before any self-improvement</p>" + table(["", *columns], rows))


def pairs_section(run: Path, limit: int = 12) -> str:
    """An OSPO run's self-made preference pairs: the prompt and its chosen image beside the hard
    negative prompt and its rejected image, with the self-VQA margins that chose them."""
    folder = run / "pairs"
    if not (folder / "pairs.jsonl").is_file():
        return ""
    rows = read_jsonl(folder / "pairs.jsonl")
    counts = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    body = []
    for i, r in enumerate(rows[:limit]):
        chosen, rejected = folder / "images" / f"{i:04d}-chosen.png", folder / "images" / f"{i:04d}-rejected.png"
        cells = [f'<img src="{image_uri(p)}" width="96">' if p.is_file() else "" for p in (chosen, rejected)]
        margins = ", ".join(f"{q} {c:+.2f} / {n:+.2f}" for q, c, n in
                            zip(r["questions"], r["chosen_margins"], r["rejected_margins"]))
        body.append(f"<tr><td>{esc(r['prompt'])}</td><td>{cells[0]}</td><td>{esc(r['negative_prompt'])}<br>"
                    f'<span class="ur-muted">{esc(r["edit"])}: {esc(r["what"])}</span></td><td>{cells[1]}</td>'
                    f"<td>{esc(margins)}</td></tr>")
    header = "<tr><th>prompt</th><th>chosen</th><th>hard negative</th><th>rejected</th>" \
             "<th>self-VQA margin chosen / rejected</th></tr>"
    return (f"<h2>Preference pairs</h2><p class=\"ur-muted\">{esc(json.dumps(counts))}; the first "
            f"{min(limit, len(rows))} of {len(rows)}</p><table>{header}{''.join(body)}</table>")


def summary_scores(summary: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of an evaluation summary (GenEval, understanding, jigsaw)."""
    scores = {}
    for key in ("overall", "accuracy", "exact_accuracy", "partial_score", "format_valid"):
        if isinstance(summary.get(key), (int, float)):
            scores[key] = float(summary[key])
    for group in ("per_tag", "per_type"):
        for name, value in (summary.get(group) or {}).items():
            scores[f"· {name}"] = float(value)
    return scores


def evaluations(root: Path) -> dict[str, dict[str, Path]]:
    """{evaluation kind: {column: its folder}}: before/geneval, after/geneval → geneval: {before, after};
    a folder with its own summary.json directly under root is a column of its own."""
    found: dict[str, dict[str, Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in SKIPPED_DIRS):
        if (folder / "summary.json").is_file():
            found.setdefault(folder.name, {})[folder.name] = folder
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "summary.json").is_file()):
            found.setdefault(sub.name, {})[folder.name] = sub
    return found


def evaluation_section(root: Path) -> str:
    parts = []
    for kind, columns in evaluations(root).items():
        names = sorted(columns, key=lambda c: (c != "before", c != "after", c))
        summaries = {c: json.loads((columns[c] / "summary.json").read_text()) for c in names}
        scores = {c: summary_scores(summaries[c]) for c in names}
        metrics = list(dict.fromkeys(k for c in names for k in scores[c]))
        change = names[:2] == ["before", "after"]
        rows = []
        for metric in metrics:
            values = [scores[c].get(metric, "") for c in names]
            if change:
                b, a = scores["before"].get(metric), scores["after"].get(metric)
                values.append(f"{a - b:+.3f}" if a is not None and b is not None else "")
            rows.append([metric, *values])
        recipe = summaries[names[-1]].get("recipe", {})
        parts.append(f"<h3>{esc(kind)}</h3>" + table(["", *names] + (["change"] if change else []), rows)
                     + f'<details><summary>recipe</summary><pre>{esc(json.dumps(recipe, indent=1))}</pre></details>')
        if kind == "geneval":
            parts.append(f"<details><summary>GenEval failures ({esc(names[-1])})</summary>"
                         f"{geneval_view(columns[names[-1]], failures=16).body}</details>")
    return "<h2>Evaluations</h2>" + "".join(parts) if parts else ""


def build_report(run_dir: str | Path) -> str:
    root = Path(run_dir)
    if not root.is_dir():
        raise UnirlError(f"{root}: no such run directory")
    # `make demo` writes before/, after/ and the training run in run/.
    run = root / "run" if (root / "run" / "config.yaml").is_file() else root
    if not (run / "config.yaml").is_file() and not (run / "metrics.jsonl").is_file():
        raise UnirlError(f"{root}: not a run directory (expected config.yaml or metrics.jsonl, "
                         "as `unirl train --out` writes)")
    config_text = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else ""
    config = yaml.safe_load(config_text) or {}
    recipe = json.loads((run / "recipe.json").read_text()) if (run / "recipe.json").is_file() else {}
    rows = read_metric_rows(run)
    steps = sample_steps(run)
    body = [f"<h1>{esc(root.resolve().name)} · {esc(config.get('recipe', 'run'))}</h1>",
            f'<p class="ur-muted">{esc(status_line(run, config, rows))}. Report written '
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}.</p>",
            "<h2>Recipe</h2>" + table(["", "value"], [[k, json.dumps(v) if isinstance(v, (dict, list)) else v]
                                                     for k, v in recipe.items()]),
            f"<details><summary>config.yaml</summary><pre>{esc(config_text)}</pre></details>",
            "<h2>Metrics</h2>" + metric_plots(rows).body,
            pairs_section(run),
            sail_section(run),
            tracked_table(steps),
            newest_samples(steps[-1]) if steps else "",
            evaluation_section(root)]
    return page(f"unirl report: {root.resolve().name}", "\n".join(b for b in body if b))


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html (atomically, so a browser never sees half a page) and return its path."""
    html = build_report(run_dir)
    path = Path(run_dir) / "report.html"
    atomic_write_text(path, html)
    return path
