import json

import pytest
import torch

from modalities.jigsaw import JigsawTask, make_puzzles
from unirl.cli import main
from unirl.models import load_model
from unirl.recipes.jigsaw import cold_start_orders


def test_three_step_jigsaw_run_on_janus_tiny_leaves_a_loadable_checkpoint(tmp_path):
    run = tmp_path / "run"
    main(["train", "configs/jigsaw/toy_image.yaml", "--out", str(run), "model=janus-tiny", "max_steps=3",
          "cold_start_steps=2", "puzzles_per_step=2", "group_size=2", "save_every=2"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for key in ("reward", "exact_accuracy", "format_valid", "frac_reward_zero_std", "completion_length"):
        assert key in rows[-1]
    assert json.loads((run / "recipe.json").read_text())["pieces"] == 4
    model = load_model(str(run / "checkpoints" / "final"))
    assert len(model.answer(torch.rand(1, 3, 32, 32), ["What shape is this?"], max_new_tokens=2)) == 1


@pytest.mark.parametrize("modality", ["image", "video", "3d"])
def test_jigsaw_benchmark_writes_summary_and_rows(tmp_path, modality):
    out = tmp_path / modality
    main(["eval", "jigsaw", "--model", "janus-tiny", "--modality", modality, "--puzzles", "3", "--out", str(out)]
         + (["--grid", "2x2"] if modality == "image" else []))
    summary = json.loads((out / "summary.json").read_text())
    assert {"exact_accuracy", "partial_score", "format_valid", "chance_exact_accuracy", "recipe"} <= set(summary)
    assert summary["chance_exact_accuracy"] == pytest.approx(1 / 24 if modality == "image" else 1 / 720)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(sorted(r["truth"]) == list(range(1, len(r["truth"]) + 1)) for r in rows)


def test_cold_start_teaches_the_true_order_or_random_permutations():
    puzzles = make_puzzles(JigsawTask(modality="image", rows=2, cols=2), "toy", 64, seed=5)
    assert torch.equal(cold_start_orders(puzzles, "truth", seed=1), puzzles.answers)
    random = cold_start_orders(puzzles, "random", seed=1)
    assert all(sorted(row) == [1, 2, 3, 4] for row in random.tolist())
    # Random targets carry nothing about the puzzle: they match its answer about 1 time in 24.
    assert (random == puzzles.answers).all(1).float().mean() < 0.2
    assert torch.equal(random, cold_start_orders(puzzles, "random", seed=1))


def test_unknown_cold_start_answers_is_one_clear_error(tmp_path, capsys):
    assert main(["train", "configs/jigsaw/toy_image.yaml", "--out", str(tmp_path / "run"), "model=janus-tiny",
                 "cold_start_answers=labels"]) == 2
    assert "'cold_start_answers' expected one of ['random', 'truth'], got 'labels'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
