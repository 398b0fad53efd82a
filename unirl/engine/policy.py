"""The policy every GRPO-style recipe trains: its config fields, the model with LoRA or full
fine-tuning, the frozen reference, checkpoints that load as plain models, and the learning-rate
schedule. Recipes (UniRL, Visual Jigsaw, OSPO) differ in what they sample and reward, not here."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from unirl.config import RunConfig
from unirl.engine.checkpoint import load_training_state, save_checkpoint
from unirl.engine.distributed import ONE_PROCESS, Processes, is_sharded, shard_model
from unirl.engine.lora import adapter_state, adapters_disabled, add_lora, load_adapter_state, merged_weights
from unirl.errors import UnirlError
from unirl.models import UnifiedModel, load_model

ADAPTER_FILE = "adapter.safetensors"


@dataclass
class PolicyConfig(RunConfig):
    """Policy, optimiser, GRPO and LoRA fields, named as in TRL's GRPOConfig where one exists."""

    group_size: int = 8
    """Samples per prompt (TRL: num_generations): GRPO's group, whose rewards are normalised
    together; OSPO's G images per prompt."""
    temperature: float = 1.0
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    lora_rank: int = 0
    """LoRA rank; 0 fine-tunes the whole LM (image tokenizer and vision tower stay frozen either way)."""
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "dense"])
    """Linear layers that get adapters, by last name (Llama: q/k/v/o_proj; Phi: q/k/v_proj, dense)."""
    bf16: bool = False
    """Autocast forward passes to bfloat16 while weights and optimiser state stay in `dtype`
    (with dtype: float32, the usual mixed precision on GPU; on CPU it works but is slow)."""
    max_bad_steps: int = 3
    """Stop after this many steps in a row with a non-finite reward or loss (each is skipped)."""
    fsdp: bool = False
    """Under several processes, shard gradients and optimiser state of the trained LM across them
    (torch FSDP, see `unirl.engine.distributed.shard_model`), for models whose full fine-tuning does
    not fit one device. Full fine-tuning only (LoRA's adapters are small enough to replicate)."""


@dataclass
class GRPOConfig(PolicyConfig):
    """The GRPO fields of the recipes that train with `unirl.algorithms.grpo` (UniRL, Visual Jigsaw)."""

    num_iterations: int = 1
    """μ: optimiser passes over each rollout batch (the ratio departs from 1 after the first)."""
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    """KL coefficient (k3 estimator) to the frozen initial weights; 0 keeps no reference copy."""
    scale_rewards: bool = True
    """Divide advantages by the group's reward std (DeepSeekMath); False: mean-centred only (Dr. GRPO)."""


ScoreReference = Callable[[Callable[[UnifiedModel], torch.Tensor]], "torch.Tensor | None"]


