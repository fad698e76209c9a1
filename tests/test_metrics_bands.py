"""Fourier-band relative errors (app.metrics.band_relative_errors / SpectralBandError) and their test-time logging."""

from __future__ import annotations

import math

import pytest
import torch

from app.metrics import BANDS, SpectralBandError, band_masks, band_relative_errors


def _wave(n: int, k: int) -> torch.Tensor:
    x = torch.arange(n) / n
    return torch.cos(2 * math.pi * k * x)


def test_every_frequency_is_in_exactly_one_band_and_the_edges_are_fractions_of_nyquist():
    masks = band_masks((16, 12))
    total = sum(m.int() for m in masks.values())
    assert torch.equal(total, torch.ones(16, 12, dtype=torch.int))
    low, mid, high = (band_masks((16,))[b] for b in BANDS)
    k = torch.fft.fftfreq(16, d=1 / 16).abs()  # |k| on 16 points: Nyquist 8
    assert torch.equal(low, k <= 2) and torch.equal(mid, (k > 2) & (k <= 4)) and torch.equal(high, k > 4)


def test_an_error_at_one_frequency_shows_only_in_its_band():
    n = 32  # Nyquist 16: low |k| <= 4, mid 5..8, high 9..16
    target = (_wave(n, 1) + _wave(n, 6) + _wave(n, 12)).view(1, 1, n)
    for k, band in ((2, "low"), (7, "mid"), (13, "high")):
        err = band_relative_errors(target + 0.1 * _wave(n, k).view(1, 1, n), target)
        assert err[band].item() == pytest.approx(0.1, rel=1e-4)  # the band's one wave of amplitude 1
        assert all(err[b].item() < 1e-5 for b in BANDS if b != band)


def test_band_errors_are_per_sample_then_averaged_and_work_for_complex_2d_fields():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 8, 8, dtype=torch.complex64, generator=g)
    pred = target.clone()
    pred[0] = 0  # sample 0: every band entirely wrong; sample 1 exact
    metric = SpectralBandError("mid")
    metric.update(pred, target)
    assert metric.compute().item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="band='top'"):
        SpectralBandError("top")


def test_the_module_logs_the_band_errors_of_every_test_set():
    from app.models import FNO
    from app.module import OperatorModule

    module = OperatorModule(FNO(n_modes=(4, 4), hidden_channels=4, n_layers=1))
    keys = set(module._test_collection("res16").keys())
    assert {f"test_band/{b}_res16" for b in BANDS} <= keys and "test/l2_res16" in keys
