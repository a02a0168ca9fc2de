"""Losses of generator training: SSIM / MS-SSIM in torch, and the expert's sync loss."""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity

from lipstream.models.syncnet import SyncNet
from lipstream.training.losses import expert_sync_loss, ms_ssim, ssim


def _images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(2, 3, 64, 128, generator=generator)
    smooth = torch.nn.functional.avg_pool2d(base, 5, stride=1, padding=2) * 2 - 1  # textured, in [-1, 1]
    noisy = (smooth + 0.2 * torch.randn(smooth.shape, generator=generator)).clamp(-1, 1)
    return smooth, noisy


def test_ssim_matches_scikit_image_on_the_same_gaussian_window() -> None:
    x, y = _images()
    ours = ssim(x, y)
    for i in range(2):
        a, b = ((x[i] + 1) / 2).permute(1, 2, 0).numpy(), ((y[i] + 1) / 2).permute(1, 2, 0).numpy()
        theirs = structural_similarity(
            a, b, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        # scikit-image averages over a crop of the full-size map, ours over the valid region: close, not equal.
        assert abs(float(ours[i]) - theirs) < 0.02


def test_ms_ssim_is_one_for_identical_images_lower_for_damaged_ones_and_differentiable() -> None:
    x, y = _images()
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-5)
    worse = (y + 0.3 * torch.randn_like(y)).clamp(-1, 1)
    assert torch.all(ms_ssim(x, worse) < ms_ssim(x, y)) and torch.all(ms_ssim(x, y) < 1)
    y = y.clone().requires_grad_(True)
    (1 - ms_ssim(x, y).mean()).backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    # Steps against the gradient raise MS-SSIM: the loss pulls towards the target.
    improved = (y - 50 * y.grad).detach().clamp(-1, 1)
    assert torch.all(ms_ssim(x, improved) > ms_ssim(x, y.detach()))


def test_ms_ssim_of_anticorrelated_images_stays_finite() -> None:
    x, _ = _images()
    value = ms_ssim(x, -x)
    assert torch.isfinite(value).all() and torch.all(value < 0.1)


def test_expert_sync_loss_is_minus_log_of_the_in_sync_probability() -> None:
    torch.manual_seed(0)
    expert = SyncNet().eval()
    faces = torch.randn(4, 5, 3, 128, 128).clamp(-1, 1)
    mel = torch.randn(4, 1, 80, 16)
    with torch.no_grad():
        loss = expert_sync_loss(expert, faces, mel)
        cosine = expert(expert.visual_input(faces), mel)
    assert np.isclose(float(loss), float(-torch.log((cosine + 1) / 2).mean()), rtol=1e-5)
    assert float(loss) > 0


def test_a_stop_signal_is_noted_not_fatal_and_the_old_handler_comes_back() -> None:
    import os
    import signal

    from lipstream.training.stopping import StopRequest

    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested, "the loop sees the request and saves its checkpoint before leaving"
    assert signal.getsignal(signal.SIGTERM) is before
