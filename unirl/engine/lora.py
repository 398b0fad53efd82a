"""LoRA through peft, on any backend's `module`, without wrapping it.

Adapters are injected in place (`peft.inject_adapter_in_model`), so every attribute path the
backend uses stays valid. Three things a recipe needs beyond that:

- `adapters_disabled(module)`: the base model, for the KL reference, without a second copy;
- `merged_weights(module)`: a plain module with the adapters folded in, for saving a checkpoint
  that `load_model` reads like any other (the original weights are restored afterwards, bit for bit);
- `adapter_state` / `load_adapter_state`: the adapter tensors alone, for resuming.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from unirl.errors import UnirlError


def add_lora(module: torch.nn.Module, rank: int, alpha: float, targets: list[str], dropout: float = 0.0,
             skip_prefixes: tuple[str, ...] = ()) -> list[tuple[str, torch.nn.Parameter]]:
    """Inject LoRA into the Linear layers of `module` whose last name is in `targets` (q_proj, ...),
    except under `skip_prefixes` (the image tokenizer, the vision tower); freeze everything else.
    Returns the adapter parameters, in a fixed order."""
    from peft import LoraConfig, inject_adapter_in_model

    names = [n for n, m in module.named_modules()
             if isinstance(m, torch.nn.Linear) and n.rpartition(".")[2] in targets and not n.startswith(skip_prefixes)]
    if not names:
        raise UnirlError(f"lora_target_modules: no Linear layer named any of {targets} in the model")
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names), module)
    params = [(n, p) for n, p in module.named_parameters() if "lora_" in n]
    for n, p in module.named_parameters():
        p.requires_grad_("lora_" in n)
    return params


def _lora_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in module.named_modules() if isinstance(m, LoraLayer)]


@contextmanager
def adapters_disabled(module: torch.nn.Module) -> Iterator[None]:
    layers = [m for _, m in _lora_layers(module)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


@contextmanager
def merged_weights(module: torch.nn.Module) -> Iterator[None]:
    """Inside: each LoRA layer replaced by its base Linear with W + ΔW, so the module's
    state_dict is the plain model's. Afterwards: the LoRA layers and the exact original W back."""
    swapped = []
    with torch.no_grad():
        for name, layer in _lora_layers(module):
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name)
            base = layer.get_base_layer()
            original = base.weight.detach().clone()
            for adapter in layer.active_adapters:
                base.weight += layer.get_delta_weight(adapter).to(base.weight.dtype)
            setattr(parent, child, base)
            swapped.append((parent, child, layer, base, original))
    try:
        yield
    finally:
        with torch.no_grad():
            for parent, child, layer, base, original in swapped:
                base.weight.copy_(original)
                setattr(parent, child, layer)


def adapter_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in module.named_parameters() if "lora_" in n}


def load_adapter_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    params = dict(module.named_parameters())
    missing = [n for n in params if "lora_" in n and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        raise UnirlError(f"{source}: adapter tensors do not match this LoRA config "
                         f"(missing {missing[:3]}, unexpected {unknown[:3]})")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)
