"""The Show-o backend: MaskGIT generation, its per-step log-probs, guidance, understanding, folders, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from unirl.errors import UnirlError
from unirl.models import load_model
from unirl.models.showo import cosine_mask_len, guided_logits, mmu_attention_mask

PROMPTS = ["a photo of a red circle", "a photo of two blue stars and a pink heart"]


@pytest.fixture(scope="module")
def showo():
    m = load_model("showo-tiny", device="cpu", dtype="float32", seed=0)
    with torch.no_grad():  # sharper than random init, so the log-prob checks have something to check
        m.module.showo.lm_head.weight.mul_(20.0)
    return m


@pytest.mark.parametrize("guidance", [0.0, 1.75, 5.0])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprob_sums_equal_recomputed(showo, guidance, temperature):
    r = showo.generate_images(PROMPTS, num_per_prompt=2, guidance=guidance, temperature=temperature, seed=3)
    lp = showo.image_token_logprobs(r.prompts, r.tokens, guidance=guidance, temperature=temperature, rollout=r)
    assert lp.shape == r.tokens.shape
    assert (lp.sum(-1) - r.logprobs.sum(-1)).abs().max().item() < 1e-3
    torch.testing.assert_close(lp, r.logprobs, atol=1e-4, rtol=0)
    assert r.sampling["steps"] == showo.steps and r.sampling["guidance"] == guidance


def test_recompute_is_differentiable_and_without_rollout_means_one_step(showo):
    r = showo.generate_images(PROMPTS, num_per_prompt=1, guidance=5.0, seed=0)
    showo.module.zero_grad()
    lp = showo.image_token_logprobs(r.prompts, r.tokens, guidance=5.0, rollout=r)
    lp.sum().backward()
    assert sum(p.grad.abs().sum() for p in showo.module.parameters() if p.grad is not None) > 0
    showo.module.zero_grad()
    with torch.no_grad():
        fallback = showo.image_token_logprobs(r.prompts, r.tokens, guidance=5.0)
        r.extra["commit_step"] = torch.zeros_like(r.tokens)
        one_step = showo.image_token_logprobs(r.prompts, r.tokens, guidance=5.0, rollout=r)
    torch.testing.assert_close(fallback, one_step)


def test_commit_steps_follow_the_cosine_schedule(showo):
    r = showo.generate_images(PROMPTS, num_per_prompt=3, guidance=1.75, seed=5)
    commit, steps, t = r.extra["commit_step"], showo.steps, showo.num_image_tokens
    assert commit.shape == r.tokens.shape and commit.dtype == torch.long
    assert ((commit >= 0) & (commit < steps)).all()  # every token committed, at one step
    counts = torch.stack([(commit == s).sum(-1) for s in range(steps)], dim=1)  # [N, steps]
    assert (counts >= 1).all()
    expected, unknown = [], t
    for s in range(steps - 1):
        still_masked = max(1, min(unknown - 1, cosine_mask_len(s, steps, t)))
        expected.append(unknown - still_masked)
        unknown = still_masked
    expected.append(unknown)
    assert expected == [1, 1, 1, 2, 3, 2, 3, 3]  # 16 tokens, 8 steps: floor(16·cos(π/2·(s+1)/8))
    assert (counts == torch.tensor(expected)).all()


def test_guidance_formula():
    cond, uncond = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([3.0, 0.0, -1.0])
    assert guided_logits(cond, uncond, 2.0).tolist() == [-3.0, 6.0, -1.0]  # (1+2)·c − 2·u
    assert guided_logits(cond, uncond, 0.0).tolist() == cond.tolist()  # g = 0: no guidance (as Show-o)


def test_guided_distribution_in_the_model(showo):
    """The log-probs the loop samples from are log_softmax(((1+g)·cond − g·uncond) / T) over the codebook,
    with the cond and uncond rows run separately here."""
    g, temp, t, v = 3.0, 0.7, showo.num_image_tokens, showo.vocab
    ids, allowed = showo._t2i_batch(PROMPTS, g)
    with torch.no_grad():
        batched = showo._image_logprobs(ids, allowed, g, temp)
        cond = showo.module(ids[:2], allowed[:2])[:, -(t + 1):-1, v.image_code_offset:v.mask_id]
        uncond = showo.module(ids[2:], allowed[2:])[:, -(t + 1):-1, v.image_code_offset:v.mask_id]
    torch.testing.assert_close(batched, torch.log_softmax(((1 + g) * cond - g * uncond) / temp, -1), atol=1e-5,
                               rtol=0)
    assert (ids[2:, :showo.max_text_len + 1] == v.pad_id).sum(-1).tolist() == [showo.max_text_len - 2] * 2  # '' rows


def test_argmax_and_seeds(showo):
    a = showo.generate_images(PROMPTS, guidance=5.0, temperature=0.0, seed=0)
    b = showo.generate_images(PROMPTS, guidance=5.0, temperature=0.0, seed=0)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.extra["commit_step"], b.extra["commit_step"])
    lp = showo.image_token_logprobs(a.prompts, a.tokens, guidance=5.0, temperature=0.0, rollout=a)
    torch.testing.assert_close(lp, a.logprobs, atol=1e-4, rtol=0)  # at T = 0, log-probs under T = 1


def test_understanding_shapes_and_mask(showo):
    images = torch.rand(3, 3, 40, 48)
    questions = ["Is there a red circle?", "How many stars?", "What colour is the heart?"]
    answers = showo.answer(images, questions, max_new_tokens=3)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    p_yes, p_no = showo.yes_no(images, questions)
    assert p_yes.shape == (3,) and ((p_yes >= 0) & (p_yes + p_no <= 1 + 1e-6)).all()
    # One image, no padding: the mask is Show-o's own mmu mask, positions 0..L-1.
    ids, start, prefix_end, _ = showo._mmu_batch(images[:1], questions[:1])
    allowed, positions = showo._mmu_inputs(ids, start, prefix_end)
    assert torch.equal(allowed, mmu_attention_mask(ids, showo.vocab))
    assert torch.equal(positions[0], torch.arange(ids.shape[1]))
    assert ids[0, :2].tolist() == [showo.vocab.mmu_id, showo.vocab.soi_id]
    assert ids[0, showo.num_image_tokens + 2:showo.num_image_tokens + 4].tolist() == [showo.vocab.eoi_id,
                                                                                   showo.vocab.sot_id]


def test_save_load_native_layout(showo, tmp_path):
    showo.save_pretrained(tmp_path / "m")
    for name in ("config.json", "pytorch_model.safetensors", "phi/config.json", "magvitv2/config.json",
                 "tokenizer.json", "unirl_model.json"):
        assert (tmp_path / "m" / name).is_file(), name
    assert json.loads((tmp_path / "m" / "unirl_model.json").read_text())["backend"] == "showo"
    for spec in (str(tmp_path / "m"), f"showo:{tmp_path / 'm'}"):
        again = load_model(spec, device="cpu", dtype="float32")
        assert (again.steps, again.image_size, again.default_guidance) == (showo.steps, 32, showo.default_guidance)
        a = showo.generate_images(PROMPTS, guidance=1.75, seed=4)
        b = again.generate_images(PROMPTS, guidance=1.75, seed=4)
        assert torch.equal(a.tokens, b.tokens)
    # Without unirl_model.json the Show-o config alone is enough (Show-o's own folders have none).
    (tmp_path / "m" / "unirl_model.json").unlink()
    plain = load_model(str(tmp_path / "m"), device="cpu", dtype="float32")
    assert plain.backend == "showo" and plain.num_image_tokens == 16 and plain.steps == 18


def test_clear_errors(showo, tmp_path):
    r = showo.generate_images(PROMPTS, seed=0)
    r.extra.pop("commit_step")
    with pytest.raises(UnirlError, match="commit_step"):
        showo.image_token_logprobs(r.prompts, r.tokens, rollout=r)
    with pytest.raises(UnirlError, match="2 prompts for 1 token rows"):
        showo.image_token_logprobs(PROMPTS, r.tokens[:1])
    with pytest.raises(UnirlError, match="guidance"):
        showo.generate_images(PROMPTS, guidance=-1.0)
    with pytest.raises(UnirlError, match="1 image samples for 2 questions"):
        showo.yes_no(torch.rand(1, 3, 32, 32), ["a?", "b?"])
    with pytest.raises(UnirlError, match="no such Show-o model folder"):
        load_model(f"showo:{tmp_path / 'nope'}", device="cpu")
    showo.save_pretrained(tmp_path / "m")
    shutil.rmtree(tmp_path / "m" / "magvitv2")
    with pytest.raises(UnirlError, match="magvitv2/config.json"):
        load_model(str(tmp_path / "m"), device="cpu")
    (tmp_path / "m" / "tokenizer.json").unlink()
    with pytest.raises(UnirlError, match="tokenizer"):
        load_model(str(tmp_path / "m"), device="cpu")


def _showo_reference(m, prompts, guidance, seed):
    """Show-o's t2i_generate loop as its code does it (mask ids written into the sequence, known tokens at
    finfo.max confidence, Gumbel noise annealed by (1 − r)), written plainly; returns the final codes."""
    t, v, steps = m.num_image_tokens, m.vocab, m.steps
    ids, allowed = m._t2i_batch(prompts, guidance)
    n = len(prompts)
    gen = torch.Generator().manual_seed(seed)
    known = torch.full((n, t), v.mask_id)
    temp = 1.0
    for step in range(steps):
        ids[:, -(t + 1):-1] = known.repeat(2, 1)
        logits = m.module(ids, allowed)[:, -(t + 1):-1, v.image_code_offset:v.mask_id]
        cond, uncond = logits.chunk(2)
        probs = ((1 + guidance) * cond - guidance * uncond).softmax(-1)
        sampled = torch.multinomial(probs.reshape(n * t, -1), 1, generator=gen)[:, 0].view(n, t)
        unknown = known == v.mask_id
        sampled = torch.where(unknown, sampled, known - v.image_code_offset)
        ratio = (step + 1) / steps
        mask_len = (t * torch.cos(torch.tensor(ratio) * torch.pi * 0.5)).floor()
        mask_len = torch.max(torch.tensor([1]), torch.min(unknown.sum(-1, keepdim=True) - 1, mask_len))
        p = torch.where(unknown, probs.gather(-1, sampled[..., None])[..., 0], torch.finfo(probs.dtype).max)
        temp = temp * (1 - ratio)
        noise = torch.zeros_like(p).uniform_(0, 1, generator=gen)
        conf = torch.log(p.clamp(min=1e-20)) + temp * -torch.log((-torch.log(noise.clamp(min=1e-20))).clamp(min=1e-20))
        cut = conf.sort(-1).values.gather(1, mask_len.long())
        known = torch.where(conf < cut, v.mask_id, sampled + v.image_code_offset)
    return sampled


def test_temperature_one_is_showo_sampling(showo):
    with torch.no_grad():
        expected = _showo_reference(showo, PROMPTS, 1.75, seed=11)
    r = showo.generate_images(PROMPTS, guidance=1.75, temperature=1.0, seed=11)
    assert torch.equal(r.tokens, expected)
