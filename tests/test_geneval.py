"""GenEval prompts, summary, layout, detectors and commands."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from evaluators.geneval.detectors import load_detector
from evaluators.geneval.detectors.clip_colors import ClipColorClassifier
from evaluators.geneval.evaluate import Thresholds, evaluate_folder, judge_batch
from evaluators.geneval.layout import read_layout, write_prompt_folder
from evaluators.geneval.prompts import geneval_prompts
from evaluators.geneval.reward import GenEvalReward
from evaluators.geneval.summary import read_results, summarize, write_results
from modalities.image.shapes_detect import mask_boxes
from tests.conftest import SHARED
from unirl.errors import UnirlError


@pytest.mark.skipif(not (SHARED / "geneval").is_dir(), reason="../shared/geneval not present")
def test_prompts_equal_official_file():
    lines = (SHARED / "geneval" / "evaluation_metadata.jsonl").read_text().splitlines()
    official = [json.loads(line) for line in lines]
    ours = geneval_prompts()
    assert len(ours) == len(official) == 553
    for n, (a, b) in enumerate(zip(ours, official)):
        assert a == b, f"line {n + 1}"


def test_prompts_shape_of_suite():
    specs = geneval_prompts()
    tags = [s["tag"] for s in specs]
    assert tags[:80] == ["single_object"] * 80
    assert len({s["include"][0]["class"] for s in specs[:80]}) == 80  # every class once
    assert all(c.get("class") != "person" for s in specs if s["tag"] in ("colors", "color_attr") for c in s["include"])
    assert len({json.dumps(s, sort_keys=True) for s in specs}) == len(specs)


def test_summary_matches_geneval_formula_in_pandas():
    rng = np.random.default_rng(0)
    rows = []
    for p in range(30):
        tag = ["single_object", "counting", "colors", "position"][p % 4]
        meta = json.dumps({"tag": tag, "include": [{"class": "cat", "count": 1}], "prompt": f"p{p}"})
        for k in range(int(rng.integers(1, 5))):
            rows.append({"filename": f"{p}/{k}.png", "tag": tag, "prompt": f"p{p}", "correct": bool(rng.random() < 0.4),
                         "reason": "", "metadata": meta, "details": "{}"})
    ours = summarize(rows)
    df = pd.DataFrame(rows)
    task_scores = {tag: g["correct"].mean() for tag, g in df.groupby("tag", sort=False)}
    assert ours["images"] == len(df)
    assert ours["prompts"] == len(df.groupby("metadata"))
    assert ours["correct_images"] == pytest.approx(df["correct"].mean())
    assert ours["correct_prompts"] == pytest.approx(df.groupby("metadata")["correct"].any().mean())
    assert list(ours["per_tag"]) == list(task_scores)
    assert ours["per_tag"] == pytest.approx(task_scores)
    assert ours["overall"] == pytest.approx(np.mean(list(task_scores.values())))


def test_sampling_stderr_matches_the_spread_of_repeated_evaluations():
    """Each prompt has a fixed chance of a right image; evaluating again draws its images anew.
    The overall score's spread over 3,000 such evaluations is what one evaluation's
    `overall_stderr` estimates (its mean square, since the per-prompt variance is unbiased)."""
    rng = np.random.default_rng(0)
    tags = ["counting"] * 6 + ["colors"] * 20 + ["position"] * 30
    chance = rng.uniform(0, 1, len(tags))
    overall, variances = [], []
    for _ in range(3000):
        right = rng.random((len(tags), 4)) < chance[:, None]
        rows = [{"tag": tag, "metadata": str(p), "correct": bool(c)} for p, tag in enumerate(tags) for c in right[p]]
        summary = summarize(rows)
        overall.append(summary["overall"])
        variances.append(summary["overall_stderr"] ** 2)
    assert np.sqrt(np.mean(variances)) == pytest.approx(np.std(overall), rel=0.05)
    one = summarize([{"tag": "t", "metadata": "a", "correct": True}])  # a single image: no spread to estimate
    assert one["overall_stderr"] == 0.0


def test_results_round_trip_and_errors(tmp_path):
    rows = [{"filename": "a.png", "tag": "t", "prompt": "p", "correct": True, "reason": "", "metadata": "{}",
             "details": "{}"}]
    write_results(rows, tmp_path / "r.jsonl")
    assert read_results(tmp_path / "r.jsonl") == rows
    (tmp_path / "bad.jsonl").write_text('{"tag": "t"}\n')
    with pytest.raises(UnirlError, match="bad.jsonl:1: missing GenEval key"):
        read_results(tmp_path / "bad.jsonl")


def test_layout_round_trip_with_five_digit_names(tmp_path):
    spec = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
    write_prompt_folder(tmp_path, 7, spec, torch.rand(2, 3, 16, 16))
    Image.new("RGB", (16, 16)).save(tmp_path / "00007" / "samples" / "00002.png")
    (folder,) = read_layout(tmp_path)
    assert folder.index == 7 and folder.spec == spec
    assert [p.name for p in folder.samples] == ["0000.png", "0001.png", "00002.png"]


def test_mask_boxes():
    masks = torch.zeros(2, 8, 10, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    assert mask_boxes(masks).tolist() == [[3, 2, 7, 5], [0, 0, 0, 0]]


def test_clip_crops_follow_mask_and_box():
    clf = ClipColorClassifier("clip-tiny")
    image = torch.zeros(1, 3, 64, 64)
    image[:, 0, :, :32] = 1.0  # left half red, right half black
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[:, 8:24, 8:24] = True
    crop = clf.crops(image, mask, torch.tensor([[8.0, 8.0, 24.0, 24.0]])) * clf.std + clf.mean
    assert crop.shape == (1, 3, clf.size, clf.size)
    assert torch.allclose(crop[0, 0], torch.ones_like(crop[0, 0]), atol=1e-4)  # only the red, masked region
    grey = clf.crops(image, torch.zeros_like(mask), torch.tensor([[8.0, 8.0, 24.0, 24.0]])) * clf.std + clf.mean
    assert torch.allclose(grey, torch.full_like(grey, 0x99 / 255), atol=1e-4)  # masked out: GenEval's #999


@pytest.fixture(scope="module")
def tiny_detector():
    return load_detector("mask2former-tiny", device="cpu")


def test_mask2former_path_on_random_weights(tiny_detector):
    images = torch.rand(3, 3, 48, 64)
    detections = tiny_detector.detect(images)
    assert len(detections) == 3
    for det in detections:
        for name, boxes in det.boxes.items():
            assert boxes.shape[1] == 5 and name in tiny_detector.classes
            assert (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 48).all() and (boxes[:, 4] >= 0).all()
    requests = [(i, name, 0) for i, det in enumerate(detections) for name in list(det.boxes)[:2]]
    colors = tiny_detector.colors(images, detections, requests)
    assert len(colors) == len(requests) and all(isinstance(c, str) for c in colors)


def test_judge_batch_and_reward_on_random_weights(tiny_detector):
    """Threshold 0 so the random detector's boxes reach the colour and position rules."""
    specs = [{"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a red car"},
             {"tag": "position", "include": [{"class": "cat", "count": 1},
                                             {"class": "dog", "count": 1, "position": ["left of", 0]}],
              "prompt": "a dog left of a cat"}]
    loose = Thresholds(threshold=0.0, counting_threshold=0.0)
    verdicts = judge_batch(torch.rand(2, 3, 64, 64), specs, tiny_detector, loose)
    assert len(verdicts) == 2 and all(0.0 <= v.partial <= 1.0 for v in verdicts)
    rewards, info = GenEvalReward(tiny_detector, partial=True, thresholds=loose)(torch.rand(2, 3, 64, 64), specs)
    assert rewards.shape == (2,) and len(info["reason"]) == 2
    strict, _ = GenEvalReward(tiny_detector)(torch.rand(2, 3, 64, 64), specs)
    assert set(strict.tolist()) <= {0.0, 1.0}


