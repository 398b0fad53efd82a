"""Data parallelism across processes, as `accelerate launch` (or torchrun) starts them.

Each process rolls out and judges its share of a step's prompts; gradients are averaged across
processes before clipping and the optimiser step, so every process keeps identical weights and
N processes with 1/N of the batch each make the update one process makes with all of it. Only
the main process writes (metrics, samples, checkpoints).

Plain all-reduce rather than a DistributedDataParallel wrapper: the recipes call the model's own
methods (generate_images, image_token_logprobs, answer_logprobs), which a wrapper's forward
would not see.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from unirl.errors import UnirlError

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T], what: str = "items") -> list[T]:
        """This process's contiguous share of `items`, which must divide evenly."""
        if len(items) % self.world:
            raise UnirlError(f"{what}: {len(items)} do not split evenly over {self.world} processes")
        n = len(items) // self.world
        return list(items[self.rank * n:(self.rank + 1) * n])

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over processes (a copy; the input is left alone)."""
        value = value.detach().clone()
        if self.world > 1:
            dist.all_reduce(value)
        return value

    def gather(self, value: torch.Tensor) -> torch.Tensor:
        """Concatenation of every process's tensor along dim 0, in rank order (equal shapes)."""
        if self.world == 1:
            return value.detach()
        parts = [torch.empty_like(value) for _ in range(self.world)]
        dist.all_gather(parts, value.detach().contiguous())
        return torch.cat(parts)

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over processes (one flat all-reduce).
        Parameters sharded by `shard_model` are skipped: FSDP has averaged theirs already."""
        params = [p for p in params if not is_sharded(p)]
        if self.world == 1 or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g)
            offset += g.numel()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group together and, under a launcher, end the process here: one
        launched process in four aborted during interpreter teardown after finishing its work
        ("terminate called without an active exception", a library thread still joinable),
        which the launcher reports as a failed run."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """The main process runs the block first (creating files), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


ONE_PROCESS = Processes()


def init_processes(device: str | None = None) -> Processes:
    """The processes this one belongs to: a single one unless started by a launcher. Under a
    launcher, accelerate sets up the process group (gloo on CPU, NCCL on GPUs)."""
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    return Processes(rank=state.process_index, world=state.num_processes)


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def shard_model(module: torch.nn.Module, decoder_layers_only: bool = False) -> None:
    """FSDP (torch's fully_shard, in place: the model keeps its class and methods, which the
    recipes call directly): each decoder layer is one unit, and so is every other module that
    holds trainable parameters itself (embeddings, heads, norms, aligners); frozen parts outside
    the layers (vision tower, image tokenizer) stay whole on every process.

    Weights are gathered at a unit's first forward and kept until its backward (no resharding
    after forward): a rollout of hundreds of decode steps would otherwise gather every layer at
    every step. So each process holds the full weights while it trains, and shards gradients and
    optimiser state (ZeRO-2), which is where full fine-tuning's memory goes (Adam: 3x the weights)."""
    from torch.distributed.fsdp import fully_shard

    layers = [m for m in module.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise UnirlError(f"fsdp: no decoder layers found in {type(module).__name__}")
    for layer in layers:
        fully_shard(layer, reshard_after_forward=False)
    if decoder_layers_only:
        return
    inside = {id(p) for layer in layers for p in layer.parameters()}
    # A weight two modules share (tied input and output embeddings) stays whole on every process,
    # its gradient averaged with `average_gradients`: FSDP would shard it once per module.
    owners = Counter(id(p) for m in module.modules() for p in m.parameters(recurse=False))
    for m in module.modules():
        own = [p for p in m.parameters(recurse=False) if id(p) not in inside]
        if any(p.requires_grad for p in own) and all(owners[id(p)] == 1 for p in own):
            fully_shard(m, reshard_after_forward=False)


def clip_grad_norm(params: Sequence[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` over gradients some of which are FSDP shards: the norm is
    of the whole gradient, the same on every process."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded, whole = [g for g in grads if is_sharded(g)], [g for g in grads if not is_sharded(g)]
    squares = []
    for group in (sharded, whole):
        if group:
            norm = torch.nn.utils.get_total_norm(group)
            squares.append((norm.full_tensor() if is_sharded(norm) else norm).float() ** 2)
    if not squares:
        return torch.zeros(())
    total = torch.stack([s.to(squares[0].device) for s in squares]).sum().sqrt()
    for group in (sharded, whole):
        if group:
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total
