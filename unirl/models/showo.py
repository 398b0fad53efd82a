"""Show-o's language model: its vocabulary layout, its omni-attention masks and its Phi backbone.

Loads Show-o's native checkpoint folders (config.json `_class_name: Showo`, keys `showo.model.*` /
`showo.lm_head.*`) into transformers' `PhiForCausalLM` (with the q/k LayerNorms Show-o's own Phi always
has), and reproduces Show-o's logits and attention masks exactly. `ShowoModel` (at the end) puts it, with
MAGVIT-v2 and a text tokenizer, behind the UnifiedModel interface: MaskGIT generation with per-step
log-probs for RL, and understanding.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PhiConfig, PhiForCausalLM

from unirl.config import read_json_object
from unirl.errors import UnirlError
from unirl.models.base import ImageRollout, Images, UnifiedModel, yes_no_token_ids

CLASS_NAME = "Showo"  # what Show-o's save_config writes as `_class_name`
WEIGHTS_NAME = "pytorch_model.safetensors"  # the name Show-o's own save_pretrained uses
PHI_SUBFOLDER = "phi"  # where save_showo_lm puts the Phi config (llm_model_path, relative to the folder)
# Show-o's added tokens, in the order it adds them after the text vocabulary ([PAD] first).
SPECIAL_TOKENS = ("[PAD]", "<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>",
                  "<|lvg|>")
# Phi-1.5's tokenizer: Show-o's llm_vocab_size for it, and its BOS = EOS (<|endoftext|>); the released
# Phi-1.5 config leaves bos/eos null, so this is the fallback for real checkpoints.
PHI15_TEXT_VOCAB, PHI15_BOS_EOS = 50295, 50256
SHOWO_CLIP_HIDDEN = 1024  # Show-o's mm_projector input: CLIP ViT-L/14-336's hidden size


@dataclass(frozen=True)
class ShowoVocab:
    """Show-o's id layout: text ids, [PAD] + 9 task/boundary tokens, image codes, then the mask token.

    `<|sot|>` / `<|eot|>` are not new tokens: Show-o uses the text tokenizer's BOS / EOS for them.
    """

    text_vocab_size: int  # Show-o's llm_vocab_size (the text tokenizer's length before the additions)
    sot_id: int
    eot_id: int
    codebook_size: int = 8192

    @property
    def num_special(self) -> int:
        return len(SPECIAL_TOKENS)

    @property
    def pad_id(self) -> int:
        return self.text_vocab_size

    def special_id(self, token: str) -> int:
        """Id of one of SPECIAL_TOKENS, e.g. special_id("<|t2i|>")."""
        return self.text_vocab_size + SPECIAL_TOKENS.index(token)

    soi_id = property(lambda self: self.special_id("<|soi|>"))
    eoi_id = property(lambda self: self.special_id("<|eoi|>"))
    sov_id = property(lambda self: self.special_id("<|sov|>"))
    eov_id = property(lambda self: self.special_id("<|eov|>"))
    t2i_id = property(lambda self: self.special_id("<|t2i|>"))
    mmu_id = property(lambda self: self.special_id("<|mmu|>"))
    t2v_id = property(lambda self: self.special_id("<|t2v|>"))
    v2v_id = property(lambda self: self.special_id("<|v2v|>"))
    lvg_id = property(lambda self: self.special_id("<|lvg|>"))

    @property
    def image_code_offset(self) -> int:
        return self.text_vocab_size + self.num_special

    @property
    def mask_id(self) -> int:
        return self.image_code_offset + self.codebook_size

    @property
    def total_size(self) -> int:
        return self.mask_id + 1

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Image codes [0, codebook) -> LM ids; a negative code (-1 = "not known yet") -> the mask id."""
        return torch.where(codes < 0, self.mask_id, codes + self.image_code_offset)

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """LM ids -> image codes; anything that is not an image code (the mask id above all) -> -1."""
        codes = ids - self.image_code_offset
        return torch.where((codes >= 0) & (codes < self.codebook_size), codes, -1)


# --- attention masks ("may attend", bool [B, 1, L, L]) ------------------------------------------------------


def t2i_attention_mask(input_ids: torch.Tensor, vocab: ShowoVocab) -> torch.Tensor:
    """Show-o's `create_attention_mask_predict_next(..., rm_pad_in_image=True)` as bool "may attend".

    Text rows are causal, but rows after a row's last [PAD] see nothing up to and including it (so a task
    token placed before the pads is hidden from the text too). Rows of an image span (<|soi|> .. <|eoi|>)
    see every non-[PAD] key of the sequence, before and after them.
    """
    length = input_ids.shape[1]
    dev = input_ids.device
    pos = torch.arange(length, device=dev)
    is_pad = input_ids == vocab.pad_id
    is_soi, is_eoi = input_ids == vocab.soi_id, input_ids == vocab.eoi_id
    in_image = (is_soi.cumsum(1) > is_eoi.cumsum(1)) | is_soi | is_eoi  # [B, L]

    causal = torch.ones(length, length, dtype=torch.bool, device=dev).tril()
    last_pad = torch.where(is_pad, pos, -1).amax(dim=1)  # -1: no pad, nothing hidden
    hidden = (pos[None, :, None] > last_pad[:, None, None]) & (pos[None, None, :] <= last_pad[:, None, None])
    text_rows = causal[None] & ~hidden

    # Show-o hides pads only from image rows at or after the row's <|soi|> (an isolated <|eoi|> before it keeps them).
    first_soi = torch.where(is_soi, pos, length).amin(dim=1)
    pad_hidden = is_pad[:, None, :] & (pos[None, :, None] >= first_soi[:, None, None])
    image_rows = ~pad_hidden
    allowed = torch.where(in_image[:, :, None], image_rows, text_rows)
    return allowed.unsqueeze(1)


def mmu_attention_mask(input_ids: torch.Tensor, vocab: ShowoVocab, num_image_tokens: int | None = None) -> torch.Tensor:
    """Show-o's `create_attention_mask_for_mmu` as bool "may attend": causal, and every row sees the whole
    prefix up to and including the image's <|eoi|> (so the image prefix is bidirectional).

    With `num_image_tokens`, the prefix is Show-o's fixed `[<|mmu|>] [<|soi|>] image [<|eoi|>]` (no search);
    without it, each row's first <|eoi|> ends its prefix (Show-o takes the first row's for all rows, the same
    thing for the sequences it builds). Pads are not hidden, as in Show-o (it right-pads the text).
    """
    b, length = input_ids.shape
    dev = input_ids.device
    pos = torch.arange(length, device=dev)
    if num_image_tokens is not None:
        prefix_end = torch.full((b,), num_image_tokens + 2, device=dev)
    else:
        prefix_end = torch.where(input_ids == vocab.eoi_id, pos, length).amin(dim=1)
        prefix_end = torch.where(prefix_end == length, -1, prefix_end)  # no image: plain causal
    causal = torch.ones(length, length, dtype=torch.bool, device=dev).tril()
    allowed = causal[None] | (pos[None, None, :] <= prefix_end[:, None, None])
    return allowed.unsqueeze(1)


