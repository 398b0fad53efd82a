"""The shapes world: renderer, specs, splits, questions and its exact detector."""

import json
import os
import subprocess
import sys

import numpy as np
import torch

from evaluators.geneval.detectors import load_detector
from evaluators.geneval.evaluate import judge_batch
from modalities.image.shapes import (
    COLORS,
    IMAGE_SIZE,
    SHAPES,
    TAGS,
    Scene,
    SceneObject,
    render,
    sample_scenes,
    scene_questions,
    split_specs,
)
from modalities.image.shapes_detect import connected_components, detect_components
from unirl.specs import NUMBER_WORDS, relative_position


def test_render_is_deterministic_and_batched():
    a = sample_scenes(split_specs("train"), 32, seed=3)
    b = sample_scenes(split_specs("train"), 32, seed=3)
    c = sample_scenes(split_specs("train"), 32, seed=4)
    assert [s.objects for s in a] == [s.objects for s in b] and [s.objects for s in a] != [s.objects for s in c]
    images = render(a)
    assert images.shape == (32, 3, IMAGE_SIZE, IMAGE_SIZE) and torch.equal(images, render(b))
    assert 0 <= images.min() and images.max() <= 1
    assert len(SHAPES) >= 8 and len(COLORS) == 10


def test_scenes_satisfy_their_specs():
    for scene in sample_scenes(split_specs("train") + split_specs("heldout"), 300, seed=0):
        spec, objects = scene.spec, scene.objects
        assert sum(c["count"] for c in spec["include"]) == len(objects) and 1 <= len(objects) <= 4
        for clause in spec["include"]:
            match = [o for o in objects if o.shape == clause["class"] and o.color == clause.get("color", o.color)]
            assert len(match) >= clause["count"]
            if "position" in clause:
                relation, target = clause["position"]
                anchor = next(o for o in objects if o.shape == spec["include"][target]["class"])
                assert relation in relative_position(match[0].box(), anchor.box())
        for i, a in enumerate(objects):  # no overlaps
            for b in objects[i + 1:]:
                assert np.hypot(a.cx - b.cx, a.cy - b.cy) > a.radius + b.radius
        assert spec["prompt"].startswith("a photo of ")


def test_splits_disjoint_and_cover_every_tag():
    train, heldout = split_specs("train"), split_specs("heldout")
    assert not {s["prompt"] for s in train} & {s["prompt"] for s in heldout}
    assert {s["tag"] for s in train} == {s["tag"] for s in heldout} == set(TAGS)
    assert split_specs("heldout") == heldout  # deterministic


def test_heldout_prompts_use_only_words_seen_in_training():
    train, heldout = split_specs("train"), split_specs("heldout")

    def words(specs, tag=None):
        return {w for s in specs if tag in (None, s["tag"]) for w in s["prompt"].split()}
    assert words(heldout) <= words(train)
    # Held-out counting pairs a known number with a known plural: composition, not a new word.
    assert words(heldout, "counting") <= words(train, "counting")


def test_questions_answer_from_the_scene():
    rng = np.random.default_rng(0)
    for scene in sample_scenes(split_specs("train"), 100, seed=1):
        for kind, question, answer in scene_questions(scene, rng):
            if kind == "count":
                shape = next(s for s in SHAPES if f" {s}" in question)
                assert answer == NUMBER_WORDS[sum(o.shape == shape for o in scene.objects)]
            if kind == "what":
                named = [o for o in scene.objects if len(scene.objects) == 1 or f"the {o.color} object" in question]
                assert len(named) == 1 and answer == named[0].shape
            if kind == "yes_no":
                assert answer in ("yes", "no")


def test_every_split_asks_what_every_shape_is():
    """Held-out single-object prompts name shapes the train ones never do: "what" questions must
    also come from multi-object scenes, or the held-out shapes are never an answer in training."""
    for split in ("train", "heldout"):
        rng = np.random.default_rng(0)
        answers = {a for scene in sample_scenes(split_specs(split), 300, seed=2)
                   for kind, _, a in scene_questions(scene, rng) if kind == "what"}
        assert answers == set(SHAPES), split


def test_connected_components():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 0:2, 0:2] = True
    mask[0, 5:8, 5:7] = True
    mask[0, 2, 2] = True  # touches the first blob diagonally: 8-connected
    labels = connected_components(mask)[0]
    assert len(labels[mask[0]].unique()) == 2 and (labels[~mask[0]] == 0).all()


def test_detector_is_exact_on_single_objects():
    scenes = [Scene({}, [SceneObject(s, c, 32.0, 32.0, 9.0)]) for s, c in zip(SHAPES, COLORS)]
    found = detect_components(render(scenes))
    assert found.image.tolist() == list(range(len(SHAPES)))
    assert [SHAPES[i] for i in found.shape] == list(SHAPES)
    assert (found.score > 0.9).all()


def test_detector_agrees_with_specs_on_heldout():
    scenes = sample_scenes(split_specs("heldout"), 400, seed=11)
    verdicts = judge_batch(render(scenes), [s.spec for s in scenes], load_detector("shapes", device="cpu"))
    agreement = sum(v.correct for v in verdicts) / len(verdicts)
    assert agreement >= 0.99, [v.reason for v in verdicts if not v.correct][:5]


def test_prompts_shapes_command(tmp_path):
    out = tmp_path / "heldout.jsonl"
    res = subprocess.run([sys.executable, "-m", "unirl.cli", "prompts", "shapes", "--split", "heldout", "--out",
                          str(out)], capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert res.returncode == 0, res.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == split_specs("heldout")
