"""The CLI as a user runs it: a subprocess, its exit code, its one-line errors, its outputs."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from evaluators.geneval.layout import read_layout
from modalities.image.io import load_image
from unirl.errors import UnirlError


def unirl(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "unirl.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


def test_help_lists_commands():
    out = unirl("--help").stdout
    for command in ("train", "eval", "generate", "prompts", "report", "pretrain-toy"):
        assert command in out


def test_generate_writes_geneval_layout(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    specs = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
             {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}],
              "prompt": "a photo of two dogs"}]
    prompts.write_text("".join(json.dumps(s) + "\n" for s in specs))
    out = tmp_path / "gen"
    res = unirl("generate", "--model", "janus-tiny", "--prompts", prompts, "--out", out, "--samples", 2,
                "--guidance", 5, "--seed", 0)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "generation.json"]
    assert json.loads((out / "00001" / "metadata.jsonl").read_text()) == specs[1]
    assert sorted(p.name for p in (out / "00000" / "samples").iterdir()) == ["0000.png", "0001.png"]
    assert Image.open(out / "00000" / "samples" / "0000.png").size == (32, 32)
    folders = read_layout(out)
    assert [f.spec for f in folders] == specs and all(len(f.samples) == 2 for f in folders)
    recipe = json.loads((out / "generation.json").read_text())
    assert recipe["model"] == "janus-tiny" and recipe["guidance"] == 5.0 and len(recipe["prompts_sha256"]) == 64

    # Text prompts; same seed, same images.
    text = tmp_path / "p.txt"
    text.write_text("a photo of a cat\na photo of two dogs\n")
    again = tmp_path / "gen2"
    assert unirl("generate", "--model", "janus-tiny", "--prompts", text, "--out", again, "--samples", 2).returncode == 0
    assert (again / "00000/samples/0001.png").read_bytes() == (out / "00000/samples/0001.png").read_bytes()
    # An existing folder is not overwritten silently.
    res = unirl("generate", "--model", "janus-tiny", "--prompts", text, "--out", again, "--samples", 1)
    assert res.returncode == 2 and "exists" in res.stderr


@pytest.mark.parametrize("case", ["missing_model", "empty_prompts", "missing_prompts", "bad_jsonl"])
def test_generate_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a cat\n")
    model = "janus-tiny"
    if case == "missing_model":
        model = f"janus:{tmp_path}/no-such-model"
    elif case == "empty_prompts":
        prompts.write_text("")
    elif case == "missing_prompts":
        prompts = tmp_path / "none.txt"
    else:
        prompts = tmp_path / "p.jsonl"
        prompts.write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    out = tmp_path / "out"
    res = unirl("generate", "--model", model, "--prompts", prompts, "--out", out)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_train_bad_configs(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("recipe: [unclosed\n")
    res = unirl("train", bad_yaml, "--out", tmp_path / "run")
    assert res.returncode == 2 and "bad.yaml" in res.stderr and len(res.stderr.strip().splitlines()) == 1

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("recipe: nope\n")
    res = unirl("train", unknown, "--out", tmp_path / "run")
    assert res.returncode == 2 and "unknown.yaml: 'recipe' expected one of" in res.stderr
    assert not (tmp_path / "run").exists()


def test_non_image_file_is_a_clear_error(tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("this is not a png")
    with pytest.raises(UnirlError, match=r"photo.png: not a readable image") as e:
        load_image(fake)
    assert "\n" not in str(e.value)
    with pytest.raises(UnirlError, match="image file not found"):
        load_image(tmp_path / "none.png")


def test_layout_reader_errors(tmp_path):
    with pytest.raises(UnirlError, match="no prompt folders"):
        read_layout(tmp_path)
    (tmp_path / "00000").mkdir()
    with pytest.raises(UnirlError, match="metadata.jsonl: missing"):
        read_layout(tmp_path)
