"""`unirl pretrain-toy`: build the shipped toy unified model from scratch on the shapes world.

A Janus-architecture model (transformers' JanusConfig: SigLIP-style vision tower, VQ-VAE, Llama
LM, generation head), small enough for a laptop CPU:

1. VQ-VAE on rendered scenes (96 px → 6x6 tokens of 16 px, one lattice cell each), with
   l2-normalised codes as Janus' VQ decodes them, one code per kind of cell content; trained on
   3x3-cell tables, which its convolutions carry over to the full 6x6 image.
2. The vision tower and aligner, in SigLIP's role of a pretrained encoder: each 16-px patch
   classifies the shape and colour of the object in it and its own row and column (dense labels
   the renderer knows), through a linear head on the aligner's output that is then thrown away.
   Dense labels teach it in minutes what answer-only training did not teach in forty (run 1:
   "what shape" 0.03 on held-out scenes).
3. The LM (and aligner; the vision tower frozen), jointly: prompt → image tokens (with 10% of
   prompts dropped, for classifier-free guidance) and image + questions → answers (what, how
   many, which colour, where, yes/no; every question about a scene in one conversation), on
   fresh scenes of the train split every step (counting prompts twice as often for
   generation: `gen_tag_weights`); `WordGrounding` teaches one head to look from
   each shape or colour word at the objects it names; `object_code_loss` makes the object codes
   drawn follow the words that name them, and `presence_loss` decides how many are drawn.
4. The default guidance, chosen on train-split prompts (see `choose_guidance`).
5. Saved as an HF Janus folder (float16) that `load_model` reads like any Janus checkpoint.

Every batch and random start is drawn from a seeded generator (the VQ-VAE's before the stages
split into threads), so the same config gives the same model.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modalities.image.shapes import (
    CELL,
    COLORS,
    IMAGE_SIZE,
    RADIUS,
    SHAPES,
    TAGS,
    Scene,
    SceneObject,
    all_specs,
    most_numerous_question,
    render,
    sample_scenes,
    scene_questions,
    split_specs,
)
from unirl.atomic import atomic_dir
from unirl.config import to_dict
from unirl.engine.metrics import MetricsLogger
from unirl.errors import UnirlError
from unirl.models.janus import JanusModel, tiny_janus_config
from unirl.models.tokenizer import build_byte_bpe_tokenizer
from unirl.progress import progress
from unirl.specs import draw_tag_balanced, plural


@dataclass
class PretrainToyConfig:
    seed: int = 0
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    vision_hidden: int = 128
    vision_layers: int = 2
    vq_steps: int = 4000
    vq_one_color_steps: int = 600
    vq_batch: int = 16
    vq_lr: float = 2e-3
    vq_temperature: float = 0.1
    vq_embed_dim: int = 24
    vq_object_weight: float = 10.0
    vq_table_cells: int = 3
    """The VQ-VAE trains on 3x3-cell tables (48 px): a quarter of the pixels per table, so four
    times the tables in the same time, and the convolutions carry over to 6x6 (held-out ceiling
    0.97 after 4,000 steps, 17 min on one core; 0.51 after 1,500 steps of 96-px tables, 24 min)."""
    vision_steps: int = 2500
    """Run 4's 1,500 stopped at 72% of object patches fully labelled; 3,000 reach 99%+ (measured;
    the tenth toy's batches: 0.93 at step 2,000, 0.95 at 2,500, 0.96 at 3,000)."""
    vision_batch: int = 64
    vision_lr: float = 1e-3
    lm_steps: int = 3000
    """The 60-minute budget on 2 cores: the tenth toy's 3,500 took 73 min in all; the eleventh's
    2,400 took 46 min but left understanding at 0.87 ("where" 0.55; the tenth 0.93, "where" 1.00);
    the twelfth's 3,000: 44.8 min on a faster hour of the same CPU, understanding 0.90; the
    thirteenth's (the shipped toy) 48.8 min, understanding 0.91."""
    gen_batch: int = 24
    gen_tag_weights: dict[str, float] = field(default_factory=lambda: {"counting": 2.0})
    """How often each tag's prompts are drawn for generation, relative to the others (1 if not
    named). Counting twice: it is learned late and all at once (generation alone on counting
    prompts, 800 steps: counting right jumped from 0.2 to 0.9 between steps 400 and 600 in one
    run and stayed at 0.14 in another), while the toy's other tags settle early."""
    und_batch: int = 16
    """Scenes per step for understanding, each a conversation of all its questions."""
    lm_lr: float = 1e-3
    cfg_drop: float = 0.1
    object_code_weight: float = 1.0
    """`object_code_loss`: at each object cell, which object code (shape, colour, size), among the
    object codes alone. Measured, generation alone, every tag, on held-out-free train prompts: the
    probability of the right colour at a colour prompt's object stayed at chance (0.11 after 900
    steps; the eighth and ninth toys: 0.11 after 5,000) without it, 0.43 after 400 steps with it."""
    presence_weight: float = 5.0
    """`presence_loss`: whether each cell holds an object; see there for what it measured."""
    grounding_weight: float = 1.0
    grounding_layer: int = 0
    """`WordGrounding`: head 0 of this LM layer learns to look, from each shape or colour word,
    at the objects it names..."""
    position_weight: float = 0.2
    """... and the layer's output at the word to hold the object's row and column. Understanding
    alone, 600 steps, held-out: weight 1 taught "where" (0.94) but loosened the binding (colour
    0.67); 0.2 kept both (where 0.82, colour 1.00); the probe on layer 1, pointer on layer 2:
    where 0.91, colour 0.70."""
    identity_weight: float = 0.2
    """... and its shape and colour (the same probe): the colour word in "What shape is the red
    object?" then holds what the answer needs. The eighth toy, without it, answered those 0.61
    (111 of 181, held-out) while "What shape is this?" was 1.00 and every colour question 1.00."""
    where_weight: float = 1.0
    where_layer: int = 1
    """`WherePointer`: heads 1 and 2 of this layer learn to look, from where a "where" answer is
    decided, at the two objects' words."""
    warmup: int = 100
    threads: int = 2
    guidance_candidates: tuple[float, ...] = (1.5, 2.0, 3.0)  # the tenth toy: 5 scored lowest (0.422)
    guidance_prompts: int = 96
    save_dtype: str = "float16"  # halves the shipped folder (float32 would pass the 25 MB budget)


