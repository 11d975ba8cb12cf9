import numpy as np
import pytest
import torch
from torch import nn

from diffsat.geo.windows import kept_spans, pad_to, stitch, tiles


@pytest.mark.parametrize("height, width", [(64, 64), (70, 45), (24, 24)])
def test_stitching_reproduces_the_whole_image_prediction_of_a_convolutional_head(height: int, width: int) -> None:
    torch.manual_seed(0)
    head = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 5, padding=2), nn.ReLU(),
                         nn.Conv2d(8, 2, 3, padding=1))  # receptive radius 1 + 2 + 1 = 4
    image = torch.randn(3, height, width)
    with torch.no_grad():
        whole = head(image[None])[0]
        tiled = stitch(lambda y, x: head(image[None, :, y : y + 24, x : x + 24])[0], height, width, 24, 4)
    assert torch.allclose(tiled, whole, atol=1e-6)


def test_windows_cover_every_pixel_once_in_order() -> None:
    for length in (32, 33, 57, 100):
        spans = kept_spans(length, 32, 6)
        assert spans[0][1] == 0 and spans[-1][2] == length and spans[-1][0] == length - 32
        assert all(a[2] == b[1] for a, b in zip(spans, spans[1:]))  # a partition
        for start, first, stop in spans:  # margin context inside the window, except at the image border
            assert (first == 0 or first - start >= 6) and (stop == length or start + 32 - stop >= 6)
    count = np.zeros((57, 100), dtype=int)
    for t in tiles(57, 100, 32, 6):
        count[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert (count == 1).all()


def test_padding_to_the_window() -> None:
    x = torch.arange(12.0).reshape(1, 3, 4)
    padded = pad_to(x, 9, 5)
    assert padded.shape == (1, 9, 5) and torch.equal(padded[:, :3, :4], x)
