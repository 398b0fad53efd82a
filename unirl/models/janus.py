"""Janus / Janus-Pro through transformers' JanusForConditionalGeneration.

We use transformers' modules as they are (vision tower, aligner, VQ-VAE, Llama LM, generation
embeddings and head) and write only the loops around them, because RL needs what
`generate` does not give: the log-prob of every sampled image token, a teacher-forced pass
that reproduces it exactly, a fixed seed per call, and batched yes/no judging.

Prompt formats follow Janus' own "deepseek" SFT format:
  generation     ``<|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>``
  understanding  ``<|User|>: <begin_of_image><image_placeholder>*n<end_of_image>\\n{question}\\n\\n<|Assistant|>:``
  next frame     ``<|User|>: {task}\\n<begin_of_image>[frame t]<end_of_image>\\n\\n<|Assistant|>:<begin_of_image>``
                 (SAIL's planner: frame t enters through the generation embeddings)
Classifier-free guidance as Janus does it: the unconditional row keeps BOS and BOI and
replaces every other prompt token with PAD; guided logits = u + g·(c − u), so g = 1 is no CFG.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import JanusConfig, JanusForConditionalGeneration, JanusImageProcessor, JanusProcessor

from unirl.errors import UnirlError
from unirl.models.base import IMAGE_SLOT, ImageRollout, Images, TextRollout, UnifiedModel, yes_no_token_ids
from unirl.models.llama_decode import CachedDecoder, mask_positions
from unirl.models.tokenizer import ASSISTANT, USER, build_byte_bpe_tokenizer

MODEL_CARD = "unirl_model.json"  # marks a folder this toolkit saved; names the backend


def tiny_janus_config(vocab_size: int, image_token_id: int, bos: int, eos: int, pad: int, *, image_size: int = 32,
                      patch_size: int = 8, hidden: int = 64, layers: int = 2, heads: int = 4,
                      codebook: int = 64, vq_channels: int = 32, vq_multipliers: tuple[int, ...] = (1, 1, 2, 2),
                      vision_hidden: int | None = None, vision_layers: int | None = None,
                      vq_embed_dim: int = 8) -> JanusConfig:
    """A random-init Janus; the defaults build in milliseconds on a CPU (for tests). The VQ
    decoder upsamples the token grid by 2^(len(vq_multipliers)-1), which must give image_size."""
    grid = image_size // patch_size
    if grid * 2 ** (len(vq_multipliers) - 1) != image_size:
        raise UnirlError(f"vq_multipliers: {len(vq_multipliers)} levels do not upsample a {grid}x{grid} token grid "
                         f"to {image_size} px")
    vision_hidden = vision_hidden or hidden
    return JanusConfig(
        text_config=dict(model_type="llama", vocab_size=vocab_size, hidden_size=hidden,
                         intermediate_size=(8 * hidden) // 3,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=4096, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad),
        vision_config=dict(hidden_size=vision_hidden, num_hidden_layers=vision_layers or layers,
                           num_attention_heads=4, image_size=image_size, patch_size=patch_size, projection_dim=hidden,
                           num_image_tokens=grid * grid, mlp_ratio=2.0),
        # GroupNorm(32) in the VQ-VAE needs at least 32 channels.
        vq_config=dict(embed_dim=vq_embed_dim, num_embeddings=codebook, latent_channels=vq_channels,
                       base_channels=vq_channels,
                       channel_multiplier=list(vq_multipliers), num_res_blocks=1, projection_dim=hidden,
                       image_token_embed_dim=hidden),
        image_token_id=image_token_id,
    )


def build_tiny_janus(seed: int = 0, **config_kwargs) -> tuple[JanusForConditionalGeneration, JanusProcessor]:
    tokenizer = build_byte_bpe_tokenizer()
    config = tiny_janus_config(len(tokenizer), tokenizer.convert_tokens_to_ids(tokenizer.image_token),
                               tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                               **config_kwargs)
    size = config.vision_config.image_size
    processor = JanusProcessor(image_processor=JanusImageProcessor(size={"height": size, "width": size}),
                               tokenizer=tokenizer, num_image_tokens=config.vision_config.num_image_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = JanusForConditionalGeneration(config)
    return model, processor


class JanusModel(UnifiedModel):
    backend = "janus"
    image_context = True
    frozen_prefixes = ("model.vqmodel.", "model.vision_model.")

    def __init__(self, hf_model: JanusForConditionalGeneration, processor: JanusProcessor, spec: str,
                 device: torch.device, dtype: torch.dtype):
        self.module = hf_model.to(device=device, dtype=dtype).eval()  # eval: no dropout; grads still flow
        if device.type == "cpu":  # oneDNN's convolutions run faster channels-last: the VQ decode 1.5x (bench/README)
            self.module.model.vqmodel.to(memory_format=torch.channels_last)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.spec, self.device, self.dtype = spec, device, dtype
        tok = self.tokenizer
        self.bos_id, self.pad_id, self.eos_id = tok.bos_token_id, tok.pad_token_id, tok.eos_token_id
        self.boi_id = tok.convert_tokens_to_ids(tok.boi_token)
        self.image_token_id = tok.convert_tokens_to_ids(tok.image_token)
        self.eoi_id = tok.convert_tokens_to_ids(tok.eoi_token)
        # Tokens an answer may not contain: an image placeholder in the text would ask for pixels
        # that do not exist (and the image delimiters mean nothing outside an image block).
        self.not_in_answers = torch.tensor([tok.convert_tokens_to_ids(t) for t in
                                            (tok.image_token, tok.boi_token, tok.eoi_token)], device=device)
        ip = processor.image_processor
        self.image_size = ip.size["height"]
        self.image_mean = torch.tensor(ip.image_mean, device=device).view(1, 3, 1, 1)
        self.image_std = torch.tensor(ip.image_std, device=device).view(1, 3, 1, 1)
        self.background = torch.tensor(ip.background_color, device=device).view(1, 3, 1, 1) / 255.0
        self.yes_ids, self.no_ids = yes_no_token_ids(self.tokenizer, spec)
        self._compiled_decode = None
        self.cuda_graphs = True  # on CUDA, replay each image-token step from a captured graph

    def compile(self) -> JanusModel:
        """torch.compile the VQ decoder (the bulk of a small model's rollout on CPU: 1.4x faster
        again on the toy, after about a minute of compiling on first use). Returns self."""
        self._compiled_decode = torch.compile(self.module.model.vqmodel.decode)
        return self

    # ----------------------------------------------------------------- properties
    @property
    def default_guidance(self) -> float:
        """generation_config.guidance_scale when the checkpoint sets it (as transformers' Janus
        generate reads it), else Janus-Pro's 5."""
        return float(getattr(self.module.generation_config, "guidance_scale", None) or 5.0)

    @property
    def lm(self) -> torch.nn.Module:
        return self.module.model.language_model

    @property
    def num_image_tokens(self) -> int:
        return self.module.config.vision_config.num_image_tokens

    @property
    def generation_image_size(self) -> int:
        """Pixels per side of generated images: the token grid upsampled by the VQ decoder."""
        vq = self.module.config.vq_config
        return math.isqrt(self.num_image_tokens) * 2 ** (len(vq.channel_multiplier) - 1)

    def generation_text(self, prompt: str, with_context: bool = False, with_view: bool = False) -> str:
        """The prompt turn; `with_context` puts an image block after the text, whose placeholders
        `_prompt_embeds` fills with a context image's token embeddings (next-frame planning). The
        block comes last so that each context token sits at the same distance from the token it
        becomes in the new image, whatever the text's length: copying is one fixed offset.
        `with_view` puts another block before the text, for the same image as the vision tower
        sees it (the understanding path, which already knows where each object is)."""
        tok = self.tokenizer
        image = tok.boi_token + tok.image_token * self.num_image_tokens + tok.eoi_token
        block = "\n" + image if with_context else ""
        view = image + "\n" if with_view else ""
        return f"{USER}: {view}{prompt}{block}\n\n{ASSISTANT}:{tok.boi_token}"

    def understanding_text(self, question: str, num_images: int = 1) -> str:
        """The user turn: the images, then the question; or, when the question holds one
        IMAGE_SLOT per image ("Tile 1: <image>\nTile 2: <image>\n…"), each image in its slot."""
        tok = self.tokenizer
        block = tok.boi_token + tok.image_token * self.num_image_tokens + tok.eoi_token
        slots = question.count(IMAGE_SLOT)
        if slots == 0:
            return f"{USER}: {block * num_images}\n{question}\n\n{ASSISTANT}:"
        if slots != num_images:
            raise UnirlError(f"question: {slots} {IMAGE_SLOT} slots for {num_images} images")
        return f"{USER}: {question.replace(IMAGE_SLOT, block)}\n\n{ASSISTANT}:"

    def _left_pad(self, rows: list[list[int]], right: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and mask [N, longest], padded on the left (on the right with `right`)."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            start = 0 if right else width - len(r)
            ids[i, start:start + len(r)] = torch.tensor(r)
            mask[i, start:start + len(r)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _generation_inputs(self, prompts: list[str], guidance: float, unconditional: torch.Tensor | None = None,
                           with_context: bool = False, with_view: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask for the cond rows, with the uncond rows appended when guidance != 1.
        `unconditional` [N] bool turns chosen cond rows into uncond ones (CFG dropout in training).
        Uncond rows keep the context image: guidance then weighs the text against the image alone."""
        rows = self.tokenizer([self.generation_text(p, with_context, with_view) for p in prompts],
                              add_special_tokens=True)["input_ids"]
        ids, mask = self._left_pad(rows)
        keep = (ids == self.bos_id) | (ids == self.boi_id) | (mask == 0)
        if with_context:
            keep |= (ids == self.image_token_id) | (ids == self.eoi_id)
        uncond = torch.where(keep, ids, torch.full_like(ids, self.pad_id))
        if unconditional is not None:
            ids = torch.where(unconditional.to(self.device)[:, None], uncond, ids)
        if guidance != 1.0:
            ids, mask = torch.cat([ids, uncond]), torch.cat([mask, mask])
        return ids, mask

    def _prompt_embeds(self, ids: torch.Tensor, context_tokens: torch.Tensor | None,
                       context_images: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings of prompt ids; the image placeholders, when there is a context image,
        take its tokens' generation embeddings, after its vision features when `context_images`
        gives its pixels too (the rows of both repeat for CFG's rows)."""
        embeds = self.module.get_input_embeddings()(ids)
        if context_tokens is None:
            return embeds
        repeat = ids.shape[0] // context_tokens.shape[0]
        image = self.module.prepare_embeddings_for_image_generation(context_tokens.to(self.device)).to(embeds.dtype)
        if context_images is not None:  # placeholders fill row by row: this row's view block, then its tokens
            vision = self.module.model.vision_model(self.preprocess_images(context_images)).last_hidden_state
            image = torch.cat([self.module.model.aligner(vision).to(embeds.dtype), image], dim=1)
        return embeds.masked_scatter((ids == self.image_token_id)[..., None], image.repeat(repeat, 1, 1))

    def _check_context(self, context_tokens: torch.Tensor | None, rows: int,
                       context_images: torch.Tensor | None = None) -> None:
        if context_tokens is not None and tuple(context_tokens.shape) != (rows, self.num_image_tokens):
            raise UnirlError(f"context_tokens: expected shape ({rows}, {self.num_image_tokens}), "
                             f"got {tuple(context_tokens.shape)}")
        if context_images is not None and (context_tokens is None or context_images.dim() != 4
                                           or context_images.shape[:2] != (rows, 3)):
            raise UnirlError(f"context_images: expected pixels [{rows},3,H,W] of the context_tokens' images, "
                             f"got shape {tuple(context_images.shape)}"
                             + ("" if context_tokens is not None else " without context_tokens"))

    @staticmethod
    def _guided_logprobs(logits: torch.Tensor, batch: int, guidance: float, temperature: float) -> torch.Tensor:
        """logits: [R, ..., V] with R = batch (no CFG) or 2*batch (cond rows, then uncond rows)."""
        logits = logits.float()
        if guidance != 1.0:
            cond, uncond = logits[:batch], logits[batch:]
            logits = uncond + guidance * (cond - uncond)
        return torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)

    # ----------------------------------------------------------------- generation
    @torch.no_grad()
    def generate_images(self, prompts: list[str], num_per_prompt: int = 1, guidance: float = 5.0,
                        temperature: float = 1.0, seed: int = 0, context_tokens: torch.Tensor | None = None,
                        context_images: torch.Tensor | None = None) -> ImageRollout:
        """`context_tokens` [len(prompts), T]: image tokens (`encode_images`) of an image each new
        one continues from, placed after its prompt (next-frame planning: frame t in, frame t+1 out);
        `context_images` [len(prompts),3,H,W]: the same images' pixels, also shown to the vision
        tower before the prompt."""
        if not prompts:
            raise UnirlError("generate_images: expected at least one prompt")
        self._check_context(context_tokens, len(prompts), context_images)
        per_sample = [p for p in prompts for _ in range(num_per_prompt)]
        if context_tokens is not None:
            context_tokens = context_tokens.repeat_interleave(num_per_prompt, dim=0)
        if context_images is not None:
            context_images = context_images.repeat_interleave(num_per_prompt, dim=0)
        batch, steps = len(per_sample), self.num_image_tokens
        ids, mask = self._generation_inputs(per_sample, guidance, with_context=context_tokens is not None,
                                            with_view=context_images is not None)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        decoder = CachedDecoder(
            self.lm, self._prompt_embeds(ids, context_tokens, context_images), mask, steps,
            embed=lambda token: self.module.prepare_embeddings_for_image_generation(
                token.repeat(ids.shape[0] // batch)[:, None]),
            head=lambda hidden: self._guided_logprobs(self.module.model.generation_head(hidden), batch, guidance,
                                                      temperature),
            graphs=self.cuda_graphs)
        tokens = torch.empty((batch, steps), dtype=torch.long, device=self.device)
        logprobs = torch.empty((batch, steps), dtype=torch.float32, device=self.device)
        step_logprobs = decoder.first
        for t in range(steps):
            if temperature > 0:
                token = torch.multinomial(step_logprobs.exp(), 1, generator=generator).squeeze(-1)
            else:
                token = step_logprobs.argmax(-1)
            tokens[:, t] = token
            logprobs[:, t] = step_logprobs.gather(-1, token[:, None]).squeeze(-1)
            if t < steps - 1:
                step_logprobs = decoder.feed(token)
        images = self.decode_tokens(tokens)
        sampling = dict(guidance=guidance, temperature=temperature, seed=seed, num_per_prompt=num_per_prompt)
        return ImageRollout(images=images, tokens=tokens, logprobs=logprobs, prompts=per_sample, sampling=sampling)

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens [N,T] → images [N,3,H,W] in [0,1], in one batched VQ decode."""
        pixels = (self._compiled_decode or self.module.model.vqmodel.decode)(tokens)
        return ((pixels.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Images [N,3,H,W] in [0,1] at the VQ resolution → image tokens [N,T], `batch` images a
        pass (the encoder's activations grow with N: 3,000 96-px frames at once took 13 GB)."""
        tokens = [self.module.model.vqmodel.encode(chunk.to(self.device, self.dtype) * 2 - 1).image_tokens
                  for chunk in images.split(batch)]
        return torch.cat(tokens).view(images.shape[0], -1)

    def image_token_logprobs(self, prompts_per_sample: list[str], tokens: torch.Tensor, guidance: float = 5.0,
                             temperature: float = 1.0, rollout: ImageRollout | None = None,
                             unconditional: torch.Tensor | None = None,
                             context_tokens: torch.Tensor | None = None,
                             context_images: torch.Tensor | None = None) -> torch.Tensor:
        """One teacher-forced pass: log p(token_t | prompt, tokens_<t) under the guided distribution.
        `unconditional` [N] bool scores chosen rows without their prompt (CFG dropout, guidance 1);
        `context_tokens` [N,T] and `context_images` [N,3,H,W] as in `generate_images`, one row per sample."""
        logprobs = self.image_token_distributions(prompts_per_sample, tokens, guidance, temperature,
                                                  unconditional, context_tokens, context_images)
        return logprobs.gather(-1, tokens.to(self.device)[..., None]).squeeze(-1)

    def image_token_distributions(self, prompts_per_sample: list[str], tokens: torch.Tensor, guidance: float = 5.0,
                                  temperature: float = 1.0, unconditional: torch.Tensor | None = None,
                                  context_tokens: torch.Tensor | None = None,
                                  context_images: torch.Tensor | None = None) -> torch.Tensor:
        """As `image_token_logprobs`, but the whole distribution: [N, T, codebook] log-probs."""
        batch, steps = tokens.shape
        if len(prompts_per_sample) != batch:
            raise UnirlError(f"image_token_logprobs: {len(prompts_per_sample)} prompts for {batch} token rows")
        self._check_context(context_tokens, batch, context_images)
        tokens = tokens.to(self.device)
        ids, mask = self._generation_inputs(prompts_per_sample, guidance, unconditional,
                                            with_context=context_tokens is not None,
                                            with_view=context_images is not None)
        rows = tokens[:, :-1].repeat(ids.shape[0] // batch, 1)
        embeds = torch.cat([self._prompt_embeds(ids, context_tokens, context_images),
                            self.module.prepare_embeddings_for_image_generation(rows)], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], steps - 1)], dim=1)
        hidden = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=mask_positions(mask),
                         use_cache=False).last_hidden_state
        # The hidden state at BOI predicts token 0; at image token t it predicts token t+1.
        hidden = hidden[:, ids.shape[1] - 1:]
        return self._guided_logprobs(self.module.model.generation_head(hidden), batch, guidance, temperature)

    # ----------------------------------------------------------------- understanding
    def preprocess_images(self, images: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] in [0,1] → the vision tower's input: padded square, resized, normalised (batched)."""
        images = images.to(self.device, torch.float32)
        h, w = images.shape[-2:]
        if h != w:  # pad to a square with the processor's background colour, as JanusImageProcessor does
            side = max(h, w)
            canvas = self.background.expand(images.shape[0], 3, side, side).clone()
            top, left = (side - h) // 2, (side - w) // 2
            canvas[:, :, top:top + h, left:left + w] = images
            images = canvas
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bicubic",
                                   antialias=True, align_corners=False).clamp(0, 1)
        return ((images - self.image_mean) / self.image_std).to(self.dtype)

    @staticmethod
    def _image_batch(images: Images, samples: int) -> tuple[torch.Tensor, list[int]]:
        """All pixels in one tensor, and how many images each of `samples` samples has."""
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise UnirlError(f"images: expected a tensor [N,3,H,W], got shape {tuple(images.shape)}")
            per_sample = [1] * images.shape[0]
            pixels = images
        else:
            per_sample = [img.shape[0] for img in images]
            pixels = torch.cat(list(images)) if images else torch.empty(0, 3, 1, 1)
        if len(per_sample) != samples:
            raise UnirlError(f"understanding: {len(per_sample)} image samples for {samples} questions")
        return pixels, per_sample

    def _understanding_batch(self, images: Images, questions: list[str]) -> dict:
        """Model inputs for N (images, question) samples, left-padded, ready for the answer."""
        pixels, per_sample = self._image_batch(images, len(questions))
        rows = self.tokenizer([self.understanding_text(q, k) for q, k in zip(questions, per_sample)],
                              add_special_tokens=True)["input_ids"]
        ids, mask = self._left_pad(rows)
        return dict(input_ids=ids, attention_mask=mask, position_ids=mask_positions(mask),
                    pixel_values=self.preprocess_images(pixels))

    def _understanding_embeds(self, inputs: dict) -> torch.Tensor:
        """The LM's input embeddings for `_understanding_batch`'s inputs: the image placeholders
        take the vision tower's features through the aligner, as JanusModel.forward does."""
        ids = inputs["input_ids"]
        embeds = self.module.get_input_embeddings()(ids)
        vision = self.module.model.vision_model(inputs["pixel_values"]).last_hidden_state
        features = self.module.model.aligner(vision).to(embeds.dtype)
        return embeds.masked_scatter((ids == self.image_token_id)[..., None], features)

    def _lm_logits(self, inputs: dict) -> torch.Tensor:
        return self.module.lm_head(self.module.model(**inputs).last_hidden_state)

    def _answer_logprobs(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Next-token log-probs of an answer at `temperature`, image tokens excluded."""
        logits = (logits.float() / max(temperature, 1e-5)).index_fill_(-1, self.not_in_answers, float("-inf"))
        return torch.log_softmax(logits, dim=-1)

    def answer(self, images: Images, questions: list[str], max_new_tokens: int = 32) -> list[str]:
        """Greedy answers, batched, with a KV cache."""
        return self.sample_answers(images, questions, temperature=0.0, max_new_tokens=max_new_tokens).texts

    @torch.no_grad()
    def sample_answers(self, images: Images, questions: list[str], temperature: float = 1.0, seed: int = 0,
                       max_new_tokens: int = 32) -> TextRollout:
        """Answers sampled at `temperature` (0: greedy), all samples in one batch with a KV cache;
        the draw happens on the device, seeded."""
        inputs = self._understanding_batch(images, questions)
        decoder = CachedDecoder(
            self.lm, self._understanding_embeds(inputs), inputs["attention_mask"], max_new_tokens,
            embed=lambda token: self.lm.embed_tokens(token[:, None]),
            head=lambda hidden: self._answer_logprobs(self.module.lm_head(hidden), temperature),
            graphs=self.cuda_graphs)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        done = torch.zeros(len(questions), dtype=torch.bool, device=self.device)
        tokens, logprobs, sampled = [], [], []
        check_every = 4 if self.device.type == "cuda" else 1
        step = decoder.first
        for i in range(max_new_tokens):
            token = step.argmax(-1) if temperature <= 0 else \
                torch.multinomial(step.exp(), 1, generator=generator).squeeze(1)
            token = torch.where(done, torch.full_like(token, self.pad_id), token)
            tokens.append(token)
            logprobs.append(step.gather(-1, token[:, None]).squeeze(1))
            sampled.append(~done)
            done |= token == self.eos_id
            # Asking a GPU whether all rows are done waits for it: every few tokens, not each.
            if i == max_new_tokens - 1 or ((i + 1) % check_every == 0 and bool(done.all())):
                break
            step = decoder.feed(token)
        while len(sampled) > 1 and not bool(sampled[-1].any()):  # columns sampled after every row ended
            tokens.pop(), logprobs.pop(), sampled.pop()
        tokens, valid = torch.stack(tokens, dim=1), torch.stack(sampled, dim=1)
        texts = [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in tokens.tolist()]
        return TextRollout(texts, tokens, valid, torch.stack(logprobs, dim=1) * valid,
                           sampling={"temperature": temperature, "seed": seed, "max_new_tokens": max_new_tokens})

    def answer_token_logprobs(self, images: Images, questions: list[str], tokens: torch.Tensor, mask: torch.Tensor,
                              temperature: float = 1.0) -> torch.Tensor:
        """Log-probs [N,T] of given answer tokens after each question, teacher-forced, at the
        temperature they were sampled at; 0 where `mask` is False. Differentiable."""
        pixels, per_sample = self._image_batch(images, len(questions))
        prompts = self.tokenizer([self.understanding_text(q, k) for q, k in zip(questions, per_sample)],
                                 add_special_tokens=True)["input_ids"]
        lengths = mask.sum(1).tolist()
        answers = tokens.tolist()
        ids, attention = self._left_pad([p + a[:n] for p, a, n in zip(prompts, answers, lengths)])
        logits = self._lm_logits(dict(input_ids=ids, attention_mask=attention,
                                         position_ids=mask_positions(attention),
                                         pixel_values=self.preprocess_images(pixels)))
        # Rows end together (left padding): answer token j of row i sits at width - n_i + j and is
        # predicted one position earlier.
        width = ids.shape[1]
        n = mask.sum(1, keepdim=True).to(self.device)
        at = (width - n + torch.arange(tokens.shape[1], device=self.device)).clamp(max=width - 1)
        rows = torch.arange(len(questions), device=self.device)[:, None]
        step = self._answer_logprobs(logits[rows, at - 1], temperature)  # [N,T,V]
        return step.gather(-1, tokens.to(self.device)[..., None]).squeeze(-1) * mask.to(self.device)

    def answer_logprobs(self, images: Images, questions: list[str], answers: list[str]) -> torch.Tensor:
        """Sum of log p(answer tokens + EOS) given image and question; differentiable. [N]"""
        return self.conversation_logprobs(images, [[(q, a)] for q, a in zip(questions, answers)])[0]

    def conversation_batch(self, images: Images, conversations: list[list[tuple[str, str]]]
                           ) -> tuple[dict, torch.Tensor, list[list[int]]]:
        """Model inputs for several questions about one image per sequence (the first asked as
        `answer` asks it, each later one as the next user turn after the previous answer),
        left-padded; a bool mask [N, T] of the answer tokens (+ EOS), and for each conversation
        the position of the last prompt token before each answer (where the answer is decided)."""
        pixels, per_sample = self._image_batch(images, len(conversations))
        rows, targets, answer_at = [], [], []
        for turns, images_here in zip(conversations, per_sample):
            ids: list[int] = []
            target: list[bool] = []
            before: list[int] = []
            for k, (question, answer) in enumerate(turns):
                text = self.understanding_text(question, images_here) if k == 0 else \
                    f"{USER}: {question}\n\n{ASSISTANT}:"
                prompt = self.tokenizer(text, add_special_tokens=k == 0)["input_ids"]
                reply = self.tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [self.eos_id]
                before.append(len(ids) + len(prompt) - 1)
                ids += prompt + reply
                target += [False] * len(prompt) + [True] * len(reply)
            rows.append(ids)
            targets.append(target)
            answer_at.append(before)
        ids, mask = self._left_pad(rows)
        is_target = torch.zeros_like(mask, dtype=torch.bool)
        for i, target in enumerate(targets):  # left-padded like the ids
            is_target[i, mask.shape[1] - len(target):] = torch.tensor(target)
        shift = [mask.shape[1] - len(r) for r in rows]
        answer_at = [[p + pad for p in before] for before, pad in zip(answer_at, shift)]
        inputs = dict(input_ids=ids, attention_mask=mask, position_ids=mask_positions(mask),
                      pixel_values=self.preprocess_images(pixels))
        return inputs, is_target, answer_at

    def conversation_logprobs(self, images: Images, conversations: list[list[tuple[str, str]]]
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sum of log p(answer tokens + EOS) over all answers of each conversation (see
        `conversation_batch`), and how many tokens that sums. [N], [N]
        Training on conversations reads each image once for many answers."""
        inputs, is_target, _ = self.conversation_batch(images, conversations)
        return self.target_logprobs(inputs, is_target)

    def target_logprobs(self, inputs: dict, is_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of log p over the tokens `is_target` marks, and their count, per row. [N], [N]"""
        ids = inputs["input_ids"]
        logits = self._lm_logits(inputs)
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        counted = is_target[:, 1:]
        return (logprobs * counted).sum(-1), counted.sum(-1)

    def yes_no(self, images: Images, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """p(yes), p(no) from the next-token distribution after the question. [N], [N]"""
        inputs = self._understanding_batch(images, questions)
        out = self.module.model(**inputs)
        probs = torch.softmax(self.module.lm_head(out.last_hidden_state[:, -1]).float(), dim=-1)
        return probs[:, self.yes_ids].sum(-1), probs[:, self.no_ids].sum(-1)

    @torch.no_grad()
    def yes_no_about(self, images: torch.Tensor, owner: torch.Tensor, questions: list[str]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """As `yes_no` on images[owner], with each image read once: the turn up to where the
        questions differ (the image block, and any words they share) runs once per image, and
        every question continues from its image's KV cache, all questions in one batch."""
        rows = self.tokenizer([self.understanding_text(q) for q in questions], add_special_tokens=True)["input_ids"]
        shared = common_prefix_length(rows)
        shared = min(shared, min(len(r) for r in rows) - 1)  # each question keeps a token of its own
        if self.image_token_id in rows[0][shared:]:  # a tokenizer merged across the image block
            return super().yes_no_about(images, owner, questions)
        prefix = torch.tensor(rows[0][:shared], device=self.device).expand(len(images), -1)
        out = self.module.model(input_ids=prefix, pixel_values=self.preprocess_images(images), use_cache=True)
        cache = out.cache
        cache.reorder_cache(owner.to(self.device))  # one copy of its image's prefix per question
        suffix = [r[shared:] for r in rows]
        ids, mask = self._left_pad(suffix, right=True)  # padding after what is read
        mask = torch.cat([mask.new_ones(len(rows), shared), mask], dim=1)
        positions = torch.arange(shared, shared + ids.shape[1], device=self.device).expand(len(rows), -1)
        out = self.module.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache)
        last = torch.tensor([len(r) - 1 for r in suffix], device=self.device)
        hidden = out.last_hidden_state[torch.arange(len(rows), device=self.device), last]
        probs = torch.softmax(self.module.lm_head(hidden).float(), dim=-1)
        return probs[:, self.yes_ids].sum(-1), probs[:, self.no_ids].sum(-1)

    # ----------------------------------------------------------------- saving
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.module.save_pretrained(path, safe_serialization=True)
        self.processor.save_pretrained(path)
        (path / MODEL_CARD).write_text(json.dumps({"backend": self.backend, "base": self.spec}, indent=1))


def common_prefix_length(rows: list[list[int]]) -> int:
    """How many leading tokens every row shares."""
    shortest = min(len(r) for r in rows)
    for t in range(shortest):
        if any(r[t] != rows[0][t] for r in rows):
            return t
    return shortest


def load_janus_folder(path: str, spec: str, device: torch.device, dtype: torch.dtype) -> JanusModel:
    """An HF-format Janus folder (or a hub id where the hub is reachable)."""
    local = Path(path).is_dir()
    if local:
        required = {"config.json": ["config.json"],
                    "safetensors weights": ["model.safetensors", "model.safetensors.index.json"],
                    "a tokenizer": ["tokenizer.json", "tokenizer_config.json"]}
        missing = [what for what, names in required.items() if not any((Path(path) / n).is_file() for n in names)]
        if missing:
            raise UnirlError(f"{path}: not a complete Janus folder (missing {', '.join(missing)})")
    try:
        processor = JanusProcessor.from_pretrained(path, local_files_only=local)
        model = JanusForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=local,
                                                              use_safetensors=True)
    except OSError as e:
        if not local:
            raise UnirlError(f"{path}: not a local folder, and the hub could not supply it (offline?); download it "
                             f"and pass janus:/path/to/folder") from None
        raise UnirlError(f"{path}: not a complete Janus folder ({str(e).splitlines()[0][:200]})") from None
    return JanusModel(model, processor, spec=spec, device=device, dtype=dtype)
