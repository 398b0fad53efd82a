import pytest
import torch

from modalities.image.jigsaw import cut_tiles, image_jigsaw, reassemble
from modalities.image.shapes import render, sample_scenes, split_specs
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
