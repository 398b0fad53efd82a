"""Show-o's MAGVIT-v2 image tokenizer: a VQGAN encoder/decoder around a lookup-free quantizer.

`encode` maps pixels in [-1, 1] to 2^13 binary codes on a 16x down-sampled grid (256 px -> 256
tokens, 512 px -> 1024); `decode` maps codes back to pixels. Module tree, state-dict keys and maths
follow Show-o's `MAGVITv2` (get_code / decode_code), so its `magvitv2` checkpoints load strictly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from unirl.config import from_dict, read_json_object
from unirl.errors import UnirlError

CLASS_NAME = "MAGVITv2"  # what Show-o's save_config writes as `_class_name`
SAVE_WEIGHTS_NAME = "pytorch_model.safetensors"  # the name Show-o's own save_pretrained uses
SAFETENSORS_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors", SAVE_WEIGHTS_NAME)
PICKLE_NAME = "pytorch_model.bin"


@dataclasses.dataclass
class MagvitV2Config:
    """Architecture; the defaults are the released tokenizer's (Show-o's MAGVITv2 takes no arguments)."""

    ch: int = 128
    ch_mult: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 2, 4, 4])
    num_res_blocks: list[int] = dataclasses.field(default_factory=lambda: [4, 3, 4, 3, 4])
    # Show-o's decoder has its own defaults, not the encoder's mirror image.
    decoder_ch_mult: list[int] = dataclasses.field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_num_res_blocks: list[int] = dataclasses.field(default_factory=lambda: [4, 4, 3, 4, 3])
    attn_resolutions: list[int] = dataclasses.field(default_factory=lambda: [5])
    """Nominal resolutions that get attention after each res block (none at the defaults)."""
    resolution: int = 256
    """Nominal input size, used only to place `attn_resolutions`; any input size works."""
    in_channels: int = 3
    out_channels: int = 3
    z_channels: int = 13
    """Latent channels = bits per code: the codebook has 2**z_channels entries."""

    def validate(self, source: str) -> None:
        for enc, blocks, name in ((self.ch_mult, self.num_res_blocks, ""),
                                  (self.decoder_ch_mult, self.decoder_num_res_blocks, "decoder_")):
            if not enc or len(enc) != len(blocks):
                raise UnirlError(f"{source}: '{name}ch_mult' and '{name}num_res_blocks' expected equal non-empty "
                                 f"lengths, got {enc} and {blocks}")
            if any(self.ch * m % 32 for m in enc) or self.ch <= 0:
                raise UnirlError(f"{source}: 'ch' * '{name}ch_mult' expected multiples of 32 (GroupNorm has 32 "
                                 f"groups), got ch={self.ch}, {name}ch_mult={enc}")
        if len(self.ch_mult) != len(self.decoder_ch_mult):
            raise UnirlError(f"{source}: 'ch_mult' and 'decoder_ch_mult' expected the same number of levels "
                             f"(down- and up-sampling must match), got {self.ch_mult} and {self.decoder_ch_mult}")
        if not 1 <= self.z_channels <= 24:
            raise UnirlError(f"{source}: 'z_channels' expected 1..24 (the codebook has 2**z_channels entries), "
                             f"got {self.z_channels}")


def swish(x: torch.Tensor) -> torch.Tensor:
    # Written out, not F.silu: Show-o's form, so encoder outputs (whose signs are the codes) match bit for bit.
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice, plus a 1x1 `nin_shortcut` when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with 1x1-conv q/k/v/proj and a residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q = self.q(normed).reshape(b, c, h * w).transpose(1, 2)  # [b, hw, c]
        k = self.k(normed).reshape(b, c, h * w)  # [b, c, hw]
        v = self.v(normed).reshape(b, c, h * w)
        # Explicit bmm + softmax (as Show-o), not SDPA, so the numbers match the reference.
        weights = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)  # [b, query, key]
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pad right and bottom only (taming-transformers' asymmetric padding), then a stride-2 conv.
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: res blocks, optional attention after each, then an optional resample.

    Attribute names (`block`, `attn`, `downsample` / `upsample`) are the checkpoint's key names."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, with_attn: bool,
                 resample: str | None):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(num_blocks))
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks if with_attn else 0))
        if resample == "down":
            self.downsample = Downsample(out_channels)
        elif resample == "up":
            self.upsample = Upsample(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn) > 0:
                x = self.attn[i](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """pixels -> z (z_channels per position, 2**(levels-1) down-sampled); ends in `quant_conv`."""

    def __init__(self, config: MagvitV2Config):
        super().__init__()
        ch, mult = config.ch, config.ch_mult
        self.conv_in = nn.Conv2d(config.in_channels, ch, kernel_size=3, padding=1)
        res, block_in = config.resolution, ch
        self.down = nn.ModuleList()
        for i, (m, blocks) in enumerate(zip(mult, config.num_res_blocks)):
            last = i == len(mult) - 1
            self.down.append(Level(block_in, ch * m, blocks, res in config.attn_resolutions,
                                   None if last else "down"))
            block_in = ch * m
            res = res if last else res // 2
        self.mid = MidBlock(block_in)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.z_channels, kernel_size=3, padding=1)
        self.quant_conv = nn.Conv2d(config.z_channels, config.z_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.quant_conv(self.conv_out(swish(self.norm_out(h))))


class Decoder(nn.Module):
    """±1 code vectors -> pixels; starts with `post_quant_conv`. `up[i]` is level i (run from the top)."""

    def __init__(self, config: MagvitV2Config):
        super().__init__()
        ch, mult = config.ch, config.decoder_ch_mult
        block_in = ch * mult[-1]
        res = config.resolution // 2 ** (len(mult) - 1)
        self.conv_in = nn.Conv2d(config.z_channels, block_in, kernel_size=3, padding=1)
        self.mid = MidBlock(block_in)
        levels: list[Level] = []
        for i in reversed(range(len(mult))):
            levels.insert(0, Level(block_in, ch * mult[i], config.decoder_num_res_blocks[i],
                                   res in config.attn_resolutions, "up" if i != 0 else None))
            block_in = ch * mult[i]
            res = res * 2 if i != 0 else res
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.out_channels, kernel_size=3, padding=1)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, kernel_size=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


class LookupFreeQuantizer(nn.Module):
    """Each latent channel's sign is one bit of the code, most significant bit first.

    `embedding` (code -> ±1 vector) and `power_vals` (bit weights) are persistent buffers
    because Show-o's checkpoints carry them; decode and encode read them, not recomputed values."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        shifts = torch.arange(bits - 1, -1, -1, dtype=torch.long)
        codes = torch.arange(2**bits, dtype=torch.long)
        self.register_buffer("embedding", ((codes[:, None] >> shifts) & 1).float() * 2 - 1)
        self.register_buffer("power_vals", 2**shifts)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, bits, h, w] -> codes [B, h*w] (row-major)."""
        z = z.permute(0, 2, 3, 1).reshape(-1, self.bits)
        signs = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
        # Show-o's straight-through form z + (q - z): it rounds to 0 for huge |z| (earlier in bf16),
        # which then reads as bit 0; kept so codes match Show-o's in every dtype.
        z_q = z + (signs - z)
        bits = (z_q > 0).float()
        weights = self.power_vals.reshape(1, -1)
        return (weights * bits).sum(1).long().reshape(-1)

    def lookup(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """codes [B, h*w] -> ±1 vectors [B, bits, h, w]."""
        b = codes.shape[0]
        return self.embedding[codes.reshape(-1)].reshape(b, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()


class MagvitV2(nn.Module):
    """Show-o's MAGVIT-v2 tokenizer. Keys: `encoder.*`, `decoder.*`, `quantize.{embedding,power_vals}`."""

    def __init__(self, config: MagvitV2Config | None = None):
        super().__init__()
        self.config = config or MagvitV2Config()
        self.config.validate("MagvitV2Config")
        # Registration order is the state-dict order Show-o's checkpoints have.
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.quantize = LookupFreeQuantizer(self.config.z_channels)

    @property
    def codebook_size(self) -> int:
        return 2**self.config.z_channels

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.ch_mult) - 1)

    @torch.no_grad()  # codes are integers: nothing to differentiate, so keep no activations
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] in [-1, 1] -> codes [B, (H/16)*(W/16)] in [0, codebook_size) (Show-o's get_code)."""
        if pixels.ndim != 4 or pixels.shape[1] != self.config.in_channels:
            raise UnirlError(f"MagvitV2.encode: expected pixels [B,{self.config.in_channels},H,W], "
                             f"got shape {tuple(pixels.shape)}")
        z = self.encoder(pixels)
        return self.quantize.codes(z).reshape(pixels.shape[0], -1)

    def decode(self, codes: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """codes [B, T] -> pixels [B, 3, H, W], about [-1, 1] (Show-o's decode_code).

        The token grid is square (sqrt(T) x sqrt(T)) unless `grid` = (h, w) says otherwise."""
        if codes.ndim != 2:
            raise UnirlError(f"MagvitV2.decode: expected codes [B,T], got shape {tuple(codes.shape)}")
        if grid is None:
            side = math.isqrt(codes.shape[1])
            grid = (side, side)
        if grid[0] * grid[1] != codes.shape[1]:
            raise UnirlError(f"MagvitV2.decode: {codes.shape[1]} tokens do not fill a {grid[0]}x{grid[1]} grid "
                             f"(pass grid=(h, w) for a non-square one)")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise UnirlError(f"MagvitV2.decode: codes expected in [0, {self.codebook_size}), "
                             f"got [{int(codes.min())}, {int(codes.max())}]")
        return self.decoder(self.quantize.lookup(codes.long(), grid))

    # --- folders -------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> MagvitV2:
        """Load a Show-o-style folder (config.json + weights). dtype None -> float32; buffers stay exact."""
        path = Path(path)
        if not path.is_dir():
            raise UnirlError(f"{path}: no such MAGVIT-v2 folder")
        config = read_config(path / "config.json")
        weights_file, state = read_weights(path)
        with torch.device("meta"):  # no random init of ~100M parameters that are overwritten next
            model = cls(config)
        check_state_dict(model, state, weights_file)
        dtype = dtype or torch.float32
        # Cast floating tensors only: power_vals stays int64, as in the checkpoint.
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device=device).eval()

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json + pytorch_model.safetensors, readable by `from_folder` (and by Show-o)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": CLASS_NAME, **dataclasses.asdict(self.config)}
        (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / SAVE_WEIGHTS_NAME), metadata={"format": "pt"})