def shapes_corpus() -> list[str]:
    """Text the tokenizer is trained on: every prompt, and questions and answers of many scenes."""
    rng = np.random.default_rng(0)
    lines = [s["prompt"] for s in all_specs()]
    for scene in sample_scenes(split_specs("train"), 400, seed=0):
        lines += [f"{q} {a}" for _, q, a in scene_questions(scene, rng)]
    return lines


def build_toy(config: PretrainToyConfig) -> JanusModel:
    from transformers import JanusForConditionalGeneration, JanusImageProcessor, JanusProcessor

    tokenizer = build_byte_bpe_tokenizer(shapes_corpus(), vocab_size=512)
    janus_config = tiny_janus_config(
        len(tokenizer), tokenizer.convert_tokens_to_ids(tokenizer.image_token), tokenizer.bos_token_id,
        tokenizer.eos_token_id, tokenizer.pad_token_id, image_size=IMAGE_SIZE, patch_size=CELL, hidden=config.hidden,
        layers=config.layers, heads=config.heads, codebook=TOY_CODES, vq_channels=32,
        vq_multipliers=(1, 1, 2, 2, 4), vision_hidden=config.vision_hidden, vision_layers=config.vision_layers,
        vq_embed_dim=config.vq_embed_dim)
    processor = JanusProcessor(image_processor=JanusImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
                               tokenizer=tokenizer, num_image_tokens=janus_config.vision_config.num_image_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        hf = JanusForConditionalGeneration(janus_config)
    return JanusModel(hf, processor, spec="toy", device=torch.device("cpu"), dtype=torch.float32)


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ----------------------------------------------------------------------------- cell labels
SIZE_BINS = 2  # radius halves of RADIUS: a code fixes the object's size to within half the range
TOY_CODES = 1 + len(SHAPES) * len(COLORS) * SIZE_BINS  # the empty cell, then (shape, colour, size)


def cell_labels(scenes: list[Scene], cells: int = IMAGE_SIZE // CELL
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, cells²] shape, colour and size bin of each lattice cell, row-major as tokens and
    patches are; shape and colour are 0 for the empty table, then 1.. the SHAPES and COLORS."""
    shape = torch.zeros(len(scenes), cells * cells, dtype=torch.long)
    color, size = torch.zeros_like(shape), torch.zeros_like(shape)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            cell = int(o.cy // CELL) * cells + int(o.cx // CELL)
            shape[i, cell], color[i, cell] = SHAPES.index(o.shape) + 1, COLORS.index(o.color) + 1
            size[i, cell] = min(SIZE_BINS - 1, int((o.radius - RADIUS[0]) / (RADIUS[1] - RADIUS[0]) * SIZE_BINS))
    return shape, color, size


def cell_codes(scenes: list[Scene], cells: int = IMAGE_SIZE // CELL) -> torch.Tensor:
    """[N, cells²] the code each cell is assigned: 0 empty, else one per (shape, colour, size)."""
    shape, color, size = cell_labels(scenes, cells)
    code = 1 + ((shape - 1) * len(COLORS) + (color - 1)) * SIZE_BINS + size
    return torch.where(shape > 0, code, torch.zeros_like(code))


def code_parts() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shape, colour and size index of codes 1.. (the inverse of `cell_codes`)."""
    code = torch.arange(TOY_CODES - 1)
    return code // (len(COLORS) * SIZE_BINS), code // SIZE_BINS % len(COLORS), code % SIZE_BINS


def object_code_loss(logprobs: torch.Tensor, codes: torch.Tensor, color_named: torch.Tensor) -> torch.Tensor:
    """Mean over object cells of −log p(the cell's code | some object is drawn there).

    logprobs [N, cells², TOY_CODES] the LM's teacher-forced log-probs; codes [N, cells²] the true
    ones; color_named [N] whether the prompt names its objects' colours (where it does not, the
    colour drawn is not asked of the model, so the colours of that shape and size are summed).

    Why: the plain likelihood at an object cell is ruled by *where* objects go (any object at a
    given cell is ~1/36 likely), so its gradient that tells one code from another is scaled by
    those small probabilities, and the codes a prompt names were learned slowly or not at all
    (colour at chance after 5,000 steps, see `object_code_weight`)."""
    objects = codes > 0
    if not objects.any():
        return logprobs.new_zeros(())
    given_object = logprobs[objects][:, 1:].log_softmax(-1)  # [M, codes 1..]
    code = codes[objects] - 1
    named = given_object.gather(-1, code[:, None]).squeeze(1)
    shape_of, _, size_of = code_parts()  # the code layout's one definition
    shape, size = shape_of[code], size_of[code]
    any_color = given_object.view(-1, len(SHAPES), len(COLORS), SIZE_BINS).logsumexp(2)
    unnamed = any_color[torch.arange(len(code)), shape, size]
    return -torch.where(color_named[:, None].expand_as(codes)[objects], named, unnamed).mean()


def presence_loss(logprobs: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Mean over cells of −log p(an object is drawn there, or none is, as in the scene).

    logprobs [N, cells², TOY_CODES]; codes [N, cells²]. The other half of the plain likelihood
    (log p(code) = log p(object) + log p(code | object)): how many objects are drawn and where.
    Why weighted apart: counting needs the model to stop once the named number is drawn, and
    classifier-free guidance multiplies any doubt left there (measured, generation alone on
    counting prompts, 800 steps, counting right at guidance 1 / 2: plain 0.25 / 0.03; with
    `object_code_loss` 0.25 / 0.00; with both and this at weight 5, 0.81 / 0.28)."""
    present = torch.stack([logprobs[..., 0], logprobs[..., 1:].logsumexp(-1)], dim=-1)
    return -present.gather(-1, (codes > 0).long()[..., None]).mean()


# ----------------------------------------------------------------------------- stage 1: VQ
class FactoredCodebook(torch.nn.Module):
    """The codebook during training: code (shape, colour, size) = [shape part, colour part, size
    part], l2-normalised; code 0 (the empty cell) its own vector. Shared parts let the decoder
    draw a shape once for every colour; the product is stored as an ordinary codebook."""

    def __init__(self, dim: int):
        super().__init__()
        shape_dim = dim // 3
        size_dim = max(1, dim // 6)
        self.shape = torch.nn.Parameter(torch.randn(len(SHAPES), shape_dim))
        self.color = torch.nn.Parameter(torch.randn(len(COLORS), dim - shape_dim - size_dim))
        self.size = torch.nn.Parameter(torch.randn(SIZE_BINS, size_dim))
        self.empty = torch.nn.Parameter(torch.randn(1, dim))
        self.register_buffer("ids", torch.stack(code_parts()), persistent=False)

    def forward(self) -> torch.Tensor:  # [TOY_CODES, dim], in cell_codes' order
        s, c, z = self.ids
        return F.normalize(torch.cat([self.empty, torch.cat([self.shape[s], self.color[c], self.size[z]], -1)]), dim=-1)


def random_tables(n: int, rng: np.random.Generator, one_color: str | None = None,
                  cells: int = IMAGE_SIZE // CELL) -> list[Scene]:
    """Scenes for the VQ-VAE: `cells`² tables with 1 to 4 objects of any shape and colour in
    random cells (no prompt involved, so no split applies); all `one_color` when given."""
    scenes = []
    for _ in range(n):
        occupied = rng.choice(cells * cells, size=int(rng.integers(1, 5)), replace=False)
        scenes.append(Scene({}, [SceneObject(SHAPES[rng.integers(len(SHAPES))],
                                             one_color or COLORS[rng.integers(len(COLORS))],
                                             (i % cells + 0.5) * CELL, (i // cells + 0.5) * CELL,
                                             float(rng.uniform(*RADIUS))) for i in occupied.tolist()]))
    return scenes


def init_vq(model: JanusModel) -> FactoredCodebook:
    """The VQ-VAE's random start and its training codebook, drawn from torch's global generator.
    Called before the stages split into threads: drawn inside the VQ thread, these interleaved
    with the other thread's draws and the VQ-VAE differed between identical runs."""
    for module in model.module.model.vqmodel.modules():
        # PyTorch's fan-in init: transformers' N(0, 0.02) starves these deep convs.
        if isinstance(module, torch.nn.Conv2d):
            module.reset_parameters()
    return FactoredCodebook(model.module.model.vqmodel.quantize.embedding.weight.shape[1])


def train_vq(model: JanusModel, codebook: FactoredCodebook, config: PretrainToyConfig, log: MetricsLogger) -> None:
    """The VQ-VAE with codes assigned, not discovered: the renderer knows what each 16-px cell
    holds, so the encoder learns to pick that cell's code (cross-entropy on code similarity) and
    the decoder learns to draw from the true codes.

    Measured (decoder alone, held-out GenEval of decoded true codes): with every colour from the
    start the decoder settles on one blob per colour and ignores shape (0.03-0.06 after 500-2,000
    steps, with any loss weighting or code size tried); with one colour it draws every shape
    sharply within 500 steps. So the first `vq_one_color_steps` use red objects only, then all
    colours, with codes factored into shape, colour and size parts so the shapes carry over."""
    vq = model.module.model.vqmodel
    params = [p for name, p in vq.named_parameters() if not name.startswith("quantize.")]
    optimizer = torch.optim.AdamW([*params, *codebook.parameters()], lr=config.vq_lr, weight_decay=0.0)
    rng = np.random.default_rng(config.seed)
    cells = config.vq_table_cells
    bar = progress(range(config.vq_steps), desc="vq-vae")
    vq.train()
    for step in bar:
        one_color = COLORS[0] if step < config.vq_one_color_steps else None
        scenes = random_tables(config.vq_batch, rng, one_color, cells)
        pixels, target = render(scenes, size=cells * CELL) * 2 - 1, cell_codes(scenes, cells)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, config.vq_steps, config.vq_lr, config.warmup)
        codes = codebook()  # [K,D], unit norm as Janus decodes
        z = F.normalize(vq.quant_conv(vq.encoder(pixels)), dim=1)  # [B,D,h,w]
        similarity = torch.einsum("bdhw,kd->bhwk", z, codes).flatten(1, 2)  # [B,h*w,K]
        code_loss = F.cross_entropy(similarity.flatten(0, 1) / config.vq_temperature, target.flatten())
        zq = codes[target].view(len(scenes), cells, cells, -1).permute(0, 3, 1, 2)
        recon = vq.decoder(vq.post_quant_conv(zq))
        # Occupied cells weigh more: a shape's outline is decided inside its cell, on both sides of it.
        occupied = F.interpolate((target > 0).float().view(-1, 1, cells, cells), scale_factor=CELL)
        weight = 1 + config.vq_object_weight * occupied
        rec_loss = (weight * ((recon - pixels).abs() + (recon - pixels) ** 2)).mean() / weight.mean()
        loss = rec_loss + code_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0 or step == config.vq_steps - 1:
            accuracy = (similarity.argmax(-1) == target)[target > 0].float().mean().item()
            log.log(step, {"stage": "vq", "loss": loss.item(), "recon": rec_loss.item(), "code_loss": code_loss.item(),
                           "object_code_accuracy": accuracy, "one_color": one_color is not None})
            bar.set_postfix(recon=f"{rec_loss.item():.3f}", acc=f"{accuracy:.3f}")
    vq.eval()
    with torch.no_grad():  # the factored codes become the ordinary codebook transformers' Janus reads
        vq.quantize.embedding.weight.copy_(codebook())
    log.log(config.vq_steps, {"stage": "vq", **vq_heldout_metrics(model)})


def vq_heldout_metrics(model: JanusModel, scenes: int = 300) -> dict[str, float]:
    """On held-out scenes: GenEval (exact detector) of the decoded true codes, the best score any
    LM could reach with this decoder; and how often the encoder picks each object cell's code."""
    from evaluators.geneval.detectors import load_detector
    from evaluators.geneval.evaluate import judge_batch

    held = sample_scenes(split_specs("heldout"), scenes, seed=12345)
    truth = cell_codes(held)
    with torch.no_grad():
        recon = model.decode_tokens(truth)
        encoded = model.encode_images(render(held))
    verdicts = judge_batch(recon, [s.spec for s in held], load_detector("shapes"))
    return {"heldout_geneval_ceiling": sum(v.correct for v in verdicts) / len(verdicts),
            "heldout_encoder_accuracy": (encoded == truth)[truth > 0].float().mean().item()}


# ----------------------------------------------------------------------------- stage 2: vision tower
def train_vision(model: JanusModel, config: PretrainToyConfig, log: MetricsLogger) -> None:
    """Dense labels per 16-px patch: the shape and colour of its object (or the empty table), and
    its row and column, read by a linear head from the aligner's output, so the vision tower and
    the aligner learn together what the LM is then given.

    Why on the aligner's output: with the head on the tower alone (every label right on 100% of
    object patches) the LM, understanding only, still answered "what colour is the circle?" at
    chance after 1,500 steps (0.08), finding objects by colour but not by shape; with the head on
    the aligner, 0.76 after 400 steps (held-out, measured). Position is asked for explicitly
    because "where" questions and relations need it (run 3: a linear probe read an object's row
    42% of the time without it)."""
    vision, aligner = model.module.model.vision_model, model.module.model.aligner
    cells = IMAGE_SIZE // CELL
    sizes = (len(SHAPES) + 1, len(COLORS) + 1, cells, cells)  # shape, colour, row, column
    head = torch.nn.Linear(model.module.config.text_config.hidden_size, sum(sizes))
    params = [*vision.parameters(), *aligner.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.vision_lr, weight_decay=0.01)
    specs = split_specs("train")
    index = torch.arange(cells * cells)
    bar = progress(range(config.vision_steps), desc="vision")
    for step in bar:
        scenes = sample_scenes(specs, config.vision_batch, seed=config.seed * 1_000_003 + 20_000_000 + step)
        shape, color, _ = cell_labels(scenes)
        labels = [shape, color, (index // cells).expand_as(shape), (index % cells).expand_as(shape)]
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, config.vision_steps, config.vision_lr, config.warmup)
        hidden = aligner(vision(pixel_values=model.preprocess_images(render(scenes))).last_hidden_state)
        logits = head(hidden).split(sizes, dim=-1)
        loss = sum(F.cross_entropy(lg.flatten(0, 1), lb.flatten()) for lg, lb in zip(logits, labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0 or step == config.vision_steps - 1:
            right = torch.stack([lg.argmax(-1) == lb for lg, lb in zip(logits, labels)]).all(0)
            accuracy = right[shape > 0].float().mean()
            log.log(step, {"stage": "vision", "loss": loss.item(), "object_accuracy": accuracy.item()})
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy.item():.3f}")


# ----------------------------------------------------------------------------- stage 3: LM
def factor_code_rows(weight: torch.Tensor, generator: torch.Generator) -> None:
    """Initialise per-code rows (image-token embeddings, generation-head outputs) as a sum of a
    shape, a colour and a size vector, so what the LM learns about "circle" starts shared by
    every circle code. Measured (generation only, 400 steps): the prompt's log-likelihood gain on
    true codes 2.2 nats per image with it, 0.8 without."""
    with torch.no_grad():
        dim, std = weight.shape[1], weight.std().item()
        shape, color, size = (torch.randn(n, dim, generator=generator) * std
                              for n in (len(SHAPES), len(COLORS), SIZE_BINS))
        s, c, z = code_parts()
        rows = shape[s] + color[c] + size[z]
        weight[1:] = (rows / math.sqrt(3)).to(weight.dtype)


Query = tuple[int, int, list[int]]
"""(row, query position, the key positions it should look at)"""


class AttentionCapture:
    """What one LM layer's attention saw in the last forward pass (its input hidden states and
    rotary embeddings) and what the layer put out, so a training aid can teach one of its heads
    where to look (`attention_loss`) or read the layer's output."""

    def __init__(self, model: JanusModel, layer: int):
        layer_module = model.module.model.language_model.layers[layer]
        self.attention = layer_module.self_attn
        self._handles = [self.attention.register_forward_pre_hook(self._capture_input, with_kwargs=True),
                         layer_module.register_forward_hook(self._capture_output)]

    def _capture_input(self, module, args, kwargs) -> None:
        self.hidden = args[0] if args else kwargs["hidden_states"]
        self.rope = kwargs["position_embeddings"]
        self._qk = None  # this pass's rotated queries and keys, projected once for every supervised head

    def _capture_output(self, module, args, output) -> None:
        self.output = output[0] if isinstance(output, tuple) else output

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def attention_loss(self, attention_mask: torch.Tensor, queries: list[Query],
                       head: int) -> torch.Tensor:
        """Mean over (row, query position, target key positions) of −log(the head's attention
        mass on the targets), recomputed from the captured inputs exactly as the layer does."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        attn, h = self.attention, self.hidden
        batch, length, _ = h.shape
        if not queries:
            return h.new_zeros(())
        if self._qk is None:
            split = [proj(h).view(batch, length, -1, attn.head_dim).transpose(1, 2)
                     for proj in (attn.q_proj, attn.k_proj)]
            self._qk = apply_rotary_pos_emb(*split, *self.rope)  # [B,H,T,d], [B,H_kv,T,d]
        rotated_q, rotated_k = self._qk
        rows_t, at_t = torch.tensor([q[0] for q in queries]), torch.tensor([q[1] for q in queries])
        kv_head = head // (attn.config.num_attention_heads // attn.config.num_key_value_heads)
        scores = torch.einsum("md,mtd->mt", rotated_q[rows_t, head, at_t], rotated_k[rows_t, kv_head]) * attn.scaling
        keys = torch.arange(length)
        visible = (attention_mask[rows_t] > 0) & (keys[None, :] <= at_t[:, None])
        log_attention = torch.log_softmax(scores.float().masked_fill(~visible, float("-inf")), dim=-1)
        on_target = torch.zeros_like(visible)
        for m, (_, _, positions) in enumerate(queries):
            on_target[m, positions] = True
        return -torch.logsumexp(log_attention.masked_fill(~on_target, float("-inf")), dim=-1).mean()


def shape_and_color_words(model: JanusModel) -> dict[int, tuple[int, int]]:
    """token id -> (0 shape | 1 colour, label as in cell_labels); plural shape words too."""
    vocab = model.tokenizer.get_vocab()
    words = {**{w: (0, i + 1) for i, s in enumerate(SHAPES) for w in (s, plural(s))},
             **{c: (1, i + 1) for i, c in enumerate(COLORS)}}
    return {vocab[f"Ġ{w}"]: v for w, v in words.items() if f"Ġ{w}" in vocab}


class WordGrounding:
    """A training aid for binding words to objects: wherever a shape or colour word stands in a
    conversation ("star", "stars", "red"), head 0 of one LM layer is taught to look at the image
    tokens of the objects it names (the log of its attention mass there), and the layer's output
    at a word naming one object to hold that object's row, column, shape and colour (a linear
    probe, thrown away). A word naming nothing in the scene is left alone.

    Why: without the attention term the LM found objects but not which one a question means
    ("What color is the star?" answered with the other object's colour half the time after 5,000
    steps). Without the position term the words did not take the object's position along: in run
    6 a linear probe read the named object's column from the word 17% of the time (chance), from
    the object's own image token 97%, and "where" answers stayed at chance. The model it leaves is
    a plain Janus: the head is free elsewhere, and nothing of the aid is saved."""

    def __init__(self, model: JanusModel, layer: int):
        self.capture = AttentionCapture(model, layer)
        self.image_token_id = model.module.config.image_token_id
        self.word_of = shape_and_color_words(model)
        side = IMAGE_SIZE // CELL
        self.probe = torch.nn.Linear(model.module.config.text_config.hidden_size, 2 * side + len(SHAPES) + len(COLORS))

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.probe.parameters())

    def remove(self) -> None:
        self.capture.remove()

    def named_cells(self, input_ids: torch.Tensor, scenes: list[Scene]) -> list[tuple[int, int, list[int]]]:
        """(row, position of a word, lattice cells of the objects it names)."""
        cells = torch.stack(cell_labels(scenes)[:2], dim=1)  # [B, 2 (shape, colour), cells²]
        out = []
        for i, row in enumerate(input_ids.tolist()):
            for t, token in enumerate(row):
                if token in self.word_of:
                    kind, label = self.word_of[token]
                    where = (cells[i, kind] == label).nonzero().squeeze(1).tolist()
                    if where:
                        out.append((i, t, where))
        return out

    def named_objects(self, input_ids: torch.Tensor, scenes: list[Scene]) -> list[Query]:
        """(row, position of a word, positions of the image tokens of the objects it names)."""
        image_at = [(row == self.image_token_id).nonzero().squeeze(1).tolist() for row in input_ids]
        return [(i, t, [image_at[i][c] for c in cells]) for i, t, cells in self.named_cells(input_ids, scenes)]

    def loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, scenes: list[Scene]) -> torch.Tensor:
        """After a forward pass on these inputs: the attention term."""
        return self.capture.attention_loss(attention_mask, self.named_objects(input_ids, scenes), head=0)

    def probe_losses(self, input_ids: torch.Tensor, scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
        """After a forward pass on these inputs: the position term (cross-entropy of row and
        column) and the identity term (of shape and colour), at each word naming one object."""
        one = [(i, t, cells[0]) for i, t, cells in self.named_cells(input_ids, scenes) if len(cells) == 1]
        if not one:
            zero = self.capture.output.new_zeros(())
            return zero, zero
        side = IMAGE_SIZE // CELL
        rows_t, at_t, cell_t = (torch.tensor(v) for v in zip(*one))
        logits = self.probe(self.capture.output[rows_t, at_t].float())
        rows, cols, shapes, colors = logits.split([side, side, len(SHAPES), len(COLORS)], dim=-1)
        shape, color = cell_labels(scenes)[:2]
        position = (F.cross_entropy(rows, cell_t // side) + F.cross_entropy(cols, cell_t % side)) / 2
        identity = (F.cross_entropy(shapes, shape[rows_t, cell_t] - 1)
                    + F.cross_entropy(colors, color[rows_t, cell_t] - 1)) / 2
        return position, identity


class WherePointer:
    """A training aid for "Where is the A relative to the B?": at the position that decides the
    answer, head 1 of one LM layer is taught to look at the word A and head 2 at the word B, which
    `WordGrounding` has given each object's position; the layers above compare the two.

    Why: with either aid alone "where" stayed at chance (understanding alone, 600 steps, held-out:
    0.25 with the pointer, 0.25 with the position term); with both, 0.94 (0.82 with the position
    term at its default weight, 0.2)."""

    def __init__(self, model: JanusModel, layer: int):
        self.capture = AttentionCapture(model, layer)
        self.shape_words = {t for t, (kind, _) in shape_and_color_words(model).items() if kind == 0}

    def remove(self) -> None:
        self.capture.remove()

    def queries(self, input_ids: torch.Tensor, conversations: list[list[tuple[str, str]]],
                answer_at: list[list[int]]) -> tuple[list[Query], list[Query]]:
        """(answer position → A's word), (answer position → B's word), for every "where" question."""
        to_subject, to_reference = [], []
        for i, (turns, decided_at) in enumerate(zip(conversations, answer_at)):
            row = input_ids[i].tolist()
            for (question, _), at in zip(turns, decided_at):
                if not question.startswith("Where is the"):
                    continue
                reference, subject = [t for t in range(at, 0, -1) if row[t] in self.shape_words][:2]
                to_subject.append((i, at, [subject]))
                to_reference.append((i, at, [reference]))
        return to_subject, to_reference

    def loss(self, inputs: dict, conversations: list[list[tuple[str, str]]], answer_at: list[list[int]]
             ) -> torch.Tensor:
        to_subject, to_reference = self.queries(inputs["input_ids"], conversations, answer_at)
        mask = inputs["attention_mask"]
        return (self.capture.attention_loss(mask, to_subject, head=1)
                + self.capture.attention_loss(mask, to_reference, head=2)) / 2


def train_lm(model: JanusModel, config: PretrainToyConfig, log: MetricsLogger, vq: Future | None = None) -> None:
    """`vq`: the VQ stage training beside this one; once it is done, the LM takes every thread."""
    hf = model.module
    generator = torch.Generator().manual_seed(config.seed)
    factor_code_rows(hf.model.generation_embeddings.weight, generator)
    factor_code_rows(hf.model.generation_head.vision_head.weight, generator)
    for p in hf.model.vision_model.parameters():
        p.requires_grad_(False)
    # Not the VQ-VAE's: it may be training in the other thread, and the LM learns assigned codes.
    params = [p for name, p in hf.named_parameters() if p.requires_grad and not name.startswith("model.vqmodel.")]
    grounding = WordGrounding(model, config.grounding_layer) if config.grounding_weight > 0 else None
    pointer = WherePointer(model, config.where_layer) if config.where_weight > 0 else None
    if grounding is not None and (config.position_weight > 0 or config.identity_weight > 0):
        params += grounding.parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lm_lr, weight_decay=0.01, betas=(0.9, 0.98))
    specs = split_specs("train")
    bar = progress(range(config.lm_steps), desc="lm")
    start = time.time()
    for step in bar:
        if vq is not None and vq.done() and torch.get_num_threads() < config.threads:
            torch.set_num_threads(config.threads)
        rng = np.random.default_rng(config.seed * 1_000_003 + 10_000_000 + step)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, config.lm_steps, config.lm_lr, config.warmup)
        # Generation: prompt → image tokens, some prompts dropped for classifier-free guidance.
        gen_scenes = sample_scenes(specs, config.gen_batch, seed=int(rng.integers(2**31)),
                                   tag_weights=config.gen_tag_weights)
        tokens = cell_codes(gen_scenes)  # the assigned codes: exact targets, no encoder pass
        drop = torch.from_numpy(rng.random(config.gen_batch) < config.cfg_drop)
        gen_logprobs = model.image_token_distributions([s.spec["prompt"] for s in gen_scenes], tokens,
                                                       guidance=1.0, unconditional=drop)
        gen_loss = -gen_logprobs.gather(-1, tokens[..., None]).mean()
        kept = ~drop  # a dropped prompt names nothing
        color_named = torch.tensor([any("color" in part for part in s.spec["include"]) for s in gen_scenes])
        object_loss = object_code_loss(gen_logprobs[kept], tokens[kept], color_named[kept])
        presence = presence_loss(gen_logprobs, tokens)  # dropped prompts too: the unconditional layout
        # Understanding: every question about a scene (and how many of its most numerous shape,
        # which a random shape rarely asks), in a random order, in one conversation:
        # the image is read once for four or five answers (measured, understanding alone, 400
        # steps: held-out accuracy 0.55 this way, 0.49 with one question per scene, same time).
        und_scenes = sample_scenes(specs, config.und_batch, seed=int(rng.integers(2**31)))
        conversations = []
        for scene in und_scenes:
            questions = scene_questions(scene, rng)
            if (extra := most_numerous_question(scene)) is not None and extra not in questions:
                questions.append(extra)
            conversations.append([questions[i][1:] for i in rng.permutation(len(questions))])
        inputs, is_target, answer_at = model.conversation_batch(render(und_scenes), conversations)
        und_lp, und_tokens = model.target_logprobs(inputs, is_target)
        und_loss = -und_lp.sum() / und_tokens.sum()
        # The training aids read what the understanding pass left in their layers.
        aids = {}
        if grounding is not None:
            aids["grounding_loss"] = config.grounding_weight * grounding.loss(
                inputs["input_ids"], inputs["attention_mask"], und_scenes)
            if config.position_weight > 0 or config.identity_weight > 0:
                position_loss, identity_loss = grounding.probe_losses(inputs["input_ids"], und_scenes)
                aids["position_loss"] = config.position_weight * position_loss
                aids["identity_loss"] = config.identity_weight * identity_loss
        if pointer is not None:
            aids["where_pointer_loss"] = config.where_weight * pointer.loss(inputs, conversations, answer_at)
        loss = (gen_loss + config.object_code_weight * object_loss + config.presence_weight * presence
                + und_loss + sum(aids.values()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 20 == 0 or step == config.lm_steps - 1:
            log.log(step, {"stage": "lm", "loss": loss.item(), "gen_loss": gen_loss.item(),
                           "object_code_loss": object_loss.item(), "presence_loss": presence.item(),
                           "und_loss": und_loss.item(), "seconds": round(time.time() - start, 1),
                           **{name: value.item() for name, value in aids.items()}})
            bar.set_postfix(gen=f"{gen_loss.item():.3f}", und=f"{und_loss.item():.3f}")
    for aid in (grounding, pointer):
        if aid is not None:
            aid.remove()


# ----------------------------------------------------------------------------- stage 4: guidance
def choose_guidance(model: JanusModel, config: PretrainToyConfig, log: MetricsLogger) -> float:
    """Pick the classifier-free guidance the toy is sampled with by default, by GenEval (exact
    detector) on train-split prompts drawn tag-balanced, never held-out ones; stored as
    generation_config.guidance_scale. Why not Janus-Pro's 5: the toy's tables are mostly empty,
    and strong guidance pushes away from the unconditional count, so single-object prompts come
    out empty."""
    from evaluators.geneval.detectors import load_detector
    from evaluators.geneval.evaluate import judge_batch

    specs = draw_tag_balanced(split_specs("train"), config.guidance_prompts, np.random.default_rng(config.seed))
    detector, scores = load_detector("shapes"), {}
    for guidance in config.guidance_candidates:
        rollout = model.generate_images([s["prompt"] for s in specs], num_per_prompt=4, guidance=guidance,
                                        seed=config.seed)
        verdicts = judge_batch(rollout.images, [s for s in specs for _ in range(4)], detector)
        scores[guidance] = sum(v.correct for v in verdicts) / len(verdicts)
    best = max(scores, key=scores.get)
    model.module.generation_config.guidance_scale = best
    log.log(config.lm_steps, {"stage": "guidance", "train_geneval_by_guidance": scores, "guidance": best})
    return best


def timed(stage, *args, threads: int | None = None) -> float:
    if threads:  # per thread: the VQ stage's thread and the main one each set their own
        torch.set_num_threads(threads)
    start = time.time()
    stage(*args)
    return round(time.time() - start, 1)


def pretrain_toy(out: str | Path, config: PretrainToyConfig | None = None, overwrite: bool = False) -> Path:
    config = config or PretrainToyConfig()
    if config.save_dtype not in ("float32", "float16", "bfloat16"):
        raise UnirlError(f"save_dtype: expected float32, float16 or bfloat16, got {config.save_dtype!r}")
    if unknown := set(config.gen_tag_weights) - set(TAGS):
        raise UnirlError(f"gen_tag_weights: expected tags among {', '.join(TAGS)}, got {', '.join(sorted(unknown))}")
    torch.manual_seed(config.seed)
    # The VQ-VAE and the LM do not depend on each other (the LM learns the codes assigned to the
    # cells, not the encoder's output), so given two cores they train side by side, one each.
    side_by_side = config.threads >= 2
    torch.set_num_threads(config.threads // 2 if side_by_side else config.threads)
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        log = MetricsLogger(tmp, tensorboard=False)
        start = time.time()
        model = build_toy(config)
        codebook = init_vq(model)
        with ThreadPoolExecutor(max_workers=1) as pool:
            vq = pool.submit(timed, train_vq, model, codebook, config, log, threads=1) if side_by_side else None
            seconds = {"vq": None if vq else timed(train_vq, model, codebook, config, log),
                       "vision": timed(train_vision, model, config, log),
                       "lm": timed(train_lm, model, config, log, vq)}
            if vq is not None:
                seconds["vq"] = vq.result()  # re-raises what the VQ stage raised
        choose_guidance(model, config, log)
        model.module.to(getattr(torch, config.save_dtype))
        model.save_pretrained(tmp)
        (tmp / "pretrain.json").write_text(json.dumps({
            "config": to_dict(config), "stage_seconds": seconds, "side_by_side": side_by_side,
            "total_seconds": round(time.time() - start, 1), "threads": config.threads}, indent=1) + "\n")
        log.close()
    return out
