"""The CUDA-only paths: decoding replayed from captured CUDA graphs must give what the same
static-cache step gives run eagerly, and agree with transformers. Skipped without a GPU
(bench/gpu.sh runs them on the few sessions lent one)."""

import pytest
import torch

from unirl.models.janus import JanusModel, build_tiny_janus

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PROMPTS = ["a photo of a red circle", "a photo of two blue stars left of a heart"]  # unequal: left padding


@pytest.fixture(scope="module")
def mid_janus() -> JanusModel:
    """64 image tokens: a prompt plus 63 fed-back tokens spans two 64-slot attention buckets."""
    hf, processor = build_tiny_janus(seed=0, image_size=64, patch_size=8, hidden=64, layers=2, codebook=256)
    return JanusModel(hf, processor, spec="janus-mid-test", device=torch.device("cuda"), dtype=torch.float32)


def both_ways(model: JanusModel, fn):
    model.cuda_graphs = True
    graphed = fn()
    model.cuda_graphs = False
    try:
        return graphed, fn()
    finally:
        model.cuda_graphs = True


@pytest.mark.parametrize("guidance,temperature", [(5.0, 1.0), (1.0, 0.7), (3.0, 0.0)])
def test_graph_replayed_rollout_equals_eager_and_teacher_forcing(mid_janus, guidance, temperature):
    m = mid_janus
    graphed, eager = both_ways(m, lambda: m.generate_images(PROMPTS, num_per_prompt=3, guidance=guidance,
                                                          temperature=temperature, seed=4))
    assert torch.equal(graphed.tokens, eager.tokens)
    torch.testing.assert_close(graphed.logprobs, eager.logprobs, atol=1e-5, rtol=0)
    forced = m.image_token_logprobs(graphed.prompts, graphed.tokens, guidance=guidance,
                                    temperature=temperature if temperature > 0 else 1.0)
    if temperature > 0:
        torch.testing.assert_close(graphed.logprobs, forced, atol=1e-4, rtol=0)


def test_graph_replayed_answers_equal_eager(mid_janus):
    m = mid_janus
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    questions = ["What shape is this?", "How many?", "Is there a red star?", "What colour is it?"]
    graphed, eager = both_ways(m, lambda: m.sample_answers(images, questions, temperature=1.0, seed=1,
                                                         max_new_tokens=12))
    assert torch.equal(graphed.tokens, eager.tokens) and graphed.texts == eager.texts
    torch.testing.assert_close(graphed.logprobs, eager.logprobs, atol=1e-5, rtol=0)


def test_greedy_tokens_match_transformers_generate_on_cuda(mid_janus):
    m = mid_janus
    prompts = ["a photo of a red circle", "a photo of a red square"]
    inputs = torch.tensor(m.tokenizer([m.generation_text(p) for p in prompts])["input_ids"], device="cuda")
    m.module.generation_config.generation_kwargs = {"boi_token_id": m.boi_id}
    reference = m.module.generate(inputs, attention_mask=torch.ones_like(inputs), generation_mode="image",
                                  do_sample=False, guidance_scale=5.0, max_new_tokens=m.num_image_tokens)
    assert torch.equal(m.generate_images(prompts, guidance=5.0, temperature=0.0).tokens, reference)
