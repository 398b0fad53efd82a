"""Show-o's LM: vocabulary, omni-attention masks, sequences and logits against the fixture Show-o's own
code wrote (shared/showo/showo-tiny), plus the native-folder round trip and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import PhiConfig

from unirl.errors import UnirlError
from unirl.models.showo import (
    SPECIAL_TOKENS,
    ShowoLM,
    ShowoVocab,
    load_showo_lm,
    mmu_attention_mask,
    mmu_sequence,
    save_showo_lm,
    t2i_attention_mask,
    t2i_sequence,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "showo"
TINY = FIXTURES / "showo-tiny"
needs_fixture = pytest.mark.skipif(not TINY.is_dir(), reason=f"Show-o conformance fixture not found at {TINY}")


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((TINY / "expected.json").read_text())


@pytest.fixture(scope="module")
def loaded():
    return load_showo_lm(TINY)


# --- vocabulary -------------------------------------------------------------------------------------------


@needs_fixture
def test_vocab_matches_fixture(expected, loaded):
    _, vocab, config = loaded
    ev = expected["vocab"]
    assert vocab.text_vocab_size == ev["text"]
    assert list(SPECIAL_TOKENS) == ev["special_order"]
    assert vocab.pad_id == ev["first_special_id"]
    assert [vocab.special_id(t) for t in SPECIAL_TOKENS] == list(range(ev["first_special_id"],
                                                                       ev["first_special_id"] + 10))
    assert vocab.image_code_offset == ev["image_code_offset"]
    assert vocab.mask_id == ev["mask_id"] == config["mask_token_id"]
    assert vocab.sot_id == vocab.eot_id == ev["sot_eot_id"]
    assert vocab.total_size == config["vocab_size"]


def test_codes_ids_round_trip():
    vocab = ShowoVocab(100, 98, 99, codebook_size=16)
    codes = torch.tensor([[0, 5, 15, -1]])
    ids = vocab.codes_to_ids(codes)
    assert ids.tolist() == [[110, 115, 125, vocab.mask_id]]
    assert torch.equal(vocab.ids_to_codes(ids), codes)
    assert vocab.ids_to_codes(torch.tensor([vocab.pad_id, 3])).tolist() == [-1, -1]


# --- sequences and masks ----------------------------------------------------------------------------------


@needs_fixture
def test_t2i_sequence_and_mask_match_fixture(expected, loaded):
    _, vocab, _ = loaded
    ids = torch.tensor(expected["t2i"]["input_ids"])
    # Recover each row's text and image part from the fixture, rebuild it with the fixture's layout.
    soi = (ids == vocab.soi_id).nonzero()[:, 1]
    texts = [[int(t) for t in row[: int(s)] if int(t) not in (vocab.t2i_id, vocab.pad_id)][1:-1]
             for row, s in zip(ids, soi)]
    image = ids[:, int(soi[0]) + 1: -1]
    rebuilt = t2i_sequence(texts, image, vocab, max_text_len=int(soi[0]) - 1, task_token_first=True)
    assert torch.equal(rebuilt, ids)
    # Show-o's own prompting puts the pads before the task token; the parts are otherwise the same.
    showo_layout = t2i_sequence(texts, image, vocab, max_text_len=int(soi[0]) - 1)
    n_pad = (ids == vocab.pad_id).sum(1)
    for row, n in zip(showo_layout, n_pad):
        assert (row[:n] == vocab.pad_id).all() and row[n] == vocab.t2i_id and row[n + 1] == vocab.sot_id
    assert torch.equal(showo_layout[:, int(soi[0]):], ids[:, int(soi[0]):])

    allowed = t2i_attention_mask(ids, vocab)
    assert allowed.dtype == torch.bool
    assert torch.equal(allowed, torch.tensor(expected["t2i"]["attention_allowed"]).bool())


@needs_fixture
def test_mmu_sequence_and_mask_match_fixture(expected, loaded):
    _, vocab, config = loaded
    ids = torch.tensor(expected["mmu"]["input_ids"])
    t = config["num_vq_tokens"]
    rebuilt = mmu_sequence(ids[:, 2: 2 + t], ids[:, t + 4:].tolist(), vocab)
    assert torch.equal(rebuilt, ids)
    want = torch.tensor(expected["mmu"]["attention_allowed"]).bool()
    assert torch.equal(mmu_attention_mask(ids, vocab, num_image_tokens=t), want)
    assert torch.equal(mmu_attention_mask(ids, vocab), want)


def test_t2i_mask_semantics_showo_layout():
    vocab = ShowoVocab(100, 98, 99, codebook_size=16)
    image = vocab.codes_to_ids(torch.tensor([[1, -1, 3]]))
    ids = t2i_sequence([[7]], image, vocab, max_text_len=5)  # [PAD PAD t2i sot 7 eot soi i i i eoi]
    assert ids[0, :3].tolist() == [vocab.pad_id, vocab.pad_id, vocab.t2i_id]
    a = t2i_attention_mask(ids, vocab)[0, 0]
    assert not a[2:, :2].any()  # nothing after the pads sees them
    assert a[:2].tril().equal(a[:2]) and a[1, 0]  # pads themselves stay causal
    assert a[5, 2:6].all() and not a[5, 6:].any()  # text: causal, sees the task token
    assert a[6:11, 2:].all()  # image span: everything but the pads, both ways
    truncated = t2i_sequence([list(range(10))], image, vocab, max_text_len=5)
    assert truncated[0, :6].tolist() == [vocab.t2i_id, 98, 0, 1, 2, 99]


# --- logits -----------------------------------------------------------------------------------------------


@needs_fixture
@pytest.mark.parametrize("task", ["t2i", "mmu"])
def test_logits_match_fixture(expected, loaded, task):
    lm, vocab, config = loaded
    ids = torch.tensor(expected[task]["input_ids"])
    mask = t2i_attention_mask(ids, vocab) if task == "t2i" else mmu_attention_mask(ids, vocab)
    with torch.no_grad():
        logits = lm(ids, mask)
    want = expected[task]["logits"]
    assert list(logits.shape) == want["shape"]
    assert torch.equal(logits.argmax(-1), torch.tensor(want["argmax"]))
    off = vocab.image_code_offset
    for got, key in ((logits.logsumexp(-1), "logsumexp"), (logits[..., :16], "first16"),
                     (logits[..., off: off + 16], "image_codes_first16")):
        torch.testing.assert_close(got, torch.tensor(want[key]), atol=1e-4, rtol=0)


# --- native folders ---------------------------------------------------------------------------------------


def _tiny_lm(seed: int = 0) -> tuple[ShowoLM, ShowoVocab]:
    vocab = ShowoVocab(60, 58, 59, codebook_size=32)
    phi = PhiConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=128, bos_token_id=58, eos_token_id=59)
    torch.manual_seed(seed)
    lm = ShowoLM(phi, vocab).eval()
    with torch.no_grad():  # non-trivial q/k LayerNorms, so a loader that dropped them would show
        for name, p in lm.named_parameters():
            if "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return lm, vocab


def test_save_load_round_trip(tmp_path):
    lm, vocab = _tiny_lm()
    save_showo_lm(lm, vocab, tmp_path / "m", config={"num_vq_tokens": 4})
    lm2, vocab2, config = load_showo_lm(tmp_path / "m")
    assert vocab2 == vocab and config["num_vq_tokens"] == 4 and config["_class_name"] == "Showo"
    image = vocab.codes_to_ids(torch.tensor([[1, -1, 3, 31], [-1, -1, 0, 2]]))
    ids = t2i_sequence([[1, 2, 3], []], image, vocab, max_text_len=6)
    mask = t2i_attention_mask(ids, vocab)
    with torch.no_grad():
        assert torch.equal(lm(ids, mask), lm2(ids, mask))
        # the head on 5 rows vs on all rows: same maths, other matmul shapes (rounding may differ)
        torch.testing.assert_close(lm(ids, mask, logits_to_keep=5), lm2(ids, mask)[:, -5:], atol=1e-6, rtol=0)


def test_load_pytorch_bin(tmp_path):
    lm, vocab = _tiny_lm(seed=1)
    folder = tmp_path / "m"
    save_showo_lm(lm, vocab, folder)
    (folder / "pytorch_model.safetensors").unlink()
    torch.save(lm.state_dict(), folder / "pytorch_model.bin")
    lm2, _, _ = load_showo_lm(folder)
    ids = mmu_sequence(vocab.codes_to_ids(torch.tensor([[4, 5, 6]])), [[1, 2]], vocab)
    mask = mmu_attention_mask(ids, vocab, num_image_tokens=3)
    with torch.no_grad():
        assert torch.equal(lm(ids, mask), lm2(ids, mask))


def _saved(tmp_path: Path) -> Path:
    lm, vocab = _tiny_lm()
    save_showo_lm(lm, vocab, tmp_path / "m")
    return tmp_path / "m"


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_load_errors(tmp_path):
    folder = _saved(tmp_path)
    with pytest.raises(UnirlError, match="no such Show-o"):
        load_showo_lm(tmp_path / "absent")

    broken = tmp_path / "no-config"
    shutil.copytree(folder, broken)
    (broken / "config.json").unlink()
    with pytest.raises(UnirlError, match="config.json: not found"):
        load_showo_lm(broken)

    _edit_config(folder, _class_name="MAGVITv2")
    with pytest.raises(UnirlError, match="_class_name 'MAGVITv2', expected 'Showo'"):
        load_showo_lm(folder)

    _edit_config(folder, _class_name="Showo", vocab_size=12345)
    with pytest.raises(UnirlError, match="vocab_size 12345, expected"):
        load_showo_lm(folder)

    _edit_config(folder, vocab_size=60 + 10 + 32 + 1, mask_token_id=7)
    with pytest.raises(UnirlError, match="mask_token_id 7"):
        load_showo_lm(folder)

    _edit_config(folder, mask_token_id=102, llm_model_path="example-org/no-such-phi")
    shutil.rmtree(folder / "phi")
    with pytest.raises(UnirlError, match="place the Phi config folder"):
        load_showo_lm(folder)


def test_load_rejects_mismatched_weights(tmp_path):
    folder = _saved(tmp_path)
    other, vocab = _tiny_lm()
    state = {k: v for k, v in other.state_dict().items() if "q_layernorm" not in k}
    save_file(state, str(folder / "pytorch_model.safetensors"))
    with pytest.raises(UnirlError, match="keys do not match"):
        load_showo_lm(folder)
