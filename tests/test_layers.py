"""Modulated convolution: the shared-weight form equals the grouped reference, and stays fp16-safe."""

from __future__ import annotations

import pytest
import torch

from lipstream.models.layers import ModulatedConv2d


@pytest.mark.parametrize(
    ("kernel", "up", "demodulate"),
    [(3, False, True), (3, True, True), (1, False, False), (3, True, False)],
)
def test_shared_weight_form_equals_grouped_form(kernel: int, up: bool, demodulate: bool) -> None:
    torch.manual_seed(0)
    layer = ModulatedConv2d(24, 16, kernel, w_dim=32, demodulate=demodulate, up=up)
    x = torch.randn(3, 24, 8, 12)
    w = torch.randn(3, 32) * torch.tensor([[0.1], [1.0], [10.0]])  # styles of very different size
    with torch.no_grad():
        shared, grouped = layer(x, w), layer.forward_grouped(x, w)
    assert shared.shape == grouped.shape == (3, 16, 16 if up else 8, 24 if up else 12)
    assert (shared - grouped).abs().max() <= 1e-5


def test_demodulated_output_has_unit_scale_whatever_the_style() -> None:
    torch.manual_seed(0)
    layer = ModulatedConv2d(64, 64, 3, w_dim=32)
    x = torch.randn(4, 64, 16, 16)
    with torch.no_grad():
        small, large = layer(x, torch.randn(4, 32) * 1e-3), layer(x, torch.randn(4, 32) * 1e3)
    for out in (small, large):
        assert 0.3 < out.std() < 3.0


def test_pre_demodulation_activations_stay_small_for_huge_styles() -> None:
    """With styles normalised to unit RMS, the activation before demodulation does not grow with the
    style's magnitude, so fp16 (max 65504) has room; the fp16 layer then matches fp32."""
    torch.manual_seed(0)
    layer = ModulatedConv2d(128, 128, 3, w_dim=64)
    peaks = []
    layer.conv.register_forward_hook(lambda _m, _i, out: peaks.append(out.abs().max().item()))
    x = torch.randn(2, 128, 16, 16)
    with torch.no_grad():
        layer(x, torch.randn(2, 64) * 1e6)
        assert max(peaks) < 50, f"pre-demodulation peak {max(peaks)}"
        w = torch.randn(2, 64) * 1e3  # styles near 1e4: their squares overflow fp16 unless handled
        out32 = layer(x, w)
        out16 = layer.half()(x.half(), w.half())
    assert torch.isfinite(out16).all()
    assert (out16.float() - out32).abs().max() < 0.05
