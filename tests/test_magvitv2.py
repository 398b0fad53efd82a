"""MAGVIT-v2 tokenizer: conformance with Show-o's own numbers, and folder round trips on a tiny config."""

import json
import math

import pytest
import torch

from tests.conftest import SHARED
from unirl.config import from_dict
from unirl.errors import UnirlError
from unirl.models.magvitv2 import MagvitV2, MagvitV2Config, read_config

FIXTURE = SHARED / "showo" / "magvitv2"

DTYPES = {"torch.float32": torch.float32, "torch.int64": torch.int64}


def fill_like_fixture(model: MagvitV2) -> None:
    """The fixture's deterministic fill: tensor i (state-dict order) gets s = sin(0.731*arange(n) + 0.1*i) in
    float64; biases 0.01*s, other 1-D tensors 1 + 0.05*s, the rest s / sqrt(n / shape[0]); then cast."""
    with torch.no_grad():
        for i, (name, tensor) in enumerate(model.state_dict(keep_vars=True).items()):
            n = tensor.numel()
            s = torch.sin(0.731 * torch.arange(n, dtype=torch.float64) + 0.1 * i)
            if name.endswith(".bias"):
                s = 0.01 * s
            elif tensor.ndim == 1:
                s = 1 + 0.05 * s
            else:
                s = s / math.sqrt(n / tensor.shape[0])
            tensor.copy_(s.reshape(tensor.shape).to(tensor.dtype))


@pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"Show-o conformance fixture not present at {FIXTURE}")
def test_matches_showo_get_code_and_decode_code():
    expected = json.loads((FIXTURE / "expected.json").read_text())
    model = MagvitV2(read_config(FIXTURE / "config.json")).eval()
    assert model.codebook_size == 8192 and model.downsample_factor == 16

    listed = [(name, shape, DTYPES[dtype]) for name, shape, dtype in expected["weights"]]
    ours = [(name, list(t.shape), t.dtype) for name, t in model.state_dict().items()]
    assert ours == listed
    fill_like_fixture(model)

    x = torch.sin(0.013 * torch.arange(2 * 3 * 64 * 64, dtype=torch.float64)).reshape(2, 3, 64, 64).float()
    codes = model.encode(x)
    assert codes.dtype == torch.long and codes.tolist() == expected["codes"]

    with torch.no_grad():
        pixels = model.decode(torch.tensor(expected["codes"]))
    assert list(pixels.shape) == expected["decoded_shape"]
    crop = torch.tensor(expected["decoded_crop"])
    crop_diff = (pixels[:, :, :8, :8] - crop).abs().max().item()
    assert crop_diff < 1e-3, crop_diff
    assert abs(pixels.mean().item() - expected["decoded_mean"]) < 1e-3
    assert abs(pixels.std().item() - expected["decoded_std"]) < 1e-3


def tiny_config() -> MagvitV2Config:
    return MagvitV2Config(ch=32, ch_mult=[1, 2], num_res_blocks=[1, 1], decoder_ch_mult=[1, 2],
                          decoder_num_res_blocks=[1, 1], attn_resolutions=[4], resolution=8, z_channels=4)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MagvitV2(tiny_config()).eval()


def test_defaults_are_the_released_tokenizer():
    config = MagvitV2Config()
    assert (config.ch, config.ch_mult, config.num_res_blocks, config.z_channels) == (128, [1, 2, 2, 4, 4],
                                                                                      [4, 3, 4, 3, 4], 13)
    with torch.device("meta"):  # shapes only: no need to initialise ~100M parameters
        model = MagvitV2(config)
    assert model.codebook_size == 8192 and model.downsample_factor == 16
    assert 90e6 < sum(p.numel() for p in model.parameters()) < 100e6


