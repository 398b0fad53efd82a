import numpy as np
import pytest
import torch
from PIL import Image

from modalities.depth.io import load_rgbd, rgbd_pairs, save_depth
from modalities.depth.jigsaw import depth_jigsaw
from modalities.image.io import to_uint8
from modalities.image.jigsaw import cut_tiles, image_jigsaw, reassemble
from modalities.image.shapes import render, render_depth, sample_scenes, split_specs
from modalities.video.io import read_video, write_video
from modalities.video.jigsaw import clip_frame_indices, video_jigsaw
from modalities.video.toy import toy_videos, write_toy_videos
from unirl.errors import UnirlError


@pytest.mark.parametrize("rows,cols", [(2, 2), (3, 3), (2, 3)])
def test_image_answer_reassembles_the_original(rows, cols):
    images = render(sample_scenes(split_specs("train"), 8, seed=3))  # [8,3,96,96]
    puzzle = image_jigsaw(images, rows, cols, generator=torch.Generator().manual_seed(0))
    k = rows * cols
    assert puzzle.tiles.shape == (8, k, 3, 96 // rows, 96 // cols)
    assert (puzzle.answer.sort(dim=1).values == torch.arange(1, k + 1)).all()  # each a permutation
    assert not (puzzle.answer == torch.arange(1, k + 1)).all(dim=1).any()      # never unshuffled
    assert torch.equal(reassemble(puzzle.tiles, puzzle.answer, rows, cols), images)
    wrong = puzzle.answer.roll(1, dims=1)
    assert not torch.equal(reassemble(puzzle.tiles, wrong, rows, cols), images)


def test_tiles_are_the_grid_cells_in_raster_order():
    image = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    tiles = cut_tiles(image, 2, 3)
    assert torch.equal(tiles[1, 4], image[1, :, 2:4, 2:4])  # row 1, column 1


def test_bad_grids_are_one_clear_error():
    with pytest.raises(UnirlError, match="does not divide"):
        cut_tiles(torch.zeros(1, 3, 10, 10), 3, 3)
    with pytest.raises(UnirlError, match="at least 2 tiles"):
        cut_tiles(torch.zeros(1, 3, 10, 10), 1, 1)


def test_video_answer_puts_the_clips_back_in_time_order(tmp_path):
    paths = write_toy_videos(tmp_path, 3, frames=36, seed=0)
    videos = torch.stack([read_video(p) for p in paths])  # real .mp4 files read back by decord
    assert videos.shape == (3, 36, 3, 96, 96)
    puzzle = video_jigsaw(videos, clips=4, trim=0.1, frames_per_clip=3, generator=torch.Generator().manual_seed(1))
    assert puzzle.clips.shape == (3, 4, 3, 3, 96, 96)
    index = clip_frame_indices(36, 4, 0.1, 3)
    assert index[1:, 0].gt(index[:-1, -1] + 1).all()  # trimmed: a gap between neighbouring clips
    in_time = puzzle.clips[torch.arange(3)[:, None], puzzle.answer - 1]  # [B,K,F,...] by the answer
    assert torch.equal(in_time, videos[:, index])
    assert not (puzzle.answer == torch.arange(1, 5)).all(dim=1).any()


def test_toy_video_survives_the_file_round_trip_and_both_readers_agree(tmp_path):
    frames = toy_videos(1, frames=12, seed=2)[0]
    path = write_video(tmp_path / "v.mp4", frames)
    by_decord, by_pyav = read_video(path, reader="decord"), read_video(path, reader="pyav")
    assert torch.equal(by_decord, by_pyav)
    assert (by_decord - frames).abs().mean() < 0.01  # H.264 at near-lossless quality
    assert read_video(path, num_frames=4).shape == (4, 3, 96, 96)


@pytest.mark.parametrize("reader", ["decord", "pyav"])
def test_corrupt_or_missing_video_is_one_clear_error(tmp_path, reader):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    with pytest.raises(UnirlError, match="broken.mp4: not a readable video"):
        read_video(bad, reader=reader)
    with pytest.raises(UnirlError, match="missing.mp4: video file not found"):
        read_video(tmp_path / "missing.mp4", reader=reader)


def test_too_short_video_names_the_problem():
    with pytest.raises(UnirlError, match="too few"):
        clip_frame_indices(10, clips=6, trim=0.1, frames_per_clip=4)


def test_depth_answer_orders_the_marked_points_nearest_first():
    scenes = sample_scenes(split_specs("train"), 6, seed=4)
    images, depth = render(scenes), render_depth(scenes)
    puzzle = depth_jigsaw(images, depth, k=6, min_distance=14, min_depth_gap=0.1,
                          generator=torch.Generator().manual_seed(0))
    by_answer = puzzle.depths.gather(1, puzzle.answer - 1)
    assert (by_answer[:, 1:] - by_answer[:, :-1] >= 0.1 - 1e-6).all()  # nearest first, gaps kept
    gaps = (puzzle.points[:, :, None] - puzzle.points[:, None]).norm(dim=-1) + 1e3 * torch.eye(6)
    assert (gaps >= 14).all()
    ix, iy = puzzle.points[..., 0].long(), puzzle.points[..., 1].long()
    assert torch.equal(depth[torch.arange(6)[:, None], iy, ix], puzzle.depths)
    # Every marker is drawn (white disc, black digit) and the six digits differ.
    patches = torch.stack([puzzle.images[0, :, y - 4:y + 4, x - 4:x + 4] for x, y in zip(ix[0], iy[0])])
    assert (patches == 0).any() and (patches == 1).any()
    assert len({p.flatten().tolist().__str__() for p in patches}) == 6


def test_rgbd_folder_round_trip_and_clear_errors(tmp_path):
    scenes = sample_scenes(split_specs("train"), 2, seed=5)
    images, depth = render(scenes), render_depth(scenes)
    (tmp_path / "color").mkdir()
    for i in range(2):
        Image.fromarray(to_uint8(images[i:i + 1])[0]).save(tmp_path / "color" / f"{i:06d}.png")
        save_depth(tmp_path / "depth" / f"{i:06d}.png", depth[i])
    pairs = rgbd_pairs(tmp_path)
    assert [c.stem for c, _ in pairs] == ["000000", "000001"]
    image, depth_map = load_rgbd(*pairs[1])
    assert torch.allclose(depth_map, depth[1], atol=5e-4)  # millimetres
    Image.fromarray(np.zeros((96, 96), dtype=np.uint8)).save(tmp_path / "depth" / "000001.png")
    with pytest.raises(UnirlError, match="000001.png: expected a single-channel 16-bit depth PNG"):
        load_rgbd(*pairs[1])
    (tmp_path / "depth" / "000000.png").unlink()
    with pytest.raises(UnirlError, match="000000.png: no depth map"):
        rgbd_pairs(tmp_path)


def test_toy_image_tiles_carry_a_position_cue_and_flat_render_is_unchanged():
    scenes = sample_scenes(split_specs("train"), 2, seed=6)
    assert torch.equal(render(scenes, shade=0.0), render(scenes))
    empty = render([type(scenes[0])({}, [])], shade=0.15)
    tiles = cut_tiles(empty, 2, 2)[0]  # an empty shaded table: every quadrant's mean differs
    means = tiles.mean(dim=(1, 2, 3))
    assert len({round(float(v), 3) for v in means}) == 4
    assert means[0] < means[1] < means[2] < means[3]  # darker at the top left
