import json
import math

import numpy as np
import pytest
import torch

from evaluators.geneval.detectors import load_detector
from evaluators.geneval.evaluate import judge_batch
from evaluators.geneval.reward import GenEvalReward
from modalities.image.shapes import SHAPES, all_specs, render, scene_for_spec
from unirl.algorithms.preference import dpo_loss, ospo_loss, select_pair
from unirl.cli import main
from unirl.models import load_model
from unirl.negatives import apply_edit, hard_negatives, possible_edits
from unirl.specs import prompt_text, validate_spec


def every_negative(specs):
    rng = np.random.default_rng(0)
    return [(spec, apply_edit(spec, edit, index, SHAPES, rng)) for spec in specs
            for edit, index in possible_edits(spec)]


def test_every_perturbation_keeps_the_spec_valid_and_changes_what_it_says():
    """For a spread of shapes-world specs of every tag and every edit that applies: the negative
    is a valid spec phrased like GenEval, and a scene drawn for it is judged (GenEval's rules,
    the exact detector) right for the negative and wrong for the base spec."""
    by_tag = {}
    for spec in all_specs():
        by_tag.setdefault(spec["tag"], []).append(spec)
    specs = [s for group in by_tag.values() for s in group[::max(1, len(group) // 6)][:6]]
    pairs = every_negative(specs)
    assert {n["edit"] for _, n in pairs} == {"replace_object", "replace_color", "swap_colors", "replace_relation",
                                             "change_count", "drop_object"}
    assert {s["tag"] for s, _ in pairs} == {"single_object", "two_object", "counting", "colors", "position",
                                            "color_attr"}
    rng = np.random.default_rng(1)
    scenes = []
    for spec, negative in pairs:
        validate_spec(negative["spec"])
        assert negative["spec"]["prompt"] == prompt_text(negative["spec"]["include"]) != spec["prompt"]
        scenes.append(scene_for_spec(negative["spec"], rng))
    detector = load_detector("shapes", device="cpu")
    images = render(scenes)
    as_negative = judge_batch(images, [n["spec"] for _, n in pairs], detector)
    as_base = judge_batch(images, [s for s, _ in pairs], detector)
    assert all(v.correct for v in as_negative)
    wrong = [(s["prompt"], n["spec"]["prompt"]) for (s, n), v in zip(pairs, as_base) if v.correct]
    assert not wrong, wrong[:5]


def test_hard_negatives_are_distinct_and_capped():
    spec = next(s for s in all_specs() if s["tag"] == "color_attr")
    negatives = hard_negatives(spec, SHAPES, 3, np.random.default_rng(0))
    assert len(negatives) == 3 and len({n["spec"]["prompt"] for n in negatives}) == 3
    single = next(s for s in all_specs() if s["tag"] == "single_object")
    assert [n["edit"] for n in hard_negatives(single, SHAPES, 5, np.random.default_rng(0))] == ["replace_object"]


def test_pair_selection_rules_on_hand_made_scores():
    base = torch.tensor([[0.9, 0.6], [0.95, 0.9], [0.99, 0.4]])  # image 2 has a question at 0.4: not passing
    negative = torch.tensor([[0.9, -0.6], [0.8, 0.7], [-0.9, 0.9], [-0.55, 0.2]])  # image 1 fails nothing
    base_logps = torch.tensor([-1.0, -2.0, -3.0])
    negative_logps = torch.tensor([-5.0, -2.1, -1.9, -2.05])
    # chosen: image 1 (mean 0.925 > image 0's 0.75); rejected: the failing negative closest to -2.0,
    # skipping image 1 (closest overall, but every question passes)
    assert select_pair(base, negative, base_logps, negative_logps) == (1, 3)
    assert select_pair(base, negative, base_logps, negative_logps, threshold=0.95) == (None, None)
    assert select_pair(base, negative[1:2], base_logps, negative_logps[1:2]) == (1, None)


def test_ospo_loss_against_a_hand_computation():
    chosen, rejected, chosen_neg = torch.tensor([-1.0, -0.5]), torch.tensor([-2.0, -0.4]), torch.tensor([-1.5, -0.2])

    def softplus_neg(z):  # −log σ(z)
        return math.log1p(math.exp(-z))

    simpo = [softplus_neg(3.0 * (-1.0 + 2.0 - 0.5)), softplus_neg(3.0 * (-0.5 + 0.4 - 0.5))]
    copo = [softplus_neg(5.0 * (-1.0 + 1.5 - 0.5)), softplus_neg(5.0 * (-0.5 + 0.2 - 0.5))]
    sft = [1.0, 0.5]
    expected = sum(0.8 * s + 0.5 * c + 1.5 * f for s, c, f in zip(simpo, copo, sft)) / 2
    loss, stats = ospo_loss(chosen, rejected, chosen_neg)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["rewards/accuracies"] == 0.5 and stats["rewards/margins"] == pytest.approx(3.0 * (1.0 - 0.1) / 2)
    assert stats["loss/copo"] == pytest.approx(sum(copo) / 2, rel=1e-6)


def test_dpo_loss_against_a_hand_computation():
    loss, stats = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]),
                           beta=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.1 * (1.0 + 1.0))), rel=1e-6)
    assert stats["rewards/chosen"] == pytest.approx(0.1) and stats["rewards/rejected"] == pytest.approx(-0.1)


