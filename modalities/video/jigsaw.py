"""Video jigsaw (Visual Jigsaw): split a video into K clips, trim each clip's ends so that
neighbouring clips share no near-identical frames, shuffle the clips, and ask for their
chronological order.

    puzzle = video_jigsaw(videos, clips=6, trim=0.1, frames_per_clip=4, generator=g)
    puzzle.clips    # [B, K, F, 3, H, W] in the shuffled order shown ("Clip 1" … "Clip K")
    puzzle.answer   # [B, K] 1-based: answer[b, p] is the shown clip that comes p-th in time
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modalities.permutation import shuffle_pieces
from unirl.errors import UnirlError
from unirl.models.base import IMAGE_SLOT


@dataclass
class VideoJigsaw:
    clips: torch.Tensor   # [B, K, F, C, H, W]
    answer: torch.Tensor  # [B, K] long, 1-based


def clip_frame_indices(total: int, clips: int = 6, trim: float = 0.1, frames_per_clip: int = 4) -> torch.Tensor:
    """[clips, frames_per_clip] frame indices: clip c spans [c·L, (c+1)·L) with L = total/clips,
    less trim·L/2 at each end (so trim·L frames separate neighbouring clips), sampled uniformly."""
    if clips < 2:
        raise UnirlError(f"clips: expected at least 2, got {clips}")
    if not 0 <= trim < 1:
        raise UnirlError(f"trim: expected a fraction of a clip in [0, 1), got {trim}")
    length = total / clips
    if length * (1 - trim) < frames_per_clip:
        raise UnirlError(f"video: {total} frames are too few for {clips} clips of {frames_per_clip} frames "
                         f"after trimming {trim:.0%} of each clip")
    start = torch.arange(clips, dtype=torch.float64)[:, None] * length + trim * length / 2
    span = length * (1 - trim)
    # Frame f of a clip sits at the centre of the f-th of frames_per_clip equal parts of the kept span.
    offset = (torch.arange(frames_per_clip, dtype=torch.float64) + 0.5) * span / frames_per_clip
    return (start + offset).floor().long().clamp(max=total - 1)


def video_jigsaw(videos: torch.Tensor, clips: int = 6, trim: float = 0.1, frames_per_clip: int = 4,
                 generator: torch.Generator | None = None) -> VideoJigsaw:
    """Videos [B, T, C, H, W] (equal length, as `read_video(num_frames=T)` gives) → a puzzle each,
    gathered in one indexing operation on the videos' device."""
    if videos.dim() != 5:
        raise UnirlError(f"videos: expected a tensor [B,T,C,H,W], got shape {tuple(videos.shape)}")
    index = clip_frame_indices(videos.shape[1], clips, trim, frames_per_clip).to(videos.device)
    pieces = videos[:, index]  # [B, K, F, C, H, W]
    shown, answer = shuffle_pieces(pieces, generator)
    return VideoJigsaw(shown, answer)


def video_jigsaw_question(clips: int, frames_per_clip: int = 1) -> str:
    """The clips in their slots (each its frames in order), labelled, then the task."""
    shown = "\n".join(f"Clip {j}: {IMAGE_SLOT * frames_per_clip}" for j in range(1, clips + 1))
    return (f"{shown}\nThese are {clips} clips of a video, shuffled. List the clip labels in the order the "
            f"events happened, separated by commas.")
