"""The standard library: every pattern LANGUAGE.md names, documented, checked, sensible."""

import numpy as np
import pytest

import attnlang

REQUIRED = [
    "causal", "streaming", "prefix_lm", "document", "dilated", "strided", "alibi", "retention_decay",
    "softcap", "neighborhood2d", "moba", "duo", "sliding_window",
    # named by LANGUAGE.md without a body
    "longformer", "bigbird", "longnet", "swin", "swin_shifted", "halonet", "neighborhood3d",
    "sliding_tile", "radial", "biformer", "cross_causal",
]


@pytest.fixture(scope="module")
def lib():
    return attnlang.stdlib()


def test_every_required_pattern_is_there(lib):
    missing = [name for name in REQUIRED if name not in lib]
    assert not missing


@pytest.mark.parametrize("name", attnlang.stdlib().names())
def test_every_pattern_cites_its_source_and_documents_parameters(lib, name):
    pattern = lib[name]
    assert pattern.doc, f"{name} has no header comment"
    for param in pattern.params:
        assert param in pattern.doc, f"{name}: parameter '{param}' is not explained in its header"


def test_language_md_programs_mean_what_they_say(lib):
    """Spot checks of LANGUAGE.md's own examples at token level."""
    streaming = lib["streaming"].bind(window=3, sinks=1).reference_mask(8, 8)[0]
    assert streaming[7].tolist() == [True, False, False, False, False, True, True, True]
    dilated = lib["dilated"].bind(window=2, dilation=2).reference_mask(8, 8)[0]
    assert dilated[4].tolist() == [False, False, True, False, True, False, True, False]
    prefix = lib["prefix_lm"].bind(prefix=3).reference_mask(5, 5)[0]
    assert prefix[0].tolist() == [True, True, True, False, False]


def test_neighborhood_windows_are_always_full_size(lib):
    pattern = lib["neighborhood2d"].bind(height=9, width=11, kernel=5)
    mask = pattern.reference_mask(99, 99)[0]
    assert (mask.sum(-1) == 25).all()


def test_radial_window_shrinks_with_temporal_distance(lib):
    pattern = lib["radial"].bind(frames=16, frame_tokens=64, min_window=4)
    mask = pattern.reference_mask(1024, 1024)[0]
    assert mask[:, :64].all()  # frame 0 is a sink
    query = 15 * 64 + 32  # last frame, middle of the frame
    keys_per_frame = mask[query].reshape(16, 64).sum(-1)[1:][::-1]  # distance 0, 1, ..., 14
    assert (np.diff(keys_per_frame) <= 0).all() and keys_per_frame[0] == 64 and keys_per_frame[-1] < 16


def test_radial_density_falls_with_length(lib):
    densities = [lib["radial"].bind(frames=f, frame_tokens=32, min_window=2).reference_mask(32 * f, 32 * f).mean()
                 for f in (16, 32, 64)]
    assert densities[0] > densities[1] > densities[2]


def test_bigbird_has_about_random_blocks_per_row(lib):
    pattern = lib["bigbird"].bind(block=8, window_blocks=1, global_blocks=0, random_blocks=3)
    mask = pattern.reference_mask(8 * 64, 8 * 64, heads=4)
    tiles = mask.reshape(4, 64, 8, 64, 8).any(axis=(2, 4))
    off_diagonal = tiles & ~np.eye(64, dtype=bool)
    assert 2.0 < off_diagonal.sum(-1).mean() < 4.0
    assert not (tiles[0] == tiles[1]).all(), "random blocks differ per head"
