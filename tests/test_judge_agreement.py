import json

import pytest

from evaluators.judge_agreement import auc, draw_per_tag
from unirl.cli import main


def test_auc_by_hand():
    # Right images score 0.9 and 0.5, wrong 0.5 and 0.1: pairs (0.9>0.5, 0.9>0.1, 0.5=0.5, 0.5>0.1) -> 3.5 / 4.
    assert auc([0.9, 0.5, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.875)
    assert auc([0.1, 0.9], [True, False]) == 0.0  # ranks backwards
    assert auc([0.3, 0.3], [True, False]) == 0.5  # no signal
    assert auc([0.3, 0.4], [True, True]) is None  # no wrong image to compare with


def test_draw_per_tag_takes_distinct_prompts_of_every_tag():
    specs = [{"tag": t, "prompt": f"{t} {i}"} for t in ("a", "b") for i in range(5)] + [{"tag": "c", "prompt": "c"}]
    drawn = draw_per_tag(specs, 3, seed=0)
    assert [s["tag"] for s in drawn] == ["a"] * 3 + ["b"] * 3 + ["c"]
    assert len({s["prompt"] for s in drawn}) == 7 and drawn == draw_per_tag(specs, 3, seed=0)


def test_eval_judges_cli(tmp_path, capsys):
    out = tmp_path / "judges"
    main(["eval", "judges", "--model", "janus-tiny", "--prompts", "shapes:train", "--per-tag", "1", "--samples", "2",
          "--out", str(out), "--device", "cpu"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_tag"]["all"]["images"] == 2 * (len(summary["per_tag"]) - 1)
    assert {"auc/self_vqa", "auc/self_qa", "correct_fraction"} <= set(summary["per_tag"]["all"])
    assert summary["recipe"]["prompts_sha256"] and summary["recipe"]["detector"] == "shapes"
    rows = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert len(rows) == summary["per_tag"]["all"]["images"] and {"self_vqa", "self_qa", "correct"} <= set(rows[0])
    assert "AUC self_vqa" in capsys.readouterr().out
