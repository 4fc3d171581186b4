"""Image grids: clamping, layout and PNG round trip."""
import numpy as np
from PIL import Image

from ncsn_jax.run import images


def test_grid_layout_and_clamping():
    batch = np.zeros((5, 3, 4, 1), np.float32)
    for i in range(5):
        batch[i] = i / 4.0
    batch[4, 0, 0, 0] = 7.0  # out of range: clamped to white
    batch[0, 0, 0, 0] = -2.0  # clamped to black
    grid = images.make_grid(batch, nrow=3, padding=1)
    assert grid.shape == (2 * 4 + 1, 3 * 5 + 1, 1) and grid.dtype == np.uint8
    # Image 4 is row 1, column 1: top-left pixel at (1 + 4, 1 + 5).
    assert grid[5, 6, 0] == 255 and grid[6, 7, 0] == 255
    assert grid[1, 1, 0] == 0 and grid[2, 2, 0] == 0
    assert grid[1, 6, 0] == round(0.25 * 255)  # image 1
    assert grid[0].max() == 0  # padding


def test_png_round_trip(tmp_path):
    batch = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)
    path = tmp_path / "sub" / "grid.png"
    images.save_grid(batch, path, nrow=2)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), images.make_grid(batch, nrow=2))


def test_8bit_levels():
    levels = images.to_8bit_levels(np.array([-0.3, 0.0, 0.5, 1.0 / 255 * 0.4, 1.7]))
    np.testing.assert_allclose(levels, [0.0, 0.0, 128 / 255, 0.0, 1.0], atol=1e-7)
