"""The model interface of DESIGN.md, checked on every backend in CONTRACT_BACKENDS."""

import time

import pytest
import torch

from unirl.models import load_model

PROMPTS = ["a photo of a red circle", "a photo of two blue stars and a pink heart"]


def test_tiny_backend_builds_fast(model):
    load_model(model.spec, device="cpu", seed=1)  # imports warm
    start = time.perf_counter()
    load_model(model.spec, device="cpu", seed=2)
    assert time.perf_counter() - start < 2.0


def test_generate_images_shapes_and_ranges(model):
    r = model.generate_images(PROMPTS, num_per_prompt=3, guidance=5.0, seed=0)
    n, t = 6, model.num_image_tokens
    assert r.images.shape[0] == n and r.images.shape[1] == 3 and r.images.dtype == torch.float32
    assert 0.0 <= r.images.min() and r.images.max() <= 1.0
    assert r.tokens.shape == (n, t) and r.tokens.dtype == torch.long
    assert r.logprobs.shape == (n, t) and (r.logprobs <= 0).all()
    assert r.prompts == [p for p in PROMPTS for _ in range(3)]  # prompt-major


@pytest.mark.parametrize("guidance,temperature", [(1.0, 1.0), (5.0, 1.0), (5.0, 0.7), (3.0, 0.0)])
def test_rollout_logprobs_equal_teacher_forced(model, guidance, temperature):
    r = model.generate_images(PROMPTS, num_per_prompt=2, guidance=guidance, temperature=temperature, seed=1)
    lp = model.image_token_logprobs(r.prompts, r.tokens, guidance=guidance, temperature=temperature, rollout=r)
    assert lp.shape == r.logprobs.shape
    torch.testing.assert_close(lp, r.logprobs, atol=1e-4, rtol=0)


def test_seed_reproducible_and_distinct(model):
    a = model.generate_images(PROMPTS, num_per_prompt=2, seed=7).tokens
    b = model.generate_images(PROMPTS, num_per_prompt=2, seed=7).tokens
    c = model.generate_images(PROMPTS, num_per_prompt=2, seed=8).tokens
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_image_token_logprobs_differentiable(model):
    r = model.generate_images(PROMPTS, num_per_prompt=1, seed=0)
    model.module.zero_grad()
    lp = model.image_token_logprobs(r.prompts, r.tokens, guidance=5.0)
    lp.mean().backward()
    grads = [p.grad for p in model.module.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    model.module.zero_grad()


def test_understanding_methods(model):
    images = model.generate_images(PROMPTS, num_per_prompt=1, seed=0).images
    questions = ["Is there a red circle?", "How many stars are there?"]
    answers = model.answer(images, questions, max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

    p_yes, p_no = model.yes_no(images, questions)
    assert p_yes.shape == (2,) and p_no.shape == (2,)
    assert ((p_yes >= 0) & (p_no >= 0) & (p_yes + p_no <= 1 + 1e-6)).all()

    model.module.zero_grad()
    lp = model.answer_logprobs(images, questions, ["yes", "two"])
    assert lp.shape == (2,) and (lp < 0).all()
    lp.sum().backward()
    assert sum(p.grad.abs().sum() for p in model.module.parameters() if p.grad is not None) > 0
    model.module.zero_grad()


def test_answer_logprobs_batched_equals_single(model):
    """Left padding and batching must not change an answer's log-prob."""
    images = model.generate_images(PROMPTS, num_per_prompt=1, seed=0).images
    questions, answers = ["What is it?", "Which colour is the heart, and how many stars are there?"], ["a", "pink two"]
    with torch.no_grad():
        batched = model.answer_logprobs(images, questions, answers)
        single = torch.cat([model.answer_logprobs(images[i:i + 1], questions[i:i + 1], answers[i:i + 1])
                            for i in range(2)])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=0)


def test_several_images_per_sample(model):
    images = model.generate_images(PROMPTS, num_per_prompt=2, seed=0).images
    samples = [images[:3], images[3:4]]  # 3 images, then 1
    p_yes, _ = model.yes_no(samples, ["Is tile 1 first?", "Is it red?"])
    assert p_yes.shape == (2,)


def test_save_and_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    again = load_model(str(tmp_path / "ckpt"), device="cpu", dtype="float32")
    assert again.backend == model.backend
    a = model.generate_images(PROMPTS, num_per_prompt=1, seed=3)
    b = again.generate_images(PROMPTS, num_per_prompt=1, seed=3)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.images, b.images)