@pytest.mark.parametrize("loss", ["ospo", "dpo"])
def test_ospo_run_on_janus_tiny_builds_pairs_trains_and_resumes(tmp_path, loss):
    # A random-init model answers yes and no alike: a threshold of -1 lets every image through.
    run = tmp_path / "run"
    args = ["train", "configs/ospo/toy.yaml", "--out", str(run), "model=janus-tiny", "num_prompts=4", "group_size=2",
            "negatives_per_prompt=2", "margin_threshold=-1.0", "batch_size=2", "max_steps=2", "save_every=2",
            "sample_every=2", "lora_rank=4", f"loss={loss}"]
    assert main(args) == 0
    summary = json.loads((run / "pairs" / "summary.json").read_text())
    assert summary["prompts"] == 4 and summary["pairs"] == 4
    pairs = [json.loads(line) for line in (run / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert all(p["negative_prompt"] != p["prompt"] and p["edit"] for p in pairs)
    assert len(list((run / "pairs" / "images").glob("*.png"))) == 8
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["pairs/found_per_prompt"] == 1.0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "loss"):
        assert key in rows[-1]
    tracked = (run / "samples" / "step-2" / "samples.jsonl").read_text().splitlines()
    assert tracked and all(json.loads(r)["tracked"] for r in tracked)
    load_model(str(run / "checkpoints" / "final"))
    from unirl.viz import write_report

    report = write_report(run).read_text()
    pairs_html = report[report.index("<h2>Preference pairs"):]
    assert pairs_html.count('width="96"') == 8 and pairs[0]["negative_prompt"] in pairs_html
    made = (run / "pairs" / "tokens.safetensors").stat().st_mtime_ns
    assert main(args[:-4] + ["max_steps=3", "save_every=2", "sample_every=2", "lora_rank=4", f"loss={loss}",
                             "--resume"]) == 0
    assert (run / "pairs" / "tokens.safetensors").stat().st_mtime_ns == made  # the pairs were reused
    assert [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()][-1] == 3


def test_geneval_judge_gives_ospo_plus_one_for_the_spec_and_minus_one_for_its_negative():
    """`judge: geneval` (the comparison run): scenes drawn for the base specs pass GenEval's rules
    (+1), scenes drawn for their hard negatives, judged on the base spec, fail (-1), and the pair
    rule then picks a right image as chosen and a negative one as rejected."""
    rng = np.random.default_rng(3)
    specs = [s for s in all_specs() if s["tag"] in ("position", "color_attr")][::97][:6]
    negatives = [hard_negatives(s, SHAPES, 1, rng)[0]["spec"] for s in specs]
    images = render([scene_for_spec(s, rng) for s in specs + negatives])
    _, info = GenEvalReward(load_detector("shapes", device="cpu"))(images, specs + specs)
    margins = torch.tensor([[q["margin"] for q in per_image] for per_image in info["questions"]])
    assert margins.shape == (12, 1)
    assert margins[:6].eq(1).all() and margins[6:].eq(-1).all()
    chosen, rejected = select_pair(margins[:6], margins[6:], torch.zeros(6), torch.zeros(6), threshold=0.5)
    assert chosen is not None and rejected is not None


def test_ospo_self_qa_judge_on_chosen_tags(tmp_path, capsys):
    # Self-QA margins are +1 / -1 (answer right or not); a threshold of -1.5 lets every image through,
    # so every prompt gives a pair and the questions recorded are the judge's open ones.
    run = tmp_path / "run"
    args = ["train", "configs/ospo/toy.yaml", "--out", str(run), "model=janus-tiny", "num_prompts=3", "group_size=2",
            "negatives_per_prompt=1", "margin_threshold=-1.5", "batch_size=2", "max_steps=1", "lora_rank=4",
            "judge=self_qa", "self_qa_thing=shape", "self_qa_counts=true", "prompt_tags=[position]"]
    assert main(args) == 0
    pairs = [json.loads(line) for line in (run / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 3 and all(p["spec"]["tag"] == "position" for p in pairs)
    for p in pairs:
        a, b = (c["class"] for c in p["spec"]["include"])
        assert p["questions"][0].startswith("Where is the") and f"How many {b}s are there?" in p["questions"]
        assert set(p["chosen_margins"]) <= {1.0, -1.0} and len(p["rejected_margins"]) == len(p["questions"])
    assert json.loads((run / "recipe.json").read_text())["judge"] == "self_qa"
    assert main(args[:-1] + ["prompt_tags=[shadows]", "--out", str(tmp_path / "bad")]) == 2
    assert "prompt_tags: tags shadows are not in prompts shapes:train" in capsys.readouterr().err
    assert main(args[:-4] + ["judge=clip", "--out", str(tmp_path / "bad")]) == 2
    assert "'judge' expected 'self_vqa', 'self_qa' or 'geneval'" in capsys.readouterr().err


def test_ospo_without_any_pair_says_why_and_leaves_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "configs/ospo/toy.yaml", "--out", str(run), "model=janus-tiny", "num_prompts=2",
                 "group_size=2", "negatives_per_prompt=1", "margin_threshold=0.99", "max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "no prompt of 2 gave a pair" in err and "margin_threshold=0.99" in err
    assert not run.exists()
