"""Random-init models the benchmarks build by name, besides `load_model`'s specs.

janus-mid            hidden 256, 4 layers, 64 image tokens: a CPU-sized step up from janus-tiny.
janus-pro-1b-shape   Janus-Pro-1B's shapes, random weights: the LM of DeepSeek-LLM-1.3B (hidden 2048,
                     24 layers, 16 heads, MLP 5632, vocabulary 102400, untied), SigLIP-L/16 at 384 px and
                     the 16384-code VQ-VAE (transformers' JanusConfig defaults are Janus-Pro's), 576
                     image tokens. For a GPU: 2.1B parameters.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from unirl.models import load_model
from unirl.models.base import UnifiedModel, resolve_device_dtype
from unirl.models.janus import JanusModel, build_tiny_janus

MID = dict(image_size=64, patch_size=8, hidden=256, layers=4, codebook=1024)
BENCH_MODELS = ("janus-mid", "janus-pro-1b-shape")


def janus_pro_1b_shape(device: torch.device, dtype: torch.dtype, seed: int = 0) -> JanusModel:
    from transformers import JanusConfig, JanusForConditionalGeneration, JanusImageProcessor, JanusProcessor

    from unirl.models.tokenizer import build_byte_bpe_tokenizer

    tok = build_byte_bpe_tokenizer()
    config = JanusConfig(
        text_config=dict(model_type="llama", vocab_size=102400, hidden_size=2048, intermediate_size=5632,
                         num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                         max_position_embeddings=16384, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        image_token_id=tok.convert_tokens_to_ids(tok.image_token), tie_word_embeddings=False)
    processor = JanusProcessor(image_processor=JanusImageProcessor(), tokenizer=tok,
                               num_image_tokens=config.vision_config.num_image_tokens)
    with torch.random.fork_rng(devices=[]), torch.device(device):  # initialised where it runs: seconds, not minutes
        torch.manual_seed(seed)
        hf = JanusForConditionalGeneration(config)
    return JanusModel(hf, processor, spec="janus-pro-1b-shape", device=device, dtype=dtype)


def build(spec: str, device: str | None = None, dtype: str | None = None) -> UnifiedModel:
    """A benchmark model by name, or anything `load_model` takes."""
    dev, dt = resolve_device_dtype(device, dtype)
    if spec == "janus-mid":
        hf, processor = build_tiny_janus(seed=0, **MID)
        return JanusModel(hf, processor, spec=spec, device=dev, dtype=dt)
    if spec == "janus-pro-1b-shape":
        return janus_pro_1b_shape(dev, dt)
    return load_model(spec, device=device, dtype=dtype)


def as_model_folder(spec: str, dtype: str | None = None) -> str:
    """A `--model` value for recipes: benchmark models are saved to a temporary folder first."""
    if spec not in BENCH_MODELS:
        return spec
    model = build(spec, dtype=dtype)
    folder = Path(tempfile.mkdtemp(prefix=f"unirl-{spec}-"))
    model.save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return str(folder)
