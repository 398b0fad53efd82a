"""Prompt suites by name or file: what every --prompts option accepts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unirl.errors import UnirlError
from unirl.specs import Spec, file_sha256, read_prompt_file, specs_sha256


@dataclass
class PromptSuite:
    name: str  # the --prompts value
    specs: list[Spec]
    sha256: str  # of the file, or of the suite written as jsonl


NAMED_SUITES: dict[str, str] = {
    "geneval": "the official GenEval 553 prompts",
    "shapes:train": "the shapes world, train split",
    "shapes:heldout": "the shapes world, held-out split",
}


def named_suite(name: str) -> list[Spec]:
    if name == "geneval":
        from evaluators.geneval.prompts import geneval_prompts

        return geneval_prompts()
    from modalities.image.shapes import split_specs

    return split_specs(name.split(":", 1)[1])


def load_suite(value: str) -> PromptSuite:
    """A named suite (geneval, shapes:train, shapes:heldout) or a prompt file (jsonl or text)."""
    if value in NAMED_SUITES:
        specs = named_suite(value)
        return PromptSuite(value, specs, specs_sha256(specs))
    path = Path(value)
    if not path.exists():
        raise UnirlError(f"--prompts {value}: no such file (or a suite name: {', '.join(NAMED_SUITES)})")
    return PromptSuite(value, read_prompt_file(path), file_sha256(path))
