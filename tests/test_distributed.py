import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from unirl.engine.distributed import Processes
from unirl.errors import UnirlError

ROOT = Path(__file__).resolve().parents[1]
# accelerate 1.x runs `--cpu --num_processes 2` as one process unless given an MPI hostfile; on a
# machine without GPUs its torchrun launcher (`--multi_gpu`) starts two gloo processes.
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def free_port() -> str:
    with socket.socket() as s:  # a port nothing listens on, so parallel launches do not collide
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run(cmd: list[str]) -> None:
    if cmd[:len(LAUNCH)] == LAUNCH:
        cmd = [*LAUNCH, "--main_process_port", free_port(), *cmd[len(LAUNCH):]]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_shard_splits_evenly_or_says_why():
    assert Processes(1, 2).shard([1, 2, 3, 4]) == [3, 4]
    with pytest.raises(UnirlError, match="prompts_per_step: 3 do not split evenly over 2 processes"):
        Processes(0, 2).shard([1, 2, 3], "prompts_per_step")


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_with_half_the_batch_make_the_one_process_update(tmp_path, sharding):
    script = str(ROOT / "tests" / "scripts" / "learn_step.py")
    run([sys.executable, script, str(tmp_path / "one.safetensors")])
    run([*LAUNCH, script, str(tmp_path / "two.safetensors"), sharding])
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    initial = __import__("unirl.models", fromlist=["load_model"]).load_model("janus-tiny").module.state_dict()
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    assert moved > 1e-3  # the step did something
    worst = max((two[k] - one[k]).abs().max().item() for k in one)
    assert worst < 1e-5 * moved, (worst, moved)


def test_accelerate_launch_runs_the_unirl_cli(tmp_path):
    out = tmp_path / "run"
    run([*LAUNCH, "-m", "unirl.cli", "train", str(ROOT / "configs" / "unirl" / "toy_grpo.yaml"), "--out", str(out),
         "model=janus-tiny", "max_steps=2", "prompts_per_step=2", "group_size=2", "save_every=1"])
    assert (out / "checkpoints" / "final" / "model.safetensors").is_file()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"reward"' in lines[0]
    assert '"processes": 2' in (out / "recipe.json").read_text()
    shutil.rmtree(out)


def test_fsdp_run_saves_plain_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["-m", "unirl.cli", "train", str(ROOT / "configs" / "unirl" / "toy_grpo.yaml"), "--out", str(out),
            "model=janus-tiny", "prompts_per_step=2", "group_size=2", "save_every=1", "fsdp=true"]
    run([*LAUNCH, *args, "max_steps=2"])
    run([*LAUNCH, *args, "max_steps=3", "--resume"])  # continues from step 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    model = __import__("unirl.models", fromlist=["load_model"]).load_model(str(out / "checkpoints" / "final"))
    assert model.generate_images(["a photo of a red circle"], num_per_prompt=1, seed=0).tokens.shape[0] == 1
