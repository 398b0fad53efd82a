"""A Llama forward over a preallocated KV cache, for sampling loops (Janus' image tokens).

transformers' DynamicCache grows by concatenation, copying the whole cache at every token, and
its forward spends longer in Python per token than a small model spends computing. This is the
same arithmetic as LlamaDecoderLayer's (RMSNorm, RoPE, attention, SwiGLU, through the layer's
own modules, so LoRA adapters apply), written as one function over fixed buffers: a decode step
then has fixed shapes and no host synchronisation, and on CUDA `StepGraphs` captures it once per
attention length and replays it per token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class StaticKV:
    """Keys and values of every layer, [rows, kv_heads, capacity, head_dim] each, zero-filled:
    a slot not yet written is masked out and holds no NaN for the masked product to spread."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def allocate(cls, lm: torch.nn.Module, rows: int, capacity: int, device: torch.device,
                 dtype: torch.dtype) -> StaticKV:
        cfg = lm.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        shape = (rows, cfg.num_key_value_heads, capacity, head_dim)
        layers = cfg.num_hidden_layers
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)])


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as Llama applies it (halves rotated, not interleaved pairs)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def llama_forward(lm: torch.nn.Module, kv: StaticKV, embeds: torch.Tensor, positions: torch.Tensor,
                  write_at: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Run `lm` (a transformers LlamaModel) on `embeds` [R,S,H] at rotary `positions` [R,S]:
    their keys and values go into cache slots `write_at` [S] (a device tensor, so a captured
    graph can replay at any slot), and query s attends to cache slot j < L where
    `visible` [R,S,L] is True. Returns the final-norm hidden states [R,S,H]."""
    rows, length = embeds.shape[:2]
    cos, sin = lm.rotary_emb(embeds, positions)
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    mask = visible[:, None]
    span = visible.shape[-1]
    x = embeds
    for layer, keys, values in zip(lm.layers, kv.keys, kv.values):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(rows, length, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(rows, length, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(rows, length, -1, attn.head_dim).transpose(1, 2)
        keys.index_copy_(2, write_at, _rotate(k, cos, sin).to(keys.dtype))  # (autocast computes in bf16)
        values.index_copy_(2, write_at, v.to(values.dtype))
        k_all, v_all = keys[:, :, :span], values[:, :, :span]
        if attn.num_key_value_groups > 1:
            k_all = k_all.repeat_interleave(attn.num_key_value_groups, dim=1)
            v_all = v_all.repeat_interleave(attn.num_key_value_groups, dim=1)
        out = F.scaled_dot_product_attention(_rotate(q, cos, sin), k_all, v_all, attn_mask=mask, scale=attn.scaling)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(rows, length, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return lm.norm(x)


def gather_sharded(module: torch.nn.Module) -> None:
    """Gather the weights of FSDP-sharded submodules. FSDP gathers a unit's weights in a hook on
    its forward, and `llama_forward` calls a layer's parts, not the layer; the weights then stay
    gathered until the unit's backward, as FSDP keeps them after a forward (see shard_model)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6: no fully_shard, so nothing is sharded by it
        return
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.unshard()


def mask_positions(mask: torch.Tensor) -> torch.Tensor:
    """Rotary positions [R,S] of a left-padded batch: each real token's index among its row's real
    tokens (padding at 0), so a row reads the same whatever padding its batch gave it."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def prompt_visibility(mask: torch.Tensor) -> torch.Tensor:
    """visible [R,P,P] for a left-padded prompt: causal over real tokens; a padding query sees
    only itself, so no softmax row is empty (its output is never read)."""
    length = mask.shape[1]
    slots = torch.arange(length, device=mask.device)
    causal = slots[:, None] >= slots[None, :]
    return (mask.bool()[:, None, :] & causal) | torch.eye(length, dtype=torch.bool, device=mask.device)


def attention_buckets(first: int, last: int, chunk: int = 64) -> list[int]:
    """Attention lengths to capture graphs for, covering `first`..`last` slots: multiples of
    `chunk` (aligned for the attention kernels), so a step reads at most chunk-1 unused slots."""
    start = -(-first // chunk) * chunk
    return [n for n in range(start, last, chunk)] + [last]


class CachedDecoder:
    """Token-by-token decoding of one batch of left-padded prompts over a StaticKV.

    `embed(tokens [N]) -> [R,1,H]` makes the next input from the tokens just sampled (R may be a
    multiple of N: classifier-free guidance's rows); `head(hidden [R,H])` turns the last hidden
    state into whatever the caller samples from. `first` is the head's output after the prompt;
    `feed(tokens)` appends them and returns the head's output for the next position. On CUDA with
    `graphs`, each step after the first EAGER_STEPS is a replayed CUDA graph."""

    # Capturing costs a few eager steps' time: short decodes (a one-word answer) never pay it back.
    EAGER_STEPS = 8

    def __init__(self, lm: torch.nn.Module, embeds: torch.Tensor, mask: torch.Tensor, new_tokens: int,
                 embed: Callable[[torch.Tensor], torch.Tensor], head: Callable[[torch.Tensor], torch.Tensor],
                 graphs: bool = True):
        rows, self.prompt = mask.shape
        self.capacity = self.prompt + max(new_tokens - 1, 0)  # the last token sampled is never fed back
        self.lm, self.embed, self.head = lm, embed, head
        gather_sharded(lm)
        self.kv = StaticKV.allocate(lm, rows, self.capacity, embeds.device, embeds.dtype)
        self.slots = torch.arange(self.capacity, device=embeds.device)
        positions = mask_positions(mask)
        hidden = llama_forward(lm, self.kv, embeds, positions, self.slots[:self.prompt], prompt_visibility(mask))
        self.first = head(hidden[:, -1])
        # A step's inputs live in these buffers, so that a captured graph reads the current ones.
        self.readable = torch.cat([mask.bool(), mask.new_ones(rows, self.capacity - self.prompt, dtype=torch.bool)],
                                  dim=1)
        self.last_position = positions[:, -1:]
        self.slot_in = torch.full((1,), self.prompt, dtype=torch.long, device=embeds.device)
        self.tokens_in: torch.Tensor | None = None
        self.use_graphs = graphs and embeds.device.type == "cuda"
        self.graphs: StepGraphs | None = None
        self.fed = 0

    def _step(self, span: int) -> torch.Tensor:
        visible = (self.readable[:, :span] & (self.slots[:span] <= self.slot_in))[:, None]
        positions = self.last_position + self.slot_in - (self.prompt - 1)
        hidden = llama_forward(self.lm, self.kv, self.embed(self.tokens_in), positions, self.slot_in, visible)
        return self.head(hidden[:, -1])

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.prompt + self.fed >= self.capacity:
            raise ValueError(f"CachedDecoder: room for {self.capacity - self.prompt} fed tokens, all used")
        if self.tokens_in is None:
            self.tokens_in = tokens.clone()
        else:
            self.tokens_in.copy_(tokens)
        self.slot_in.fill_(self.prompt + self.fed)  # these tokens' keys go here; they see slots up to it
        self.fed += 1
        needed = self.prompt + self.fed
        if not self.use_graphs or self.fed <= self.EAGER_STEPS:
            return self._step(needed)
        if self.graphs is None:
            self.graphs = StepGraphs(self._step, attention_buckets(needed, self.capacity))
        return self.graphs.replay(needed)


class StepGraphs:
    """A decode step `step(span) -> output`, whose inputs live in fixed buffers, captured as one
    CUDA graph per attention span; `replay(needed)` runs the smallest span >= needed. The step
    must be idempotent at its current inputs (writing a token's keys twice writes the same
    values): the warm-up that capture requires runs each span once."""

    def __init__(self, step: Callable[[int], torch.Tensor], spans: list[int]):
        self.spans = sorted(spans)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # cuBLAS and the allocator initialise outside the capture
            for span in self.spans:
                step(span)
        torch.cuda.current_stream().wait_stream(side)
        self.graphs, self.outputs = [], []
        for span in self.spans:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.outputs.append(step(span))
            self.graphs.append(graph)

    def replay(self, needed: int) -> torch.Tensor:
        i = next(i for i, span in enumerate(self.spans) if span >= needed)
        self.graphs[i].replay()
        return self.outputs[i]