def test_corrupt_png_is_named_and_the_rest_judged(tiny_detector, tmp_path):
    spec = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
    write_prompt_folder(tmp_path, 0, spec, torch.rand(3, 3, 32, 32))
    bad = tmp_path / "00000" / "samples" / "0001.png"
    bad.write_bytes(b"not a png at all")
    rows, skipped = evaluate_folder(tmp_path, tiny_detector)
    assert [os.path.basename(r["filename"]) for r in rows] == ["0000.png", "0002.png"]
    assert len(skipped) == 1 and str(bad) in skipped[0]
    assert set(rows[0]) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    assert json.loads(rows[0]["metadata"]) == spec and isinstance(json.loads(rows[0]["details"]), dict)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "unirl.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_eval_commands_end_to_end(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(s) + "\n" for s in geneval_prompts()[78:82]))  # two tags
    out = tmp_path / "ev"
    res = run_cli("eval", "geneval", "--model", "janus-tiny", "--prompts", prompts, "--detector", "mask2former-tiny",
                  "--out", out, "--samples", 2, "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["images"] == 8 and summary["prompts"] == 4 and list(summary["per_tag"]) == ["single_object",
                                                                                                "two_object"]
    saved = json.loads((out / "summary.json").read_text())
    recipe = saved["recipe"]
    assert recipe["model"] == "janus-tiny" and recipe["samples"] == 2 and recipe["guidance"] == 5.0
    assert recipe["detector"] == "mask2former" and recipe["thresholds"]["counting_threshold"] == 0.9
    assert len(recipe["prompts_sha256"]) == 64
    rows = read_results(out / "results.jsonl")
    assert len(rows) == 8 and all(os.path.exists(r["filename"]) for r in rows)

    # Judge-only, and the summary command, agree with the full run.
    res = run_cli("eval", "geneval-images", out / "images", "--detector", "mask2former-tiny", "--out",
                  tmp_path / "again" / "results.jsonl", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["overall"] == summary["overall"]
    res = run_cli("eval", "summary", out / "results.jsonl", "--json")
    assert json.loads(res.stdout.strip().splitlines()[-1])["overall"] == summary["overall"]


def test_prompts_command_and_bad_detector(tmp_path):
    res = run_cli("prompts", "geneval", "--out", tmp_path / "g.jsonl")
    assert res.returncode == 0 and len((tmp_path / "g.jsonl").read_text().splitlines()) == 553
    res = run_cli("eval", "geneval", "--model", "janus-tiny", "--prompts", tmp_path / "g.jsonl", "--detector", "yolo",
                  "--out", tmp_path / "x")
    assert res.returncode == 2 and "--detector yolo: expected one of" in res.stderr and not (tmp_path / "x").exists()
    text = tmp_path / "p.txt"
    text.write_text("a cat\n")
    res = run_cli("eval", "geneval", "--model", "janus-tiny", "--prompts", text, "--detector", "mask2former-tiny",
                  "--out", tmp_path / "y")
    assert res.returncode == 2 and "no include clauses" in res.stderr and not (tmp_path / "y").exists()


def test_offline_mask2former_without_weights_is_one_clear_line(tmp_path):
    with pytest.raises(UnirlError, match="mask2former:PATH") as e:
        load_detector("mask2former", device="cpu")
    assert "\n" not in str(e.value)
    with pytest.raises(UnirlError, match="not a Mask2Former folder"):
        load_detector(f"mask2former:{tmp_path}", device="cpu")


def test_mask2former_from_a_local_folder(tmp_path):
    from evaluators.geneval.detectors.mask2former import tiny_mask2former

    tiny_mask2former().save_pretrained(tmp_path / "m2f")
    detector = load_detector(f"mask2former:{tmp_path / 'm2f'}", device="cpu", clip="clip-tiny")
    assert detector.classes[64:67] == ["computer mouse", "tv remote", "computer keyboard"]
    assert len(detector.detect(torch.rand(1, 3, 40, 40))) == 1


def test_clip_spec_errors(tmp_path):
    with pytest.raises(UnirlError, match="unknown open_clip architecture"):
        ClipColorClassifier("ViT-Q-99")
    with pytest.raises(UnirlError, match="CLIP weights file not found"):
        ClipColorClassifier(f"ViT-L-14:{tmp_path}/none.bin")


def test_coco_label_names_map_to_geneval_names():
    from evaluators.geneval.detectors.mask2former import class_names
    from evaluators.geneval.prompts import COCO_CLASSES

    coco = [{"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard",
             "hair drier": "hair dryer"}.get(n, n) for n in COCO_CLASSES]
    assert class_names(dict(enumerate(coco))) == COCO_CLASSES
    assert class_names({0: "LABEL_0", 1: "cat"}) == ["LABEL_0", "cat"]
