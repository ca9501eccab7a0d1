"""Known answers of the tiling consistency (ppp_audit/repair.py, issue #28): a model whose features never reach across
a tile's border tiles to 0; a model whose padding gives a tile exactly what its neighbours would tiles to 0 where its
zero-padded twin does not; a planted border bias tiles worse exactly in proportion to its size, measured in the spread
of the features over the images; and a content-independent part added to the features changes nothing (the measure
that divided by the features' own RMS rewarded it: docs/repair.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ppp_audit.models import FeatureTaps
from ppp_audit.repair import tiling_consistency
from ppp_audit.runtime import Normalise

from test_audit import BorderBias, _info

CPU = torch.device("cpu")
SIDE = 32  # 2 x 2 tiles of 16 px


def _consistency(model: nn.Module, pixels: torch.Tensor, layers: list[str]) -> list[float | None]:
    return tiling_consistency(FeatureTaps(model.eval(), layers), [(pixels, torch.zeros(len(pixels)))],
                              normalise=Normalise(_info("tiny", SIDE), CPU), device=CPU)


def _images(count: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def test_features_that_never_cross_a_tile_border_tile_to_zero():
    torch.manual_seed(0)  # patchify convolutions without padding: each output sees one aligned 8 x 8 block
    model = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.Conv2d(8, 8, 2, stride=2))
    assert _consistency(model, _images(), ["0", "2"]) == pytest.approx([0.0, 0.0], abs=1e-6)


@pytest.mark.parametrize("mode, consistent", [("circular", True), ("zeros", False)])
def test_padding_that_gives_a_tile_its_true_neighbours_tiles_to_zero(mode, consistent):
    # An image made of one tile repeated 2 x 2: circular padding of a tile is exactly what its neighbours hold (and
    # the whole image's circular padding the same), so its features stitch without a seam; zeros leave one.
    tile = _images(count=2, seed=1)[..., :SIDE // 2, :SIDE // 2]
    pixels = tile.repeat(1, 1, 2, 2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode=mode), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, padding_mode=mode))
    values = _consistency(model, pixels, ["0", "2"])
    if consistent:
        assert values == pytest.approx([0.0, 0.0], abs=1e-6)
    else:
        assert min(values) > 0.05, values  # a seam of zero-padded borders, one and two pixels wide


@pytest.mark.parametrize("amplitude", [0.1, 0.4])
def test_a_planted_border_bias_tiles_worse_exactly_in_proportion(amplitude):
    # Pointwise layers around a bias on the positions within 2 px of the map's border: the whole image has it at its
    # outer border only, the tiles also along the seams, so the stitched map differs by the amplitude there.
    rings = 2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), BorderBias(amplitude, rings, noise=0.0))
    pixels = _images()
    (measured,) = _consistency(model, pixels, ["1"])
    with torch.no_grad():
        features = model(Normalise(_info("tiny", SIDE), CPU)(pixels))
    whole = BorderBias(1.0, rings, 0.0).mask(SIDE, SIDE)
    tiles = BorderBias(1.0, rings, 0.0).mask(SIDE // 2, SIDE // 2).repeat(2, 2)
    seam = int((tiles - whole).clamp_min(0).sum())  # positions biased in the tiles, not in the whole image
    spread = float(features.double().var(0).mean())  # the bias is the same on every image: σ does not hold it
    assert measured == pytest.approx((amplitude**2 * seam / SIDE**2 / spread) ** 0.5, rel=1e-5)


class Shift(nn.Module):
    """Adds ``scale`` times a fixed, content-independent map to its input (a mean over images grown in training)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * torch.ones_like(x[:1])


def test_a_content_independent_part_of_the_features_changes_nothing():
    torch.manual_seed(0)
    zero_padded = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    values = [_consistency(nn.Sequential(zero_padded, Shift(scale)), _images(), ["1"])[0] for scale in (0.0, 50.0)]
    assert values[0] > 0.05  # the seams are there
    assert values[1] == pytest.approx(values[0], rel=1e-4)  # and a constant on top neither hides nor grows them


def test_features_that_do_not_vary_over_the_images_have_no_tiling_reading():
    constant = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Shift(1.0))
    with torch.no_grad():
        constant[0].weight.zero_()
    assert _consistency(constant, _images(), ["1"]) == [None]
    assert _consistency(nn.Conv2d(3, 4, 3, padding=1), _images(count=1), [""])[0] is None
