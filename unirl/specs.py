"""Prompt specs in GenEval's schema, and prompt suites read from files.

A spec is a plain dict, exactly GenEval's metadata line::

    {"tag": "position",
     "include": [{"class": "teddy bear", "count": 1},
                 {"class": "dog", "count": 1, "position": ["right of", 0]}],
     "exclude": [{"class": "dog", "count": 2}],        # optional
     "prompt": "a photo of a dog right of a teddy bear"}

Free text prompts (a .txt file, one a line) become ``{"tag": "free", "include": [], "prompt": text}``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from unirl.errors import UnirlError

Spec = dict[str, Any]

RELATIONS = ("left of", "right of", "above", "below")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")


def _require(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise UnirlError(f"{where}: expected {what}")


def validate_spec(spec: Any, where: str = "spec") -> Spec:
    """Check one spec against GenEval's schema; returns it unchanged or raises naming the field."""
    _require(isinstance(spec, dict), where, "a JSON object")
    _require(isinstance(spec.get("prompt"), str) and spec["prompt"].strip() != "", f"{where}.prompt",
             "a non-empty string")
    _require(isinstance(spec.get("tag", ""), str), f"{where}.tag", "a string")
    for key in ("include", "exclude"):
        clauses = spec.get(key, [])
        _require(isinstance(clauses, list), f"{where}.{key}", "a list of clauses")
        for i, clause in enumerate(clauses):
            at = f"{where}.{key}[{i}]"
            _require(isinstance(clause, dict), at, "an object with 'class' and 'count'")
            _require(isinstance(clause.get("class"), str), f"{at}.class", "a class name")
            count = clause.get("count")
            _require(isinstance(count, int) and not isinstance(count, bool) and count >= 1, f"{at}.count",
                     "a positive integer")
            if "color" in clause:
                _require(isinstance(clause["color"], str), f"{at}.color", "a colour name")
            if "position" in clause:
                pos = clause["position"]
                _require(isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS
                         and isinstance(pos[1], int) and 0 <= pos[1] < len(clauses),
                         f"{at}.position", f"[relation in {list(RELATIONS)}, index of another include clause]")
    return spec


def free_text_spec(prompt: str) -> Spec:
    return {"tag": "free", "include": [], "prompt": prompt}


def read_prompt_file(path: str | Path) -> list[Spec]:
    """Read a GenEval metadata jsonl (one spec a line) or a text file (one prompt a line).

    A file whose first non-blank line starts with ``{`` is read as jsonl."""
    path = Path(path)
    if not path.is_file():
        raise UnirlError(f"{path}: prompt file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UnirlError(f"{path}: expected a UTF-8 text or jsonl prompt file ({e.reason})") from None
    numbered = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise UnirlError(f"{path}: prompt file is empty; expected one prompt (or one JSON spec) a line")
    if not numbered[0][1].startswith("{"):
        return [free_text_spec(line) for _, line in numbered]
    specs = []
    for n, line in numbered:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UnirlError(f"{path}:{n}: expected a JSON object ({e.msg})") from None
        specs.append(validate_spec(obj, where=f"{path}:{n}"))
    return specs


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def specs_sha256(specs: list[Spec]) -> str:
    """Hash of a suite as the jsonl it would be written as (for suites that are not files)."""
    text = "".join(json.dumps(s) + "\n" for s in specs)
    return hashlib.sha256(text.encode()).hexdigest()
