"""Janus-specific checks: the tiny config, loading paths and agreement with transformers."""


import pytest
import torch

from unirl.errors import UnirlError
from unirl.models import load_model


def test_same_seed_same_weights_other_seed_differs():
    a, b, c = (load_model("janus-tiny", seed=s).module for s in (0, 0, 1))
    wa, wb, wc = (m.model.generation_head.vision_head.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_missing_folder_is_one_clear_line(tmp_path):
    with pytest.raises(UnirlError, match="no such Janus model folder") as e:
        load_model(f"janus:{tmp_path}/missing")
    assert "\n" not in str(e.value)
    with pytest.raises(UnirlError, match="not a model spec"):
        load_model(str(tmp_path / "nothing-here"))


def test_incomplete_folder_is_clear(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "janus"}')
    with pytest.raises(UnirlError, match=r"not a complete Janus folder \(missing safetensors weights, a tokenizer\)"):
        load_model(f"janus:{tmp_path}")


def test_greedy_tokens_match_transformers_generate(tiny_janus):
    """Our rollout is Janus' own sampling: at temperature 0 it reproduces transformers'
    `generate(generation_mode="image")` greedy CFG tokens exactly."""
    m = tiny_janus
    prompts = ["a photo of a red circle", "a photo of a red square"]  # the same length: no padding differences
    ids = m.tokenizer([m.generation_text(p) for p in prompts])["input_ids"]
    assert len(ids[0]) == len(ids[1])
    inputs = torch.tensor(ids)
    m.module.generation_config.generation_kwargs = {"boi_token_id": m.boi_id}
    reference = m.module.generate(inputs, attention_mask=torch.ones_like(inputs), generation_mode="image",
                                  do_sample=False, guidance_scale=5.0, max_new_tokens=m.num_image_tokens)
    ours = m.generate_images(prompts, guidance=5.0, temperature=0.0).tokens
    assert torch.equal(ours, reference)


def test_understanding_uses_the_image(tiny_janus):
    """yes_no must depend on the pixels it is given, not only on the question."""
    m = tiny_janus
    black, white = torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)
    p_black, _ = m.yes_no(black, ["Is it white?"])
    p_white, _ = m.yes_no(white, ["Is it white?"])
    assert not torch.allclose(p_black, p_white)


def test_a_one_turn_conversation_is_answer_logprobs(tiny_janus):
    m = tiny_janus
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    questions, answers = ["What shape is this?", "How many stars are there?"], ["circle", "three"]
    single = m.answer_logprobs(images, questions, answers)
    one_turn, tokens = m.conversation_logprobs(images, [[(q, a)] for q, a in zip(questions, answers)])
    torch.testing.assert_close(one_turn, single, rtol=1e-5, atol=1e-5)
    counts = [len(m.tokenizer(" " + a, add_special_tokens=False)["input_ids"]) + 1 for a in answers]
    assert tokens.tolist() == counts
    two_turns, tokens = m.conversation_logprobs(images, [[(q, a), (q, a)] for q, a in zip(questions, answers)])
    assert tokens.tolist() == [2 * c for c in counts] and not torch.allclose(two_turns, 2 * single)


def test_sampled_answers_logprobs_match_teacher_forcing(tiny_janus):
    """The rollout side of GRPO on answers: what was drawn, and its log-prob, are what a
    teacher-forced pass over the same tokens gives (several images per sample, as jigsaw tiles)."""
    m = tiny_janus
    tiles = [torch.rand(k, 3, 32, 32, generator=torch.Generator().manual_seed(k)) for k in (4, 4, 2)]
    questions = ["Order the tiles."] * 3
    rollout = m.sample_answers(tiles, questions, temperature=1.0, seed=5, max_new_tokens=6)
    assert rollout.tokens.shape == rollout.mask.shape == rollout.logprobs.shape
    assert rollout.mask[:, 0].all() and rollout.mask.sum() > 3  # something was drawn
    again = m.sample_answers(tiles, questions, temperature=1.0, seed=5, max_new_tokens=6)
    assert torch.equal(again.tokens, rollout.tokens)
    forced = m.answer_token_logprobs(tiles, questions, rollout.tokens, rollout.mask, temperature=1.0)
    torch.testing.assert_close(forced, rollout.logprobs, rtol=1e-4, atol=1e-4)
    assert forced.requires_grad
    greedy = m.sample_answers(tiles, questions, temperature=0.0, max_new_tokens=6)
    assert greedy.texts == m.answer(tiles, questions, max_new_tokens=6)


def test_cpu_vq_decoder_runs_channels_last_and_decodes_as_the_default_layout(tiny_janus):
    import copy

    vq = tiny_janus.module.model.vqmodel
    assert vq.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    plain = copy.deepcopy(vq).to(memory_format=torch.contiguous_format)
    tokens = torch.randint(0, tiny_janus.module.config.vq_config.num_embeddings, (3, tiny_janus.num_image_tokens))
    with torch.no_grad():
        expected = ((plain.decode(tokens).float() + 1) / 2).clamp(0, 1)
    assert torch.allclose(tiny_janus.decode_tokens(tokens), expected, atol=1e-5)


def test_questions_sharing_images_read_each_image_once_and_agree():
    """`yes_no_about` (each image's prefix run once, questions continuing from its KV cache) gives
    what `yes_no` gives on the images repeated per question; on the toy, whose answers are sharp."""
    from modalities.image.shapes import render, sample_scenes, split_specs
    from unirl.specs import yes_no_questions

    toy = load_model("toy", device="cpu", dtype="float32")
    scenes = sample_scenes(split_specs("heldout"), 5, seed=3)
    per_image = [yes_no_questions(s.spec) for s in scenes]
    owner = torch.tensor([i for i, qs in enumerate(per_image) for _ in qs])
    questions = [q for qs in per_image for q in qs]
    images = render(scenes)
    p_yes, p_no = toy.yes_no_about(images, owner, questions)
    q_yes, q_no = toy.yes_no(images[owner], questions)
    assert len(set(owner.tolist())) == 5 and len(questions) > 5
    assert torch.allclose(p_yes, q_yes, atol=1e-4) and torch.allclose(p_no, q_no, atol=1e-4)
    assert (q_yes - q_no).abs().max() > 0.3  # the comparison is not between near-zeros


def test_decode_step_ignores_the_unused_cache_slots_a_graph_reads(tiny_janus):
    """A replayed CUDA graph attends over a fixed span of slots, some not yet written: masked
    out, they must change nothing (checked here on the CPU, the same step run eagerly)."""
    from unirl.models.llama_decode import CachedDecoder, attention_buckets

    m = tiny_janus
    ids, mask = m._generation_inputs(["a red circle", "two blue stars left of a big green heart"], 5.0)
    decoder = CachedDecoder(m.lm, m._prompt_embeds(ids, None), mask, 8,
                            embed=lambda t: m.module.prepare_embeddings_for_image_generation(t.repeat(2)[:, None]),
                            head=lambda h: m.module.model.generation_head(h), graphs=False)
    for token in (3, 7, 1):
        exact = decoder.feed(torch.tensor([token, token + 1]))
        widest = decoder._step(decoder.capacity)  # the same token again, over every slot
        torch.testing.assert_close(widest, exact, atol=1e-5, rtol=0)
    assert attention_buckets(30, 200) == [64, 128, 192, 200] and attention_buckets(65, 70) == [70]
