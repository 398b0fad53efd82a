"""Show-o's CLIP-ViT variant (w_clip_vit): CLIP features -> mm_projector at the image positions, its mask, folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from unirl.errors import UnirlError
from unirl.models.showo import (
    WEIGHTS_NAME,
    ShowoLM,
    build_tiny_showo,
    load_showo_folder,
    load_showo_lm,
    mmu_vit_attention_mask,
)

QUESTIONS = ["what is in the image?", "is it red?"]
ANSWERS = ["a red circle", "yes"]


@pytest.fixture(scope="module")
def showo():
    m = build_tiny_showo(seed=0, clip=True)
    with torch.no_grad():  # sharper than random init, so differences show
        m.module.showo.lm_head.weight.mul_(10.0)
    return m


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def saved(showo, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "m"
    showo.save_pretrained(path)
    return path


def _copy(saved, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved, folder)
    return folder


# Show-o's create_attention_mask_for_mmu_vit(return_inverse_mask=False) for the layout
# [<|mmu|>] s1 s2 [<|soi|>] f f f [<|eoi|>] q (system_prompt_len = 2, 3 image features where Show-o has 576):
# torch.tril(ones), then columns [1 + 2 + 1, 1 + 2 + 1 + 3) = 4..6 set to 1 in every row.
SHOWO_MASK = torch.tensor([
    [1, 0, 0, 0, 1, 1, 1, 0, 0],
    [1, 1, 0, 0, 1, 1, 1, 0, 0],
    [1, 1, 1, 0, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 1, 1, 1, 0],
    [1, 1, 1, 1, 1, 1, 1, 1, 1],
], dtype=torch.bool)


def test_mask_matches_showo_hand_case():
    is_feature = torch.tensor([[False] * 4 + [True] * 3 + [False] * 2])
    allowed = mmu_vit_attention_mask(is_feature)
    assert allowed.shape == (1, 1, 9, 9)
    assert torch.equal(allowed[0, 0], SHOWO_MASK)

    # Left-padded by two: the real block is the same, pad keys are hidden, every position keeps itself.
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.bool), is_feature], dim=1)
    allowed = mmu_vit_attention_mask(padded, start=torch.tensor([2]))[0, 0]
    assert torch.equal(allowed[2:, 2:], SHOWO_MASK)
    assert not allowed[2:, :2].any()
    assert torch.equal(allowed[:2, :2], torch.eye(2, dtype=torch.bool))


def test_batch_layout_and_mask(showo, images):
    ids, start, _, _, extra = showo._mmu_rows(images, ["q", "a much longer question than the first"])
    v, p = showo.vocab, showo.num_clip_features
    system = showo._text_ids([showo.system_prompt])[0]
    s = len(system)
    row = ids[1]  # the longer row: no padding
    assert start[1] == 0 and start[0] > 0
    assert row[0] == v.mmu_id and row[1:1 + s].tolist() == system
    assert row[1 + s] == v.soi_id and row[2 + s + p] == v.eoi_id
    assert row[2 + s + p + 1] != v.sot_id  # the CLIP variant's text has no <|sot|>
    expected_feature = torch.zeros(ids.shape[1], dtype=torch.bool)
    expected_feature[2 + s:2 + s + p] = True
    assert torch.equal(extra["is_feature"][1], expected_feature)
    assert extra["features"].shape == (2 * p, showo.clip.config.hidden_size)
    # Show-o's mask for this row: tril, columns [1 + s + 1, 1 + s + 1 + p) open to every row.
    length = ids.shape[1]
    showo_mask = torch.ones(length, length, dtype=torch.bool).tril()
    showo_mask[:, 1 + s + 1:1 + s + 1 + p] = True
    assert torch.equal(mmu_vit_attention_mask(extra["is_feature"], start)[1, 0], showo_mask)


def test_clip_features_are_penultimate_patches(showo, images):
    feats = showo.clip_features(images)
    out = showo.clip(pixel_values=showo.preprocess_clip(images), output_hidden_states=True)
    assert feats.shape == (2, showo.num_clip_features, showo.clip.config.hidden_size) == (2, 16, 32)
    torch.testing.assert_close(feats, out.hidden_states[-2][:, 1:])


def test_understanding_runs_and_is_in_range(showo, images):
    answers = showo.answer(images, QUESTIONS, max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

    showo.module.zero_grad()
    lp = showo.answer_logprobs(images, QUESTIONS, ANSWERS)
    assert lp.shape == (2,) and torch.isfinite(lp).all() and (lp < 0).all()
    lp.sum().backward()
    assert showo.module.mm_projector[0].weight.grad.abs().sum() > 0  # the projector trains
    assert all(p.grad is None for p in showo.clip.parameters())  # the tower is frozen
    showo.module.zero_grad()

    p_yes, p_no = showo.yes_no(images, QUESTIONS)
    assert p_yes.shape == p_no.shape == (2,)
    assert ((p_yes >= 0) & (p_no >= 0) & (p_yes + p_no <= 1 + 1e-6)).all()


def test_batching_and_image_dependence(showo, images):
    with torch.no_grad():
        batched = showo.answer_logprobs(images, QUESTIONS, ANSWERS)
        single = torch.cat([showo.answer_logprobs(images[i:i + 1], QUESTIONS[i:i + 1], ANSWERS[i:i + 1])
                            for i in range(2)])
        torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)
        other = showo.answer_logprobs(images.flip(0), QUESTIONS, ANSWERS)
        assert not torch.allclose(batched, other)
        # a list of per-sample image stacks: two feature blocks in the second row
        multi = showo.answer_logprobs([images[:1], images], QUESTIONS, ANSWERS)
        assert multi.shape == (2,) and torch.isfinite(multi).all()


def test_generation_still_uses_magvit(showo):
    r = showo.generate_images(["a red circle"], num_per_prompt=1, guidance=0.0, seed=0)
    assert r.tokens.shape == (1, showo.num_image_tokens)


def test_save_load_roundtrip(showo, images, saved):
    config = json.loads((saved / "config.json").read_text())
    assert config["w_clip_vit"] is True
    assert any(k.startswith("mm_projector.") for k in load_file(str(saved / WEIGHTS_NAME)))
    loaded = load_showo_folder(saved, "showo-clip", torch.device("cpu"), torch.float32)
    assert loaded.clip is not None and loaded.clip_mean == showo.clip_mean
    with torch.no_grad():
        torch.testing.assert_close(loaded.answer_logprobs(images, QUESTIONS, ANSWERS),
                                   showo.answer_logprobs(images, QUESTIONS, ANSWERS), atol=0, rtol=0)


def _one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(UnirlError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_missing_clip_folder(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    shutil.rmtree(folder / "clip-vit")
    _one_line_error(r"clip-vit/config.json: not found .*w_clip_vit", load_showo_folder, folder, "x",
                    torch.device("cpu"), torch.float32)


def test_missing_or_misshaped_projector(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    state = load_file(str(folder / WEIGHTS_NAME))
    save_file({k: v for k, v in state.items() if not k.startswith("mm_projector.")}, str(folder / WEIGHTS_NAME))
    _one_line_error(r"keys do not match.*missing \['mm_projector", load_showo_folder, folder, "x",
                    torch.device("cpu"), torch.float32)

    bad = dict(state, **{"mm_projector.0.weight": torch.zeros(64, 48)})
    save_file(bad, str(folder / WEIGHTS_NAME))
    _one_line_error(r"mm_projector.0.weight has shape \(64, 48\), expected \(64, 32\)", load_showo_lm, folder,
                    clip_hidden_size=32)
    # Without clip_hidden_size the projector is Show-o's (CLIP ViT-L: 1024 wide).
    save_file(state, str(folder / WEIGHTS_NAME))
    _one_line_error(r"expected \(64, 1024\)", load_showo_lm, folder)


def test_tower_and_projector_must_agree(showo):
    lm = ShowoLM(showo.module.showo.config, showo.vocab)  # no projector
    with pytest.raises(UnirlError, match="needs both a CLIP vision tower and an mm_projector"):
        type(showo)(lm, showo.vocab, showo.vq, showo.tokenizer, "x", torch.device("cpu"), torch.float32,
                    image_size=32, clip=showo.clip)