def read_config(file: Path) -> MagvitV2Config:
    data = read_json_object(file, "a MAGVIT-v2 folder needs config.json and weights")
    if data.get("_class_name") != CLASS_NAME:
        raise UnirlError(f"{file}: '_class_name' expected {CLASS_NAME!r}, got {data.get('_class_name')!r}")
    # `_`-prefixed keys are diffusers metadata (_class_name, _diffusers_version, ...), not architecture.
    fields = {k: v for k, v in data.items() if not k.startswith("_")}
    config = from_dict(MagvitV2Config, fields, source=str(file))
    config.validate(str(file))
    return config


def read_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    for name in SAFETENSORS_NAMES:
        file = folder / name
        if file.is_file():
            try:
                return file, load_file(str(file), device="cpu")
            except Exception as e:  # safetensors raises its own error types for corrupt files
                raise UnirlError(f"{file}: not a readable safetensors file ({str(e).splitlines()[0][:200]})") from None
    file = folder / PICKLE_NAME
    if file.is_file():
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)  # never unpickle arbitrary code
        except Exception as e:
            raise UnirlError(f"{file}: not a plain tensor state dict ({str(e).splitlines()[0][:200]})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UnirlError(f"{file}: expected a mapping of names to tensors")
        return file, state
    raise UnirlError(f"{folder}: no weights (expected one of {', '.join(SAFETENSORS_NAMES + (PICKLE_NAME,))})")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], file: Path) -> None:
    """One-line error for key or shape mismatches (load_state_dict's own message spans many lines)."""
    expected = model.state_dict()

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {some(missing)}"] if missing else []) + ([f"unexpected {some(unexpected)}"] if unexpected
                                                                     else [])
        raise UnirlError(f"{file}: state dict does not match the MAGVIT-v2 config ({'; '.join(parts)})")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise UnirlError(f"{file}: tensor shapes do not match the MAGVIT-v2 config: {some(wrong)}")