def test_tiny_encode_decode_shapes(tiny):
    assert len(tiny.encoder.down[1].attn) == 1  # attn_resolutions=[4] places attention at the 4x4 level
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    codes = tiny.encode(x)
    assert codes.shape == (3, 16) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < tiny.codebook_size == 16
    assert torch.equal(codes[1:2], tiny.encode(x[1:2]))  # batching does not change a row
    with torch.no_grad():
        out = tiny.decode(codes)
    assert out.shape == (3, 3, 8, 8)
    with pytest.raises(UnirlError, match="do not fill"):
        tiny.decode(codes[:, :15])
    with pytest.raises(UnirlError, match="expected in"):
        tiny.decode(torch.full((1, 16), 16))


def test_codes_are_sign_bits_msb_first(tiny):
    z = torch.tensor([1.0, -2.0, 0.0, 3.0]).reshape(1, 4, 1, 1)  # bits 1 0 0 1 (0 is not positive)
    assert tiny.quantize.codes(z).tolist() == [9]
    assert tiny.quantize.embedding[9].tolist() == [1.0, -1.0, -1.0, 1.0]


def test_save_and_load_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "tok")
    loaded = MagvitV2.from_folder(tmp_path / "tok")
    assert loaded.config == tiny.config
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    codes = tiny.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    with torch.no_grad():
        assert torch.equal(loaded.decode(codes), tiny.decode(codes))
    assert loaded.quantize.power_vals.dtype == torch.int64
    half = MagvitV2.from_folder(tmp_path / "tok", dtype=torch.bfloat16)
    assert half.encoder.conv_in.weight.dtype == torch.bfloat16 and half.quantize.power_vals.dtype == torch.int64


def test_pickle_weights_load(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.safetensors").unlink()
    torch.save(tiny.state_dict(), tmp_path / "pytorch_model.bin")
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    assert torch.equal(MagvitV2.from_folder(tmp_path).encode(x), tiny.encode(x))


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_folder_errors_are_one_line(tiny, tmp_path):
    with pytest.raises(UnirlError, match="no such MAGVIT-v2 folder") as e:
        MagvitV2.from_folder(tmp_path / "missing")
    one_line(e)
    with pytest.raises(UnirlError, match="config.json: not found") as e:
        MagvitV2.from_folder(tmp_path)
    one_line(e)

    tiny.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    good = json.loads(config_file.read_text())
    for bad, pattern in [({**good, "_class_name": "VQModel"}, "'_class_name' expected 'MAGVITv2', got 'VQModel'"),
                         ({**good, "double_z": True}, "unknown key 'double_z'"),
                         ({**good, "ch": 48}, "multiples of 32")]:
        config_file.write_text(json.dumps(bad))
        with pytest.raises(UnirlError, match=pattern) as e:
            MagvitV2.from_folder(tmp_path)
        assert str(config_file) in one_line(e)

    config_file.write_text(json.dumps({**good, "z_channels": 5}))
    with pytest.raises(UnirlError, match="state dict does not match|shapes do not match") as e:
        MagvitV2.from_folder(tmp_path)
    assert "pytorch_model.safetensors" in one_line(e)

    config_file.write_text(json.dumps(good))
    (tmp_path / "pytorch_model.safetensors").unlink()
    with pytest.raises(UnirlError, match="no weights") as e:
        MagvitV2.from_folder(tmp_path)
    one_line(e)


def test_missing_keys_are_named(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    state = {k: v for k, v in tiny.state_dict().items() if k != "quantize.power_vals"}
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "pytorch_model.safetensors"))
    with pytest.raises(UnirlError, match="missing quantize.power_vals") as e:
        MagvitV2.from_folder(tmp_path)
    one_line(e)


def test_showo_style_config_reads_as_defaults(tmp_path):
    (tmp_path / "config.json").write_text('{"_class_name": "MAGVITv2", "_diffusers_version": "0.30.1"}')
    assert read_config(tmp_path / "config.json") == MagvitV2Config()
    assert from_dict(MagvitV2Config, {}) == MagvitV2Config()
