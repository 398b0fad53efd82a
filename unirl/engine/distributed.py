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
        """Replace each parameter's gradient by its mean over processes (one flat all-reduce)."""
        if self.world == 1:
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
