"""Show-o's language model: its vocabulary layout, its omni-attention masks and its Phi backbone.

Loads Show-o's native checkpoint folders (config.json `_class_name: Showo`, keys `showo.model.*` /
`showo.lm_head.*`) into transformers' `PhiForCausalLM` (with the q/k LayerNorms Show-o's own Phi always
has), and reproduces Show-o's logits and attention masks exactly. Sampling is built on top of this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PhiConfig, PhiForCausalLM

from unirl.config import read_json_object
from unirl.errors import UnirlError

CLASS_NAME = "Showo"  # what Show-o's save_config writes as `_class_name`
WEIGHTS_NAME = "pytorch_model.safetensors"  # the name Show-o's own save_pretrained uses
PHI_SUBFOLDER = "phi"  # where save_showo_lm puts the Phi config (llm_model_path, relative to the folder)
# Show-o's added tokens, in the order it adds them after the text vocabulary ([PAD] first).
SPECIAL_TOKENS = ("[PAD]", "<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>",
                  "<|lvg|>")
# Phi-1.5's tokenizer: Show-o's llm_vocab_size for it, and its BOS = EOS (<|endoftext|>); the released
# Phi-1.5 config leaves bos/eos null, so this is the fallback for real checkpoints.
PHI15_TEXT_VOCAB, PHI15_BOS_EOS = 50295, 50256


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

    def __init__(self, phi_config: PhiConfig, vocab: ShowoVocab, attn_implementation: str = "sdpa") -> None:
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

    def forward(self, input_ids: torch.Tensor, attention_allowed: torch.Tensor,
                position_ids: torch.Tensor | None = None, logits_to_keep: int = 0) -> torch.Tensor:
        """input_ids [B, L], attention_allowed bool [B, 1, L, L] (True = may attend) -> logits [B, L, V]
        (only the last `logits_to_keep` positions when it is > 0)."""
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
        out = self.showo(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
                         logits_to_keep=logits_to_keep)
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
                  sot_id: int | None = None, eot_id: int | None = None
                  ) -> tuple[ShowoLM, ShowoVocab, dict[str, Any]]:
    """Load a Show-o checkpoint folder in its native layout -> (lm in eval mode, vocab, Show-o's config dict).

    `sot_id` / `eot_id` (the text tokenizer's BOS / EOS) default to the Phi config's bos/eos ids, or to
    Phi-1.5's <|endoftext|> when the text vocabulary is Phi-1.5's. dtype None -> float32.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UnirlError(f"{folder}: no such Show-o model folder")
    config_file = folder / "config.json"
    config = read_json_object(config_file, "Show-o's config with _class_name 'Showo'")
    if config.get("_class_name") != CLASS_NAME:
        raise UnirlError(f"{config_file}: _class_name {config.get('_class_name')!r}, expected {CLASS_NAME!r}")
    if config.get("w_clip_vit"):
        raise UnirlError(f"{config_file}: w_clip_vit is true; only Show-o's VQ-token (w_clip_vit false) models "
                         f"are supported")
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
    with torch.device("meta"):  # no random init of weights that are overwritten next
        lm = ShowoLM(phi_config, vocab)
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
        "w_clip_vit": False,
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
