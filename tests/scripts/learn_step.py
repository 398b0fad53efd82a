"""One UniRL learn step (`unirl.recipes.unirl.learn`) on a fixed batch, split over however many
processes launched this script; the main process saves the updated weights to argv[1].
tests/test_distributed.py runs it alone and under `accelerate launch --num_processes 2 --cpu`."""

import sys

import torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from unirl.engine.distributed import init_processes
from unirl.engine.policy import build_policy
from unirl.models import ImageRollout
from unirl.recipes.unirl import Config, learn
from unirl.specs import Spec

torch.set_num_threads(1)
processes = init_processes("cpu")
config = Config(model="janus-tiny", device="cpu", learning_rate=0.1, max_grad_norm=1e9, num_iterations=2, group_size=2,
                gen_sft_weight=0.3, und_sft_weight=0.5, accept_threshold=0.5, fsdp=sys.argv[2:] == ["fsdp"])
model, params, _ = build_policy(config, None, processes)
specs: list[Spec] = [{"tag": "single_object", "include": [{"class": c, "count": 1}], "prompt": f"a photo of a {c}"}
                     for c in ("circle", "star", "heart", "ring")]
per_image = [s for s in specs for _ in range(config.group_size)]
# The whole batch, the same in every process (same seeds); each keeps its share.
full = model.generate_images([s["prompt"] for s in specs], num_per_prompt=config.group_size, guidance=2.0, seed=3)
rewards = torch.tensor([0.9, 0.1, 0.6, 0.7, 0.2, 0.4, 1.0, 0.0])
advantages = (rewards.view(-1, 2) - rewards.view(-1, 2).mean(1, keepdim=True)).flatten()
mine = torch.arange(len(per_image)).view(processes.world, -1)[processes.rank]
rollout = ImageRollout(full.images[mine], full.tokens[mine], full.logprobs[mine], [full.prompts[i] for i in mine])
# SGD: the update is the gradient itself (Adam would magnify rounding in near-zero gradients).
finite, metrics = learn(model, params, torch.optim.SGD(params, lr=config.learning_rate), rollout, advantages[mine],
                        rewards[mine] >= config.accept_threshold, [per_image[i] for i in mine], None, 2.0, config,
                        0, processes)
assert finite and "loss/und_sft" in metrics and "loss/gen_sft" in metrics, metrics
trained = {name for name, p in model.module.named_parameters() if p.requires_grad}
weights = get_model_state_dict(model.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)) \
    if config.fsdp and processes.world > 1 else model.module.state_dict()
if processes.is_main:
    save_file({name: t.detach().contiguous() for name, t in weights.items() if name in trained}, sys.argv[1])
processes.close()
