"""The one output form of every view: a fragment of self-contained HTML (images inlined as data:
URIs, plots as inline SVG, no scripts, nothing fetched) that Jupyter renders inline and that
`View.save` writes as a page any browser opens from disk."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unirl.atomic import atomic_write_text

ImageLike = torch.Tensor | np.ndarray | Image.Image | str | Path

STYLE = """
.ur { font-family: system-ui, sans-serif; color: #222; }
.ur h1 { font-size: 22px; } .ur h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.ur h3 { font-size: 15px; margin: 14px 0 6px; }
.ur table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
.ur td, .ur th { border: 1px solid #ddd; padding: 3px 8px; vertical-align: top; text-align: left; }
.ur th { background: #f4f4f4; }
.ur td.ur-num { text-align: right; font-variant-numeric: tabular-nums; }
.ur pre { background: #f7f7f7; padding: 8px; font-size: 12px; overflow-x: auto; }
.ur-grid, .ur-row, .ur-plots { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
.ur-cell { width: 168px; font-size: 11px; padding: 4px; border: 3px solid #ccc; border-radius: 4px; }
.ur-cell.ur-pass { border-color: #2e9e44; } .ur-cell.ur-fail { border-color: #d03a2f; }
.ur img { image-rendering: pixelated; }
.ur-cell img { width: 160px; height: auto; display: block; }
.ur-prompt { font-weight: 600; margin: 3px 0; } .ur-muted { color: #777; }
.ur-good { color: #2e9e44; } .ur-bad { color: #d03a2f; }
"""


def image_uri(image: ImageLike) -> str:
    """A PNG data: URI of an image: a float tensor [3,H,W] in [0,1] (or uint8), an HxWx3 uint8
    array, a PIL image, or an image file (embedded as it is)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}.get(
            path.suffix.lower())
        if mime is not None:
            return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
        with Image.open(path) as img:
            image = img.convert("RGB")
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.dtype != torch.uint8:
            array = (array.float().clamp(0, 1) * 255).round().to(torch.uint8)
        image = array.permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a jsonl file; [] when it is missing. A line that does not parse (one a running job
    is still writing) is skipped."""
    path = Path(path)
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as uint8 [3,H,W]."""
    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def number(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else esc(value)


def table(header: list[str], rows: list[list[object]]) -> str:
    """A table; numbers right-aligned (floats with 3 decimals), other cells escaped text."""
    def cell(c: object) -> str:
        numeric = isinstance(c, (int, float)) or re.fullmatch(r"[+-]?\d+(\.\d+)?", str(c)) is not None
        return f'<td class="ur-num">{number(c)}</td>' if numeric else f"<td>{esc(c)}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<style>body {{ margin: 24px; background: #fff; }}{STYLE}</style></head>'
            f'<body><div class="ur">\n{body}\n</div></body></html>\n')


class View:
    """A piece of HTML that renders inline in Jupyter (`_repr_html_`) and saves as a page."""

    def __init__(self, body: str, title: str = "unirl"):
        self.body = body
        self.title = title

    def _repr_html_(self) -> str:
        return f'<style>{STYLE}</style><div class="ur">{self.body}</div>'

    def save(self, path: str | Path) -> Path:
        """Write a standalone HTML page (atomically) and return its path."""
        path = Path(path)
        atomic_write_text(path, page(self.title, self.body))
        return path

    def __str__(self) -> str:
        return self.body