def build_policy(config: PolicyConfig, resume_from: Path | None, processes: Processes = ONE_PROCESS,
                 reference: bool = False) -> tuple[UnifiedModel, list[torch.nn.Parameter], ScoreReference]:
    """The model being trained, the parameters it trains, and `score_reference(fn)`: fn applied
    to the reference model without grad (None without `reference`: GRPO's KL at beta 0, OSPO).

    Full fine-tuning trains `trainable_parameters()` (not the image tokenizer or vision tower) and
    keeps a frozen copy of the initial weights as the reference. LoRA trains adapters only; its
    reference is the same model with the adapters switched off, and it resumes from the base
    model plus the checkpoint's adapter tensors. With `fsdp` under several processes, the model (and
    the reference) is sharded in place before the parameters are collected."""
    lora = config.lora_rank > 0
    if config.fsdp and lora:
        raise UnirlError("fsdp: for full fine-tuning only; with lora_rank > 0 set fsdp: false")
    source = str(resume_from) if resume_from is not None and not lora else config.model
    model = load_model(source, device=config.device, dtype=config.dtype)
    if lora:
        named = add_lora(model.module, config.lora_rank, config.lora_alpha, config.lora_target_modules,
                         skip_prefixes=model.frozen_prefixes)
        if resume_from is not None:
            load_adapter_state(model.module, load_file(resume_from / ADAPTER_FILE), str(resume_from / ADAPTER_FILE))
    else:
        named = model.trainable_parameters()
        trainable = {name for name, _ in named}
        for name, p in model.module.named_parameters():
            p.requires_grad_(name in trainable)
    wants_reference, reference = reference, None
    if wants_reference and not lora:  # frozen initial weights (reloaded when resuming)
        reference = copy.deepcopy(model) if resume_from is None else \
            load_model(config.model, device=config.device, dtype=config.dtype)
        reference.module.requires_grad_(False)
    if config.fsdp and processes.world > 1:
        trainable = {name for name, _ in named}
        shard_model(model.module)
        named = [(name, p) for name, p in model.module.named_parameters() if name in trainable]  # now sharded
        if reference is not None:
            shard_model(reference.module, decoder_layers_only=True)

    @torch.no_grad()
    def score_reference(score: Callable[[UnifiedModel], torch.Tensor]) -> torch.Tensor | None:
        if not wants_reference:
            return None
        with adapters_disabled(model.module) if lora else nullcontext():
            return score(reference or model)

    return model, [p for _, p in named], score_reference


def save(run_dir: Path, step: int, model: UnifiedModel, optimizer: torch.optim.Optimizer,
         config: PolicyConfig, processes: Processes = ONE_PROCESS) -> Path:
    """A checkpoint `load_model` reads as a plain model (LoRA merged in), plus the adapter tensors
    under LoRA so that training resumes exactly. Every process calls it; the main one writes."""
    if any(is_sharded(p) for p in model.module.parameters()):
        return _save_sharded(run_dir, step, model, optimizer, config, processes)
    if not processes.is_main:
        return Path(run_dir) / "checkpoints" / f"step-{step}"
    if config.lora_rank <= 0:
        return save_checkpoint(run_dir, step, model, optimizer)
    adapters = adapter_state(model.module)  # before merging: inside, the adapter layers are swapped out
    with merged_weights(model.module):
        return save_checkpoint(run_dir, step, model, optimizer, tensors={ADAPTER_FILE: adapters})


def _save_sharded(run_dir: Path, step: int, model: UnifiedModel, optimizer: torch.optim.Optimizer,
                  config: PolicyConfig, processes: Processes) -> Path:
    """FSDP: every process takes part in gathering the full weights and optimiser state; the main
    one writes them through an unsharded copy of the model, so the checkpoint is a plain model
    folder of the backend's own format."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model.module, options=full)
    optimizer_state = get_optimizer_state_dict(model.module, optimizer, options=full)
    if not processes.is_main:
        return Path(run_dir) / "checkpoints" / f"step-{step}"
    plain = load_model(config.model, device="cpu", dtype=model.dtype)
    plain.module.load_state_dict(weights)
    return save_checkpoint(run_dir, step, plain, optimizer_state=optimizer_state)


def restore(checkpoint: Path, model: UnifiedModel, optimizer: torch.optim.Optimizer) -> int:
    """Resume: optimiser and RNG states from a checkpoint (gathered optimiser state when the model
    is sharded); returns the checkpoint's step."""
    if not any(is_sharded(p) for p in model.module.parameters()):
        return load_training_state(checkpoint, optimizer)["step"]
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    # strict=False: parameters that never had a gradient (no accepted image yet) have no state yet
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_optimizer_state_dict(model.module, optimizer, state, options=options)
    return load_training_state(checkpoint)["step"]


def autocast(config: PolicyConfig, model: UnifiedModel) -> torch.autocast:
    return torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=config.bf16)


def learning_rate(config: PolicyConfig, step: int) -> float:
    """Linear warmup, then constant (UniRL and OSPO train for a few hundred steps at a fixed LR)."""
    return config.learning_rate * min(1.0, (step + 1) / max(1, config.warmup_steps))
