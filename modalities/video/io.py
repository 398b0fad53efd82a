"""Reading and writing video files as tensors [T,3,H,W] in [0,1].

decord reads (what Visual Jigsaw and most video-LLM code use); where decord is not installed
(it has no wheels for some platforms) PyAV reads instead. PyAV also writes, so the toy videos
are real files that go through the same reader as a user's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unirl.errors import UnirlError

try:
    import decord
except ImportError:  # pragma: no cover - decord has wheels for x86-64 Linux, where the suite runs
    decord = None


def _frame_indices(total: int, num_frames: int | None) -> np.ndarray:
    if num_frames is None or num_frames >= total:
        return np.arange(total)
    return np.linspace(0, total - 1, num_frames).round().astype(np.int64)  # uniform, first and last kept


def read_video(path: str | Path, num_frames: int | None = None, reader: str = "auto") -> torch.Tensor:
    """A video file → float [T,3,H,W] in [0,1]: every frame, or `num_frames` spread uniformly.
    `reader`: "decord", "pyav", or "auto" (decord when installed). A missing, empty or corrupt
    file is one clear error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UnirlError(f"{path}: video file not found")
    if reader not in ("auto", "decord", "pyav"):
        raise UnirlError(f"reader: expected auto, decord or pyav, got {reader!r}")
    use_decord = reader == "decord" or (reader == "auto" and decord is not None)
    try:
        frames = _read_decord(path, num_frames) if use_decord else _read_pyav(path, num_frames)
    except UnirlError:
        raise
    except Exception as e:  # decord and PyAV raise their own error types for unreadable files
        raise UnirlError(f"{path}: not a readable video ({type(e).__name__})") from None
    if frames.shape[0] == 0:
        raise UnirlError(f"{path}: not a readable video (no frames)")
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def _read_decord(path: Path, num_frames: int | None) -> np.ndarray:
    if decord is None:
        raise UnirlError("reader 'decord': decord is not installed (pip install decord), or use reader='pyav'")
    video = decord.VideoReader(str(path), ctx=decord.cpu(0))
    return video.get_batch(_frame_indices(len(video), num_frames).tolist()).asnumpy()


def _read_pyav(path: Path, num_frames: int | None) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    return np.stack(frames)[_frame_indices(len(frames), num_frames)]


def write_video(path: str | Path, frames: torch.Tensor, fps: int = 8) -> Path:
    """Frames [T,3,H,W] in [0,1] → an H.264 .mp4 (near-lossless: the toy's colours must survive
    the round trip). H and W must be even (yuv420p)."""
    import av

    from modalities.image.io import to_uint8
    from unirl.atomic import atomic_file

    if frames.dim() != 4 or frames.shape[1] != 3:
        raise UnirlError(f"frames: expected a tensor [T,3,H,W], got shape {tuple(frames.shape)}")
    height, width = frames.shape[-2:]
    if height % 2 or width % 2:
        raise UnirlError(f"frames: H.264 needs an even height and width, got {height}x{width}")
    path = Path(path)
    with atomic_file(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps, options={"crf": "4", "preset": "veryfast"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for array in to_uint8(frames):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
            container.mux(stream.encode())
    return path