def mmu_vit_attention_mask(is_feature: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """Show-o's `create_attention_mask_for_mmu_vit(..., return_inverse_mask=False)` as bool "may attend":
    causal, and every row (before them too) sees every CLIP feature position (`is_feature` [B, L]). Show-o
    marks the fixed columns [2 + system_prompt_len, 2 + system_prompt_len + 576), its one image's features
    between <|soi|> and <|eoi|>; the <|soi|> / <|eoi|> tokens themselves stay causal. With `start` [B] (left
    padding), keys before a row's start are hidden and each position keeps itself (no empty pad rows).
    """
    b, length = is_feature.shape
    pos = torch.arange(length, device=is_feature.device)
    causal = pos[:, None] >= pos[None, :]
    allowed = causal[None] | is_feature[:, None, :]
    if start is not None:
        allowed = (allowed & (pos[None, None, :] >= start[:, None, None])) | (pos[:, None] == pos[None, :])[None]
    return allowed.unsqueeze(1)


# --- sequences --------------------------------------------------------------------------------------------


def _with_sot(ids: list[int], vocab: ShowoVocab) -> list[int]:
    # As Show-o's prompting: an empty text becomes [<|sot|>]; <|sot|> is prepended unless already there.
    ids = [int(i) for i in ids]
    return ids if ids and ids[0] == vocab.sot_id else [vocab.sot_id, *ids]


def t2i_sequence(text_ids_per_prompt: list[list[int]], image_ids: torch.Tensor, vocab: ShowoVocab,
                 max_text_len: int, task_token_first: bool = False) -> torch.Tensor:
    """Show-o's `t2i_gen_prompt`: `[PAD]… [<|t2i|>] [<|sot|> text <|eot|>] [<|soi|>] image [<|eoi|>]`.

    `image_ids` [B, T] are LM ids (image codes via `vocab.codes_to_ids`, or the mask id). The text part
    (task token, pads, sot..eot) is `max_text_len + 1` long (Show-o's max_seq_length + 1); longer text is cut
    and closed with <|eot|>. `task_token_first` puts <|t2i|> before the pads instead, the layout of the
    conformance fixture; Show-o's own prompting (that its checkpoints were trained on) puts the pads first.
    An empty text gives Show-o's unconditional row (`[PAD]… [<|t2i|>] [<|sot|>] [<|eot|>]`).
    """
    if len(text_ids_per_prompt) != image_ids.shape[0]:
        raise ValueError(f"t2i_sequence: {len(text_ids_per_prompt)} texts for {image_ids.shape[0]} image rows")
    width = max_text_len + 1
    rows = []
    for ids in text_ids_per_prompt:
        text = _with_sot(ids, vocab) + [vocab.eot_id]
        if len(text) + 1 > width:
            text = text[: width - 2] + [vocab.eot_id]
        pads = [vocab.pad_id] * (width - 1 - len(text))
        rows.append([vocab.t2i_id, *pads, *text] if task_token_first else [*pads, vocab.t2i_id, *text])
    prefix = torch.tensor(rows, dtype=torch.long, device=image_ids.device)
    b = image_ids.shape[0]
    soi = torch.full((b, 1), vocab.soi_id, dtype=torch.long, device=image_ids.device)
    eoi = torch.full((b, 1), vocab.eoi_id, dtype=torch.long, device=image_ids.device)
    return torch.cat([prefix, soi, image_ids.long(), eoi], dim=1)


def mmu_sequence(image_ids: torch.Tensor, question_ids: list[list[int]], vocab: ShowoVocab) -> torch.Tensor:
    """Show-o's understanding input: `[<|mmu|>] [<|soi|>] image [<|eoi|>] [<|sot|>] text` (no <|eot|>: the
    answer follows). `image_ids` [B, T] are LM ids; every question must have the same length (Show-o does
    not pad these; batching questions of different lengths is the caller's business)."""
    texts = [_with_sot(q, vocab) for q in question_ids]
    if len(texts) != image_ids.shape[0]:
        raise ValueError(f"mmu_sequence: {len(texts)} questions for {image_ids.shape[0]} image rows")
    if len({len(t) for t in texts}) > 1:
        raise ValueError(f"mmu_sequence: questions differ in length ({sorted({len(t) for t in texts})})")
    dev = image_ids.device
    b = image_ids.shape[0]
    head = torch.tensor([[vocab.mmu_id, vocab.soi_id]] * b, dtype=torch.long, device=dev)
    eoi = torch.full((b, 1), vocab.eoi_id, dtype=torch.long, device=dev)
    text = torch.tensor(texts, dtype=torch.long, device=dev).reshape(b, -1)
    return torch.cat([head, image_ids.long(), eoi, text], dim=1)


# --- the model --------------------------------------------------------------------------------------------


class ShowoLM(torch.nn.Module):
    """Show-o's LLM: `self.showo` is a `PhiForCausalLM` over the whole Show-o vocabulary, so the state-dict
    keys are Show-o's own (`showo.model.*`, `showo.lm_head.*`)."""

    def __init__(self, phi_config: PhiConfig, vocab: ShowoVocab, attn_implementation: str = "sdpa",
                 clip_hidden_size: int | None = None) -> None:
        super().__init__()
        if attn_implementation not in ("sdpa", "eager"):
            # Flash kernels take no arbitrary 4-D mask, and Show-o's omni-attention is one.
            raise UnirlError(f"attn_implementation {attn_implementation!r}: expected 'sdpa' or 'eager'")
        config = PhiConfig.from_dict(phi_config.to_dict())
        config.vocab_size = vocab.total_size
        config.qk_layernorm = True  # Show-o's Phi always builds q/k LayerNorms, and its checkpoints carry them
        config.use_cache = False
        config._attn_implementation = attn_implementation
        self.showo = PhiForCausalLM(config)
        self.vocab = vocab
        # The CLIP-ViT variant (w_clip_vit): CLIP patch features -> Linear, GELU, Linear -> Phi's hidden size,
        # Show-o's `mm_projector` (keys mm_projector.0.* / mm_projector.2.*; 1024 -> 2048 -> 2048 for its models).
        self.mm_projector: torch.nn.Sequential | None = None
        if clip_hidden_size is not None:
            hidden = config.hidden_size
            self.mm_projector = torch.nn.Sequential(torch.nn.Linear(clip_hidden_size, hidden), torch.nn.GELU(),
                                                    torch.nn.Linear(hidden, hidden))

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None,
              is_image: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings [B, L, D]; with CLIP `image_features` [K, C] (K = is_image.sum()), the positions
        where `is_image` [B, L] is True take `mm_projector(image_features)` instead, in row-major order."""
        embeds = self.showo.model.embed_tokens(input_ids)
        if image_features is None:
            return embeds
        if self.mm_projector is None:
            raise UnirlError("ShowoLM.embed: image features given, but this model has no mm_projector")
        projected = self.mm_projector(image_features.to(embeds.dtype))
        return embeds.masked_scatter(is_image[..., None], projected)

    def forward(self, input_ids: torch.Tensor | None, attention_allowed: torch.Tensor,
                position_ids: torch.Tensor | None = None, logits_to_keep: int = 0,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, L] (or inputs_embeds [B, L, D]), attention_allowed bool [B, 1, L, L] (True = may
        attend) -> logits [B, L, V] (only the last `logits_to_keep` positions when it is > 0)."""
        if attention_allowed.dtype != torch.bool or attention_allowed.dim() != 4:
            raise ValueError("ShowoLM.forward: attention_allowed must be a bool [B, 1, L, L] tensor")
        # transformers passes a 4-D mask through untouched. SDPA reads a bool mask as "may attend"; eager
        # attention *adds* the mask to the scores, so it needs the additive float form (0 / dtype min).
        if self.showo.config._attn_implementation == "sdpa":
            mask = attention_allowed
        else:
            dtype = self.showo.model.embed_tokens.weight.dtype
            mask = torch.zeros(attention_allowed.shape, dtype=dtype, device=attention_allowed.device)
            mask = mask.masked_fill(~attention_allowed, torch.finfo(dtype).min)
        out = self.showo(input_ids=None if inputs_embeds is not None else input_ids, inputs_embeds=inputs_embeds,
                         attention_mask=mask, position_ids=position_ids, use_cache=False, logits_to_keep=logits_to_keep)
        return out.logits


# --- native folders ---------------------------------------------------------------------------------------


def _int_field(config: dict[str, Any], key: str, file: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UnirlError(f"{file}: field {key!r} missing or not an integer (got {value!r})")
    return value


def _phi_config_dir(folder: Path, llm_model_path: str, config_file: Path) -> Path:
    """The local folder holding the Phi config: llm_model_path relative to the folder, as given, or
    <folder>/phi; for a hub id, a copy already in the local Hugging Face cache. Never the network."""
    for cand in (folder / llm_model_path, Path(llm_model_path).expanduser(), folder / PHI_SUBFOLDER):
        if (cand / "config.json").is_file():
            return cand
    if llm_model_path.count("/") == 1 and not llm_model_path.startswith((".", "/", "~")):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(llm_model_path, "config.json")
        except Exception:  # a malformed id or cache: same answer as "not cached"
            cached = None
        if isinstance(cached, str):
            return Path(cached).parent
    raise UnirlError(f"{config_file}: llm_model_path {llm_model_path!r} is not a local folder with config.json; "
                     f"place the Phi config folder (its config.json) at {folder / PHI_SUBFOLDER} "
                     f"(nothing is downloaded at run time)")


def _read_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    for name in (WEIGHTS_NAME, "model.safetensors"):
        if (folder / name).is_file():
            return folder / name, load_file(str(folder / name))
    for index_name in ("model.safetensors.index.json", "pytorch_model.safetensors.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = read_json_object(index, "a safetensors shard index").get("weight_map")
            if not isinstance(weight_map, dict):
                raise UnirlError(f"{index}: field 'weight_map' missing or not an object")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).is_file():
                    raise UnirlError(f"{folder / shard}: not found (listed in {index_name})")
                state.update(load_file(str(folder / shard)))
            return index, state
    if (folder / "pytorch_model.bin").is_file():
        file = folder / "pytorch_model.bin"
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UnirlError(f"{file}: cannot be read as a plain state dict ({type(e).__name__}: {e})") from None
        return file, state
    raise UnirlError(f"{folder}: no weights (expected {WEIGHTS_NAME}, model.safetensors or pytorch_model.bin)")


def load_showo_lm(folder: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                  sot_id: int | None = None, eot_id: int | None = None, clip_hidden_size: int | None = None
                  ) -> tuple[ShowoLM, ShowoVocab, dict[str, Any]]:
    """Load a Show-o checkpoint folder in its native layout -> (lm in eval mode, vocab, Show-o's config dict).

    `sot_id` / `eot_id` (the text tokenizer's BOS / EOS) default to the Phi config's bos/eos ids, or to
    Phi-1.5's <|endoftext|> when the text vocabulary is Phi-1.5's. dtype None -> float32. With
    `w_clip_vit: true` the state dict must also hold `mm_projector.*` (strict, like the rest), its input
    width the CLIP tower's hidden size `clip_hidden_size` (None: 1024, CLIP ViT-L/14 as in Show-o).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UnirlError(f"{folder}: no such Show-o model folder")
    config_file = folder / "config.json"
    config = read_json_object(config_file, "Show-o's config with _class_name 'Showo'")
    if config.get("_class_name") != CLASS_NAME:
        raise UnirlError(f"{config_file}: _class_name {config.get('_class_name')!r}, expected {CLASS_NAME!r}")
    w_clip_vit = config.get("w_clip_vit", False)
    if not isinstance(w_clip_vit, bool):
        raise UnirlError(f"{config_file}: field 'w_clip_vit' is {w_clip_vit!r}, expected true or false")
    text_vocab = _int_field(config, "llm_vocab_size", config_file)
    codebook = _int_field(config, "codebook_size", config_file)
    vocab_size = _int_field(config, "vocab_size", config_file)
    if vocab_size != text_vocab + len(SPECIAL_TOKENS) + codebook + 1:
        raise UnirlError(f"{config_file}: vocab_size {vocab_size}, expected llm_vocab_size + 10 + codebook_size "
                         f"+ 1 = {text_vocab + len(SPECIAL_TOKENS) + codebook + 1}")
    if "mask_token_id" in config and config["mask_token_id"] != vocab_size - 1:
        raise UnirlError(f"{config_file}: mask_token_id {config['mask_token_id']!r}, expected vocab_size - 1 "
                         f"= {vocab_size - 1}")
    llm_model_path = config.get("llm_model_path")
    if not isinstance(llm_model_path, str) or not llm_model_path:
        raise UnirlError(f"{config_file}: field 'llm_model_path' missing (expected the Phi config folder)")

    phi_dir = _phi_config_dir(folder, llm_model_path, config_file)
    phi_file = phi_dir / "config.json"
    phi_dict = read_json_object(phi_file, "a Phi config")
    if phi_dict.get("model_type") != "phi":
        raise UnirlError(f"{phi_file}: model_type {phi_dict.get('model_type')!r}, expected 'phi'")
    phi_config = PhiConfig.from_dict(phi_dict)

    def token_id(given: int | None, key: str) -> int:
        if given is not None:
            return given
        if isinstance(phi_dict.get(key), int):
            return phi_dict[key]
        if text_vocab == PHI15_TEXT_VOCAB:
            return PHI15_BOS_EOS
        raise UnirlError(f"{phi_file}: field {key!r} is not set; pass sot_id / eot_id (the text tokenizer's BOS/EOS)")

    vocab = ShowoVocab(text_vocab, token_id(sot_id, "bos_token_id"), token_id(eot_id, "eos_token_id"), codebook)

    weights_file, state = _read_weights(folder)
    clip_width = (clip_hidden_size or SHOWO_CLIP_HIDDEN) if w_clip_vit else None
    with torch.device("meta"):  # no random init of weights that are overwritten next
        lm = ShowoLM(phi_config, vocab, clip_hidden_size=clip_width)
    # The rotary tables are non-persistent buffers (not in the checkpoint): rebuild them for real, in float32.
    lm.showo.model.rotary_emb = type(lm.showo.model.rotary_emb)(config=lm.showo.config)
    expected = lm.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UnirlError(f"{weights_file}: keys do not match Show-o's LM (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}{' …' if len(missing) > 3 or len(unexpected) > 3 else ''})")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise UnirlError(f"{weights_file}: {key} has shape {tuple(state[key].shape)}, expected "
                             f"{tuple(value.shape)}")
    dtype = dtype or torch.float32
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    lm.load_state_dict(state, strict=True, assign=True)
    return lm.to(device=device).eval(), vocab, config


def save_showo_lm(lm: ShowoLM, vocab: ShowoVocab, folder: str | Path, config: dict[str, Any] | None = None) -> None:
    """Write Show-o's native layout (config.json, phi/config.json, pytorch_model.safetensors), which
    `load_showo_lm` (and Show-o) read back. `config`: the dict `load_showo_lm` returned, to keep its other
    fields (num_vq_tokens above all; 256 if absent); the vocabulary fields always come from `vocab`."""
    folder = Path(folder)
    (folder / PHI_SUBFOLDER).mkdir(parents=True, exist_ok=True)
    out = dict(config or {})
    out.update({
        "_class_name": CLASS_NAME,
        "codebook_size": vocab.codebook_size,
        "llm_model_path": PHI_SUBFOLDER,
        "llm_vocab_size": vocab.text_vocab_size,
        "load_from_showo": True,
        "mask_token_id": vocab.mask_id,
        "vocab_size": vocab.total_size,
        "w_clip_vit": lm.mm_projector is not None,
    })
    out.setdefault("num_vq_tokens", 256)
    (folder / "config.json").write_text(json.dumps(dict(sorted(out.items())), indent=2) + "\n")
    phi = lm.showo.config.to_dict()
    phi.update({"bos_token_id": vocab.sot_id, "eos_token_id": vocab.eot_id})
    # Also the transformers-4.x spelling of the rotary settings, for Show-o's own code (4.41) to read.
    rope = phi.get("rope_parameters") or {}
    for key in ("rope_theta", "partial_rotary_factor"):
        if key in rope:
            phi[key] = rope[key]
    for key in ("_attn_implementation_internal", "attn_implementation", "architectures"):
        phi.pop(key, None)
    (folder / PHI_SUBFOLDER / "config.json").write_text(json.dumps(phi, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().to("cpu").contiguous() for k, v in lm.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})


# --- the UnifiedModel backend -----------------------------------------------------------------------------

MODEL_CARD = "unirl_model.json"  # marks a folder this toolkit saved; names the backend
MAGVIT_SUBFOLDER = "magvitv2"
MMU_TEMPLATE = "USER: \n{question} ASSISTANT:"  # Show-o's understanding prompt (inference_mmu.py)
# The CLIP-ViT variant's prompt (inference_mmu.py, w_clip_vit): LLaVA's phi1.5 conversation, stripped, after
# `[<|mmu|>] SYSTEM [<|soi|>] CLIP features [<|eoi|>]` (no <|sot|>).
MMU_VIT_TEMPLATE = "USER: {question} ASSISTANT:"
MMU_VIT_SYSTEM_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. "
                         "The assistant gives helpful, detailed, and polite answers to the user's questions.")
CLIP_SUBFOLDER = "clip-vit"  # the CLIP vision tower of a w_clip_vit model (openai/clip-vit-large-patch14-336)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation (CLIPImageProcessor defaults)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LOG_EPS = math.log(1e-20)  # Show-o clamps probabilities at 1e-20 before taking the log of a confidence


def cosine_mask_len(step: int, steps: int, num_tokens: int) -> int:
    """How many image tokens Show-o leaves masked after `step` (before the clamp to [1, unknown - 1]):
    floor(T · cos(π/2 · (step+1)/steps)), computed in float32 as Show-o's cosine_schedule does."""
    ratio = torch.tensor((step + 1) / steps)  # float32, as in Show-o
    return int((num_tokens * torch.cos(ratio * math.pi * 0.5)).floor())


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """Show-o's (MUSE's) classifier-free guidance: (1 + g)·cond − g·uncond, applied only when g > 0."""
    if uncond is None or guidance <= 0:
        return cond
    return (1 + guidance) * cond - guidance * uncond


class ShowoModel(UnifiedModel):
    """Show-o (VQ-token variant) behind the UnifiedModel interface.

    Generation (<|t2i|>) is Show-o's MaskGIT loop: every step predicts all masked image tokens at once,
    samples each from softmax(guided / temperature) (temperature 1 is Show-o's sampling, 0 is argmax), and
    re-masks the least confident ones (log p of the sample + annealed Gumbel noise) so that the number still
    masked follows the cosine schedule; the last step commits everything left.

    Log-probs for RL. Masked generation has no left-to-right factorisation, so a sampled image's log-prob is
    defined as the sum over unmasking steps of the log-probs of the tokens committed at that step, given what
    was visible at that step, under the guided distribution they were drawn from. The rollout keeps each
    token's commit step (`extra["commit_step"]`); `image_token_logprobs` rebuilds every step's visible input
    from it and scores all steps in one batched forward (chunked by `max_rows_per_forward`). At temperature 0
    the log-prob is taken under temperature 1.

    Understanding (<|mmu|>): `[<|mmu|>] [<|soi|>] image [<|eoi|>] [<|sot|>] USER: \\n{q} ASSISTANT:`, the image
    prefix bidirectional and the text causal (Show-o's mmu mask); answers are greedy up to <|eot|>.

    The CLIP-ViT variant (`clip` given; the LM has an `mm_projector`): understanding reads the image through
    the CLIP vision tower instead (penultimate layer, CLS dropped, → mm_projector → the embeddings between
    <|soi|> and <|eoi|>): `[<|mmu|>] system [<|soi|>] features [<|eoi|>] USER: {q} ASSISTANT:`, with Show-o's
    mmu-with-ViT mask (`mmu_vit_attention_mask`). Generation still uses MAGVIT tokens.
    """

    backend = "showo"

    def __init__(self, lm: ShowoLM, vocab: ShowoVocab, vq: Any, tokenizer: Any, spec: str, device: torch.device,
                 dtype: torch.dtype, *, image_size: int, steps: int = 18, max_text_len: int = 128,
                 guidance: float | None = None, remask_temperature: float = 1.0,
                 showo_config: dict[str, Any] | None = None, max_rows_per_forward: int = 256, clip: Any = None,
                 clip_mean: tuple[float, ...] = CLIP_MEAN, clip_std: tuple[float, ...] = CLIP_STD,
                 system_prompt: str = MMU_VIT_SYSTEM_PROMPT) -> None:
        self.module = lm.to(device=device, dtype=dtype).eval()  # eval: no dropout; grads still flow
        self.vq = vq.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
        self.vocab, self.tokenizer = vocab, tokenizer
        self.spec, self.device, self.dtype = spec, device, dtype
        self.image_size, self.steps, self.max_text_len = int(image_size), int(steps), int(max_text_len)
        self.remask_temperature = float(remask_temperature)  # Show-o's `temperature` argument (Gumbel noise)
        self.max_rows_per_forward = int(max_rows_per_forward)
        self.showo_config = dict(showo_config or {})
        # CLIP-ViT variant: the tower is frozen (as in Show-o); the projector is part of the LM and trains.
        self.clip = clip.to(device=device, dtype=dtype).eval().requires_grad_(False) if clip is not None else None
        self.clip_mean, self.clip_std, self.system_prompt = tuple(clip_mean), tuple(clip_std), system_prompt
        projector = lm.mm_projector
        if (projector is None) != (clip is None):
            raise UnirlError(f"{spec}: the CLIP-ViT variant needs both a CLIP vision tower and an mm_projector "
                             f"(tower {'given' if clip is not None else 'missing'}, mm_projector "
                             f"{'present' if projector is not None else 'missing'})")
        if clip is not None and clip.config.hidden_size != projector[0].in_features:
            raise UnirlError(f"{spec}: CLIP hidden size {clip.config.hidden_size} != mm_projector input "
                             f"{projector[0].in_features}")
        if self.image_size % vq.downsample_factor:
            raise UnirlError(f"{spec}: image_size {image_size} is not a multiple of MAGVIT's downsampling "
                             f"{vq.downsample_factor}")
        if vq.codebook_size != vocab.codebook_size:
            raise UnirlError(f"{spec}: MAGVIT codebook {vq.codebook_size} != Show-o codebook_size "
                             f"{vocab.codebook_size}")
        if len(tokenizer) > vocab.text_vocab_size:
            raise UnirlError(f"{spec}: text tokenizer has {len(tokenizer)} tokens, more than Show-o's llm_vocab_size "
                             f"{vocab.text_vocab_size}")
        if self.steps < 1:
            raise UnirlError(f"{spec}: steps expected >= 1, got {steps}")
        # Show-o's README: guidance 5 for the 512 px models, 1.75 for the 256 px ones.
        self._guidance = float(guidance) if guidance is not None else (5.0 if self.image_size >= 512 else 1.75)
        self.yes_ids, self.no_ids = yes_no_token_ids(self.tokenizer, spec)

    # ----------------------------------------------------------------- properties
    @property
    def default_guidance(self) -> float:
        return self._guidance

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.vq.downsample_factor) ** 2

    def _text_ids(self, texts: list[str]) -> list[list[int]]:
        return [list(r) for r in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    # ----------------------------------------------------------------- generation
    def _t2i_batch(self, prompts: list[str], guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences with a fully masked image ([R, L]; R = N, or 2N with the uncond rows after the cond
        rows when guidance > 0) and their attention mask [R, 1, L, L]."""
        if guidance < 0:
            raise UnirlError(f"guidance: expected >= 0 (Show-o's (1+g)·cond − g·uncond), got {guidance}")
        n, t = len(prompts), self.num_image_tokens
        masked = torch.full((n, t), self.vocab.mask_id, dtype=torch.long, device=self.device)
        ids = t2i_sequence(self._text_ids(prompts), masked, self.vocab, self.max_text_len)
        if guidance > 0:
            ids = torch.cat([ids, t2i_sequence([[]] * n, masked, self.vocab, self.max_text_len)])
        return ids, t2i_attention_mask(ids, self.vocab)

    def _image_logprobs(self, ids: torch.Tensor, allowed: torch.Tensor, guidance: float,
                        temperature: float) -> torch.Tensor:
        """Guided log-probs over the codebook at every image position: [R/2 or R, T, K] (float32)."""
        t = self.num_image_tokens
        logits = self.module(ids, allowed, logits_to_keep=t + 1)[:, :t, self.vocab.image_code_offset:
                                                                 self.vocab.mask_id].float()
        if guidance > 0:
            cond, uncond = logits.chunk(2)
            logits = guided_logits(cond, uncond, guidance)
        return torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)

    @torch.no_grad()
    def generate_images(self, prompts: list[str], num_per_prompt: int = 1, guidance: float | None = None,
                        temperature: float = 1.0, seed: int = 0, steps: int | None = None) -> ImageRollout:
        if not prompts:
            raise UnirlError("generate_images: expected at least one prompt")
        guidance = self.default_guidance if guidance is None else float(guidance)
        steps = self.steps if steps is None else int(steps)
        if steps < 1:
            raise UnirlError(f"steps: expected >= 1, got {steps}")
        per_sample = [p for p in prompts for _ in range(num_per_prompt)]
        n, t = len(per_sample), self.num_image_tokens
        ids, allowed = self._t2i_batch(per_sample, guidance)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        codes = torch.full((n, t), -1, dtype=torch.long, device=self.device)  # -1 = still masked
        commit = torch.full((n, t), -1, dtype=torch.long, device=self.device)
        logprobs = torch.zeros((n, t), dtype=torch.float32, device=self.device)
        remask_temperature = self.remask_temperature
        for step in range(steps):
            ids[:, -(t + 1):-1] = self.vocab.codes_to_ids(codes).repeat(ids.shape[0] // n, 1)
            lp = self._image_logprobs(ids, allowed, guidance, temperature)  # [N, T, K]
            if temperature > 0:
                sampled = torch.multinomial(lp.exp().view(n * t, -1), 1, generator=generator).view(n, t)
            else:
                sampled = lp.argmax(-1)
            unknown = codes < 0
            sampled = torch.where(unknown, sampled, codes)
            chosen = lp.gather(-1, sampled[..., None]).squeeze(-1)
            if step == steps - 1:  # the last step commits every token still masked
                keep = unknown
            else:
                ratio = (step + 1) / steps
                mask_len = torch.tensor(cosine_mask_len(step, steps, t), device=self.device)
                mask_len = (unknown.sum(-1, keepdim=True) - 1).clamp(max=mask_len).clamp(min=1)
                remask_temperature = remask_temperature * (1.0 - ratio)
                uniform = torch.zeros((n, t), device=self.device).uniform_(0, 1, generator=generator)
                gumbel = -torch.log((-torch.log(uniform.clamp(min=1e-20))).clamp(min=1e-20))
                confidence = chosen.clamp(min=LOG_EPS) + remask_temperature * gumbel
                confidence = torch.where(unknown, confidence, torch.inf)  # known tokens stay
                cut_off = confidence.sort(dim=-1).values.gather(1, mask_len)
                keep = unknown & ~(confidence < cut_off)
            commit = torch.where(keep, step, commit)
            logprobs = torch.where(keep, chosen, logprobs)
            codes = torch.where(keep, sampled, codes)
            if step < steps - 1 and not bool((codes < 0).any()):
                break  # everything committed early (only when steps > T): nothing left to do
        images = self.decode_tokens(codes)
        sampling = dict(guidance=guidance, temperature=temperature, seed=seed, num_per_prompt=num_per_prompt,
                        steps=steps, remask_temperature=self.remask_temperature, schedule="cosine")
        return ImageRollout(images=images, tokens=codes, logprobs=logprobs, prompts=per_sample, sampling=sampling,
                            extra={"commit_step": commit})

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image codes [N,T] → images [N,3,H,W] in [0,1], in one batched MAGVIT decode."""
        pixels = self.vq.decode(tokens.to(self.device))
        return ((pixels.float() + 1) / 2).clamp(0, 1)

    def image_token_logprobs(self, prompts_per_sample: list[str], tokens: torch.Tensor,
                             guidance: float | None = None, temperature: float = 1.0,
                             rollout: ImageRollout | None = None) -> torch.Tensor:
        """[N, T]: each token's guided log-prob at its commit step, given the tokens committed at earlier
        steps (the rest masked); differentiable. The commit steps come from `rollout.extra["commit_step"]`;
        without a rollout they are unknown, and every token is scored as if committed at step 0 (one-step
        unmasking: log p(token | prompt, whole image masked)), which is not the rollout's log-prob."""
        guidance = self.default_guidance if guidance is None else float(guidance)
        n, t = tokens.shape
        if len(prompts_per_sample) != n:
            raise UnirlError(f"image_token_logprobs: {len(prompts_per_sample)} prompts for {n} token rows")
        if rollout is None:  # documented fallback: every token committed at step 0 (one-step unmasking)
            commit = torch.zeros((n, t), dtype=torch.long)
        else:
            commit = rollout.extra.get("commit_step")
            if commit is None:
                raise UnirlError("image_token_logprobs: Show-o log-probs need the rollout's commit steps "
                                 "(rollout.extra['commit_step'], as generate_images records them)")
        if tuple(commit.shape) != (n, t):
            raise UnirlError(f"image_token_logprobs: rollout commit_step has shape {tuple(commit.shape)}, "
                             f"expected {(n, t)}")
        tokens, commit = tokens.to(self.device), commit.to(self.device)
        if bool((commit < 0).any()):
            raise UnirlError("image_token_logprobs: rollout commit_step has tokens that were never committed")
        ids, allowed = self._t2i_batch(prompts_per_sample, guidance)
        reps = ids.shape[0] // n
        steps = torch.unique(commit).tolist()
        per_chunk = max(1, self.max_rows_per_forward // ids.shape[0])
        out = torch.zeros((n, t), dtype=torch.float32, device=self.device)
        for start in range(0, len(steps), per_chunk):
            chunk = steps[start:start + per_chunk]
            s = torch.tensor(chunk, device=self.device)[:, None, None]  # [S, 1, 1]
            visible = commit[None] < s  # [S, N, T]
            image = torch.where(visible, self.vocab.codes_to_ids(tokens)[None], self.vocab.mask_id)
            image = image.repeat(1, reps, 1)  # [S, R, T]: the uncond rows see the cond rows' image
            batch_ids = ids.repeat(len(chunk), 1, 1)
            batch_ids[:, :, -(t + 1):-1] = image
            logits = self.module(batch_ids.flatten(0, 1), allowed.repeat(len(chunk), 1, 1, 1),
                                 logits_to_keep=t + 1)[:, :t, self.vocab.image_code_offset:self.vocab.mask_id]
            logits = logits.float().view(len(chunk), reps, n, t, -1)
            logits = guided_logits(logits[:, 0], logits[:, 1] if reps == 2 else None, guidance)
            lp = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
            lp = lp.gather(-1, tokens[None, ..., None].expand(len(chunk), n, t, 1)).squeeze(-1)  # [S, N, T]
            out = out + torch.where(commit[None] == s, lp, 0.0).sum(0)
        return out

    # ----------------------------------------------------------------- understanding
    def preprocess_images(self, images: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] in [0,1] → MAGVIT's input [N,3,S,S] in [-1,1]: the shorter side resized to the model's
        image size, then a centre crop (Show-o's image_transform), batched."""
        images = images.to(self.device, torch.float32)
        h, w = images.shape[-2:]
        if (h, w) != (self.image_size, self.image_size):
            scale = self.image_size / min(h, w)
            size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
            images = torch.nn.functional.interpolate(images, size=size, mode="bicubic", antialias=True,
                                                     align_corners=False).clamp(0, 1)
            top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
            images = images[:, :, top:top + self.image_size, left:left + self.image_size]
        return images * 2 - 1

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N,3,H,W] in [0,1] → image codes [N,T] (one batched MAGVIT encode)."""
        return self.vq.encode(self.preprocess_images(images))

    @property
    def num_clip_features(self) -> int:
        """CLIP patch features per image (the CLS token is dropped): (image_size / patch_size)²."""
        return (self.clip.config.image_size // self.clip.config.patch_size) ** 2

    def preprocess_clip(self, images: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] in [0,1] → CLIP's input: the shorter side resized to CLIP's image size (bicubic), a
        centre crop, then CLIP's mean/std normalisation (what CLIPImageProcessor does, batched in torch)."""
        size = self.clip.config.image_size
        images = images.to(self.device, torch.float32)
        h, w = images.shape[-2:]
        if (h, w) != (size, size):
            scale = size / min(h, w)
            full = (max(size, round(h * scale)), max(size, round(w * scale)))
            images = torch.nn.functional.interpolate(images, size=full, mode="bicubic", antialias=True,
                                                     align_corners=False).clamp(0, 1)
            top, left = (full[0] - size) // 2, (full[1] - size) // 2
            images = images[:, :, top:top + size, left:left + size]
        mean = torch.tensor(self.clip_mean, device=self.device)[None, :, None, None]
        std = torch.tensor(self.clip_std, device=self.device)[None, :, None, None]
        return (images - mean) / std

    @torch.no_grad()
    def clip_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N,3,H,W] in [0,1] → CLIP patch features [N, P, C]: the penultimate layer's hidden states
        without the CLS token (Show-o's CLIPVisionTower: select_layer -2, select_feature 'patch')."""
        pixels = self.preprocess_clip(images).to(self.dtype)
        out = self.clip(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states[-2][:, 1:]

    def _mmu_batch(self, images: Images, questions: list[str], answers: list[str] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """`_mmu_rows` without the CLIP-ViT extras (the VQ variant's whole batch)."""
        return self._mmu_rows(images, questions, answers)[:4]

    def _mmu_rows(self, images: Images, questions: list[str], answers: list[str] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], dict[str, torch.Tensor]]:
        """Left-padded understanding rows: ids [N, L], the first real position of each row [N], the end of
        each row's bidirectional image prefix (its last <|eoi|>) [N], each answer's token count, and for the
        CLIP-ViT variant {"features": [K, C], "is_feature": [N, L]} (else {})."""
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise UnirlError(f"images: expected a tensor [N,3,H,W], got shape {tuple(images.shape)}")
            per_sample, pixels = [1] * images.shape[0], images
        else:
            per_sample = [int(img.shape[0]) for img in images]
            if any(img.dim() != 4 or img.shape[1] != 3 for img in images):
                raise UnirlError("images: expected a list of tensors [k,3,H,W]")
            pixels = torch.cat(list(images)) if images else torch.empty(0, 3, self.image_size, self.image_size)
        if len(per_sample) != len(questions):
            raise UnirlError(f"understanding: {len(per_sample)} image samples for {len(questions)} questions")
        if answers is not None and len(answers) != len(questions):
            raise UnirlError(f"understanding: {len(answers)} answers for {len(questions)} questions")
        if self.clip is not None:
            return self._mmu_vit_batch(per_sample, pixels, questions, answers)
        image_ids = self.vocab.codes_to_ids(self.encode_images(pixels)).tolist() if len(pixels) else []
        texts = self._text_ids([MMU_TEMPLATE.format(question=q) for q in questions])
        answer_rows = []
        if answers is not None:
            answer_rows = [r + [self.vocab.eot_id] for r in self._text_ids([" " + a for a in answers])]
        rows, prefix_lens, k = [], [], 0
        v = self.vocab
        for i, count in enumerate(per_sample):
            row = [v.mmu_id]
            for codes in image_ids[k:k + count]:  # several images: one [soi] .. [eoi] block each
                row += [v.soi_id, *codes, v.eoi_id]
            k += count
            prefix_lens.append(len(row))
            row += [v.sot_id, *texts[i]] + (answer_rows[i] if answers is not None else [])
            rows.append(row)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), v.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
        start = torch.tensor([width - len(r) for r in rows])
        prefix_end = start + torch.tensor(prefix_lens) - 1
        return (ids.to(self.device), start.to(self.device), prefix_end.to(self.device), [len(a) for a in answer_rows],
                {})

    def _mmu_vit_batch(self, per_sample: list[int], pixels: torch.Tensor, questions: list[str],
                       answers: list[str] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int],
                                                           dict[str, torch.Tensor]]:
        """The CLIP-ViT rows, left-padded: `[<|mmu|>] system ([<|soi|>] features [<|eoi|>])… USER: {q}
        ASSISTANT:` (+ answer <|eot|>); feature positions hold [PAD] ids, replaced by projected features."""
        v, p = self.vocab, self.num_clip_features
        feats = self.clip_features(pixels).flatten(0, 1) if len(pixels) else None
        system = self._text_ids([self.system_prompt])[0] if self.system_prompt else []
        texts = self._text_ids([MMU_VIT_TEMPLATE.format(question=q) for q in questions])
        answer_rows = []
        if answers is not None:
            answer_rows = [r + [v.eot_id] for r in self._text_ids([" " + a for a in answers])]
        rows, flags = [], []
        for i, count in enumerate(per_sample):
            row, flag = [v.mmu_id, *system], [False] * (1 + len(system))
            for _ in range(count):
                row += [v.soi_id, *[v.pad_id] * p, v.eoi_id]
                flag += [False, *[True] * p, False]
            tail = texts[i] + (answer_rows[i] if answers is not None else [])
            rows.append(row + tail)
            flags.append(flag + [False] * len(tail))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), v.pad_id, dtype=torch.long)
        is_feature = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (r, f) in enumerate(zip(rows, flags)):
            ids[i, width - len(r):] = torch.tensor(r)
            is_feature[i, width - len(r):] = torch.tensor(f)
        start = torch.tensor([width - len(r) for r in rows])
        extra = {"is_feature": is_feature.to(self.device)}
        if feats is not None:
            extra["features"] = feats
        return (ids.to(self.device), start.to(self.device), torch.full_like(start, -1).to(self.device),
                [len(a) for a in answer_rows], extra)

    @staticmethod
    def _mmu_inputs(ids: torch.Tensor, start: torch.Tensor, prefix_end: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Show-o's mmu mask (causal; the image prefix bidirectional) with the left pads hidden, and
        positions counted from each row's first real token, so padding changes nothing."""
        pos = torch.arange(ids.shape[1], device=ids.device)
        causal = pos[None, :, None] >= pos[None, None, :]
        allowed = (causal | (pos[None, None, :] <= prefix_end[:, None, None])) & (pos[None, None, :] >= start[:, None,
                                                                                                             None])
        return allowed.unsqueeze(1), (pos[None] - start[:, None]).clamp(min=0)

    def _mmu_logits(self, ids: torch.Tensor, start: torch.Tensor, prefix_end: torch.Tensor,
                    logits_to_keep: int = 0, extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if not extra:
            allowed, positions = self._mmu_inputs(ids, start, prefix_end)
            return self.module(ids, allowed, position_ids=positions, logits_to_keep=logits_to_keep).float()
        # CLIP-ViT: the feature flags cover the prompt; tokens appended since (answer()) are not features.
        is_feature = extra["is_feature"]
        is_feature = torch.nn.functional.pad(is_feature, (0, ids.shape[1] - is_feature.shape[1]), value=False)
        allowed = mmu_vit_attention_mask(is_feature, start)
        positions = (torch.arange(ids.shape[1], device=ids.device)[None] - start[:, None]).clamp(min=0)
        embeds = self.module.embed(ids, extra.get("features"), is_feature)
        return self.module(None, allowed, position_ids=positions, logits_to_keep=logits_to_keep,
                           inputs_embeds=embeds).float()

    @torch.no_grad()
    def answer(self, images: Images, questions: list[str], max_new_tokens: int = 32) -> list[str]:
        """Greedy answers, batched, up to <|eot|> (recomputing the sequence each step: Show-o's mmu mask
        is not a plain causal one, so this stays with Show-o's own full-sequence forward)."""
        ids, start, prefix_end, _, extra = self._mmu_rows(images, questions)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=self.device)
        generated = []
        for _ in range(max_new_tokens):
            token = self._mmu_logits(ids, start, prefix_end, 1, extra)[:, -1].argmax(-1)
            token = torch.where(done, self.vocab.eot_id, token)
            generated.append(token)
            done |= token == self.vocab.eot_id
            if bool(done.all()):
                break
            ids = torch.cat([ids, token[:, None]], dim=1)
        answers = []
        for row in (torch.stack(generated, dim=1).tolist() if generated else [[] for _ in questions]):
            row = row[:row.index(self.vocab.eot_id)] if self.vocab.eot_id in row else row
            text_ids = [i for i in row if i < len(self.tokenizer)]  # drop image codes / Show-o's own tokens
            answers.append(self.tokenizer.decode(text_ids, skip_special_tokens=True).strip())
        return answers

    def answer_logprobs(self, images: Images, questions: list[str], answers: list[str]) -> torch.Tensor:
        """Sum of log p(answer tokens + <|eot|>) given image and question, teacher-forced; differentiable. [N]"""
        ids, start, prefix_end, lengths, extra = self._mmu_rows(images, questions, answers)
        logits = self._mmu_logits(ids, start, prefix_end, extra=extra)
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        width = logprobs.shape[1]
        starts = width - torch.tensor(lengths, device=self.device)[:, None]
        span = torch.arange(width, device=self.device)[None] >= starts
        return (logprobs * span).sum(-1)

    def yes_no(self, images: Images, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """p(yes), p(no) from the first answer token's distribution. [N], [N]"""
        ids, start, prefix_end, _, extra = self._mmu_rows(images, questions)
        probs = torch.softmax(self._mmu_logits(ids, start, prefix_end, 1, extra)[:, -1], dim=-1)
        return probs[:, self.yes_ids].sum(-1), probs[:, self.no_ids].sum(-1)

    # ----------------------------------------------------------------- saving
    def save_pretrained(self, path: str | Path) -> None:
        """Show-o's native layout (config.json, phi/, pytorch_model.safetensors), the MAGVIT folder in
        magvitv2/, the text tokenizer files, and unirl_model.json with the sampling settings."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = dict(self.showo_config, num_vq_tokens=self.num_image_tokens)
        save_showo_lm(self.module, self.vocab, path, config=config)
        self.vq.save_pretrained(path / MAGVIT_SUBFOLDER)
        self.tokenizer.save_pretrained(path)
        if self.clip is not None:
            from transformers import CLIPImageProcessor

            self.clip.save_pretrained(path / CLIP_SUBFOLDER)
            size = self.clip.config.image_size
            CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                               image_mean=list(self.clip_mean), image_std=list(self.clip_std)
                               ).save_pretrained(path / CLIP_SUBFOLDER)
        card = {"backend": self.backend, "base": self.spec, "image_size": self.image_size, "steps": self.steps,
                "max_text_len": self.max_text_len, "guidance": self.default_guidance,
                "remask_temperature": self.remask_temperature}
        (path / MODEL_CARD).write_text(json.dumps(card, indent=1))


def tiny_phi_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4) -> PhiConfig:
    return PhiConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, max_position_embeddings=512)


def tiny_magvit_config(image_size: int = 32, z_channels: int = 6) -> Any:
    """A random-init MAGVIT-v2 that maps 32 px to a 4x4 grid (three downsamplings), codebook 2**z."""
    from unirl.models.magvitv2 import MagvitV2Config

    return MagvitV2Config(ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=[1, 1, 1, 1], decoder_ch_mult=[1, 1, 2, 2],
                          decoder_num_res_blocks=[1, 1, 1, 1], attn_resolutions=[], resolution=image_size,
                          z_channels=z_channels)


def build_tiny_showo(seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     spec: str = "showo-tiny", clip: bool = False) -> ShowoModel:
    """A random-init tiny Show-o for tests: Phi hidden 64 x 2 layers, MAGVIT 32 px → 4x4 codes of 64, our
    byte BPE tokenizer (its BOS / EOS as <|sot|> / <|eot|>), 8 unmasking steps (≤ 16 tokens, so every step
    commits at least one). `clip`: the CLIP-ViT variant, with a tiny CLIP tower (hidden 32, 2 layers, 32 px
    in 8 px patches → 16 features) and an mm_projector 32 → 64 → 64."""
    from unirl.models.magvitv2 import MagvitV2
    from unirl.models.tokenizer import build_byte_bpe_tokenizer

    tokenizer = build_byte_bpe_tokenizer()
    mconfig = tiny_magvit_config()
    vocab = ShowoVocab(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, 2**mconfig.z_channels)
    phi = tiny_phi_config(vocab.total_size)
    phi.bos_token_id, phi.eos_token_id = vocab.sot_id, vocab.eot_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = ShowoLM(phi, vocab, clip_hidden_size=tiny_clip_config().hidden_size if clip else None)
        vq = MagvitV2(mconfig)
        tower = None
        if clip:
            from transformers import CLIPVisionModel

            tower = CLIPVisionModel(tiny_clip_config())
    return ShowoModel(lm, vocab, vq, tokenizer, spec, torch.device(device), dtype, image_size=32, steps=8,
                      max_text_len=32, guidance=5.0, clip=tower)


def tiny_clip_config() -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=32, patch_size=8, projection_dim=32)


def _read_clip(folder: Path, config_file: Path) -> tuple[Any, tuple[float, ...], tuple[float, ...]]:
    """The CLIP vision tower of a w_clip_vit model from <folder>/clip-vit, and its mean/std."""
    from transformers import CLIPVisionModel

    clip_dir = folder / CLIP_SUBFOLDER
    if not (clip_dir / "config.json").is_file():
        raise UnirlError(f"{clip_dir / 'config.json'}: not found ({config_file} has w_clip_vit true: place the CLIP "
                         f"vision tower folder, e.g. openai/clip-vit-large-patch14-336, in {CLIP_SUBFOLDER}/)")
    try:
        tower = CLIPVisionModel.from_pretrained(str(clip_dir), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UnirlError(f"{clip_dir}: the CLIP vision tower cannot be read ({reason})") from None
    mean, std = CLIP_MEAN, CLIP_STD
    if (clip_dir / "preprocessor_config.json").is_file():
        pre = read_json_object(clip_dir / "preprocessor_config.json", "CLIP's image processor config")
        mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
    return tower, mean, std


def _read_tokenizer(folder: Path, phi_dir: Path) -> Any:
    from transformers import AutoTokenizer

    for cand in (folder, phi_dir):
        if (cand / "tokenizer.json").is_file() or (cand / "vocab.json").is_file():
            try:
                return AutoTokenizer.from_pretrained(str(cand), local_files_only=True)
            except (OSError, ValueError) as e:
                reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                raise UnirlError(f"{cand}: the text tokenizer cannot be read ({reason})") from None
    raise UnirlError(f"{folder / 'tokenizer.json'}: no text tokenizer (expected tokenizer.json, or Phi's "
                     f"vocab.json + merges.txt, in {folder} or {phi_dir})")


def load_showo_folder(path: str | Path, spec: str, device: torch.device, dtype: torch.dtype) -> ShowoModel:
    """A Show-o folder: one this toolkit saved, or a real Show-o checkpoint laid out as below.

    Expected in the folder (nothing is downloaded):
      config.json + pytorch_model.safetensors (or model.safetensors, shards, pytorch_model.bin): Show-o's
          own checkpoint (e.g. showlab/show-o-512x512, `_class_name: Showo`, w_clip_vit false);
      phi/ (or config.json's llm_model_path): the Phi-1.5 config folder, its config.json;
      the text tokenizer: tokenizer.json (or Phi's vocab.json + merges.txt) in the folder or in phi/;
      magvitv2/: the MAGVIT-v2 tokenizer folder (showlab/magvitv2: config.json + weights);
      clip-vit/ (only with `w_clip_vit: true`, e.g. showlab/show-o-w-clip-vit): the CLIP vision tower folder
          (openai/clip-vit-large-patch14-336: config.json + weights, optional preprocessor_config.json for
          its mean/std); the checkpoint then also holds `mm_projector.*`;
      unirl_model.json (optional): image_size, steps, max_text_len, guidance, remask_temperature. Without
          it: image size from num_vq_tokens, 18 steps, 128 text tokens, guidance 5 (512 px) or 1.75.
    """
    from unirl.models.magvitv2 import MagvitV2

    folder = Path(path)
    if not folder.is_dir():
        raise UnirlError(f"{folder}: no such Show-o model folder")
    config = read_json_object(folder / "config.json", "Show-o's config with _class_name 'Showo'")
    llm_path = config.get("llm_model_path")
    if not isinstance(llm_path, str) or not llm_path:
        raise UnirlError(f"{folder / 'config.json'}: field 'llm_model_path' missing (expected the Phi config folder)")
    tokenizer = _read_tokenizer(folder, _phi_config_dir(folder, llm_path, folder / "config.json"))
    tower, clip_mean, clip_std = None, CLIP_MEAN, CLIP_STD
    if config.get("w_clip_vit") is True:
        tower, clip_mean, clip_std = _read_clip(folder, folder / "config.json")
    lm, vocab, config = load_showo_lm(folder, device=device, dtype=dtype, sot_id=tokenizer.bos_token_id,
                                      eot_id=tokenizer.eos_token_id,
                                      clip_hidden_size=tower.config.hidden_size if tower is not None else None)
    if not (folder / MAGVIT_SUBFOLDER / "config.json").is_file():
        raise UnirlError(f"{folder / MAGVIT_SUBFOLDER / 'config.json'}: not found (expected the MAGVIT-v2 folder "
                         f"in {MAGVIT_SUBFOLDER}/)")
    vq = MagvitV2.from_folder(folder / MAGVIT_SUBFOLDER, device=device)
    card = read_json_object(folder / MODEL_CARD, "a model card") if (folder / MODEL_CARD).is_file() else {}
    grid = math.isqrt(int(config.get("num_vq_tokens", 256)))
    image_size = int(card.get("image_size", grid * vq.downsample_factor))
    return ShowoModel(lm, vocab, vq, tokenizer, spec, device, dtype, image_size=image_size,
                      steps=int(card.get("steps", 18)), max_text_len=int(card.get("max_text_len", 128)),
                      guidance=card.get("guidance"), remask_temperature=float(card.get("remask_temperature", 1.0)),
                      showo_config=config, clip=tower, clip_mean=clip_mean, clip_std=clip_std)
