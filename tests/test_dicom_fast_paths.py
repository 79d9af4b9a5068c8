"""The blocked array passes of the grey-level chain give the chain's values on images of many blocks."""

from __future__ import annotations

import numpy as np

from pipeline.dicom import GreyLevelChain, Window

# 700 x 800 pixels: more than two blocks of rows of the blocked passes
SHAPE = (700, 800)


def test_table_lookup_over_many_blocks_masks_stray_bits():
    rng = np.random.default_rng(3)
    chain = GreyLevelChain(
        bits_stored=12, signed=False, window=Window(center=2000.0, width=900.0, function="SIGMOID")
    )
    raw = rng.integers(0, 1 << 16, size=SHAPE, dtype=np.uint16)  # stray bits above bit 11
    out = chain.apply(raw)
    assert out.dtype == np.float32 and out.shape == SHAPE
    expected = chain.values(raw.astype(np.int64) & 0xFFF)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    # a 1-D input takes the unblocked gather, with the same values
    np.testing.assert_allclose(chain.apply(raw[3]), expected[3], rtol=0, atol=1e-6)


def test_signed_table_lookup_over_many_blocks():
    rng = np.random.default_rng(4)
    chain = GreyLevelChain(
        bits_stored=16, signed=True, window=Window(center=-100.0, width=3000.0, function="SIGMOID")
    )
    raw = rng.integers(-(1 << 15), 1 << 15, size=SHAPE, dtype=np.int16)
    np.testing.assert_allclose(chain.apply(raw), chain.values(raw), rtol=0, atol=1e-6)


def test_numpy_affine_path_over_many_blocks():
    # a narrow window on 16-bit signed pixels: terms too large for OpenCV's float32 pass
    chain = GreyLevelChain(bits_stored=16, signed=True, window=Window(center=40.0, width=400.0))
    assert chain.affine() is not None
    rng = np.random.default_rng(5)
    raw = rng.integers(-600, 700, size=SHAPE, dtype=np.int16)
    out = chain.apply(raw, use_lut=False)
    np.testing.assert_allclose(out, chain.values(raw), rtol=0, atol=1e-6)
    assert 0.0 < out.mean() < 1.0 and out.min() == 0.0 and out.max() == 1.0
