import json

import pytest
import torch

from unirl.engine.checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from unirl.engine.metrics import MetricsLogger, read_metrics
from unirl.models import load_model


def test_checkpoint_round_trip_and_resume_state(tiny_janus, tmp_path):
    params = [p for p in tiny_janus.module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    r = tiny_janus.generate_images(["a red circle"], seed=0)
    tiny_janus.image_token_logprobs(r.prompts, r.tokens).mean().backward()
    opt.step()
    opt.zero_grad()
    torch.manual_seed(123)
    path = save_checkpoint(tmp_path, 5, tiny_janus, opt, extra={"note": "x"})
    expected_next = torch.rand(3)
    assert path.name == "step-5" and (path / "model.safetensors").is_file()
    assert latest_checkpoint(tmp_path) == path

    # Optimizer and RNG come back; the weights load through load_model like any model.
    opt2 = torch.optim.AdamW(params, lr=1e-3)
    state = load_training_state(path, opt2)
    assert state == {"step": 5, "note": "x"}
    assert torch.equal(torch.rand(3), expected_next)
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    again = load_model(str(path), device="cpu", dtype="float32")
    assert torch.equal(again.generate_images(["a red circle"], seed=1).tokens,
                       tiny_janus.generate_images(["a red circle"], seed=1).tokens)


def test_failed_save_leaves_nothing(tiny_janus, tmp_path):
    class Broken:
        def save_pretrained(self, path):
            (path / "partial.bin").write_text("half")
            raise RuntimeError("disk full")

    save_checkpoint(tmp_path, 1, tiny_janus)
    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path, 2, Broken())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1"]
    assert latest_checkpoint(tmp_path).name == "step-1"


def test_latest_ignores_incomplete(tmp_path):
    (tmp_path / "checkpoints" / "step-9").mkdir(parents=True)  # no state.json: incomplete
    (tmp_path / "checkpoints" / "step-3").mkdir()
    (tmp_path / "checkpoints" / "step-3" / "state.json").write_text('{"step": 3}')
    assert latest_checkpoint(tmp_path).name == "step-3"


def test_metrics_truncated_on_resume(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(1, 6):
        log.log(step, {"reward": step / 10})
    MetricsLogger(tmp_path, resume_step=3, tensorboard=False).log(4, {"reward": 0.0})
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["reward"] == 0.0
    assert all(json.dumps(r) for r in rows)
