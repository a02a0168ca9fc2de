"""Losses of generator training that need no pretrained network: SSIM / MS-SSIM and the expert's sync loss.

No pretrained VGG can be downloaded here, so the perceptual term of StyleSync's reconstruction loss is
replaced by MS-SSIM (Wang et al. 2003): structure and contrast at several scales, computed in torch so
that it is differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lipstream.models.syncnet import SyncNet

# Per-scale weights of MS-SSIM (Wang et al.), renormalised when fewer scales fit the image.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term per image, for images in [0, 1]. [B] each."""
    c1, c2 = 0.01**2, 0.03**2
    ch = x.shape[1]
    mu_x, mu_y = F.conv2d(x, window, groups=ch), F.conv2d(y, window, groups=ch)
    var_x = F.conv2d(x * x, window, groups=ch) - mu_x**2
    var_y = F.conv2d(y * y, window, groups=ch) - mu_y**2
    cov = F.conv2d(x * y, window, groups=ch) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM of images [B, C, H, W] in [-1, 1] (Gaussian window, valid region). [B]"""
    window = _gaussian_window(window_size, sigma, x.shape[1], x)
    return _ssim_terms((x + 1) / 2, (y + 1) / 2, window)[0]


def ms_ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Multi-scale SSIM of images [B, C, H, W] in [-1, 1], with as many scales (<= 5) as keep the
    smallest image at least as large as the window. [B]"""
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and min(x.shape[-2:]) // 2**scales >= window_size:
        scales += 1
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    window = _gaussian_window(window_size, sigma, x.shape[1], x)
    x, y = (x + 1) / 2, (y + 1) / 2
    result = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    for scale in range(scales):
        full, cs = _ssim_terms(x, y, window)
        term = full if scale == scales - 1 else cs
        # relu keeps the fractional power defined where an untrained generator anti-correlates.
        result = result * F.relu(term).clamp(min=1e-6) ** weights[scale]
        if scale < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return result


def expert_sync_loss(expert: SyncNet, faces: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
    """Wav2Lip's expert loss: -log of the in-sync probability (cosine mapped to (0, 1)) of five
    consecutive faces [B, 5, 3, S, S] and their 0.2 s mel window [B, 1, 80, 16]. Scalar."""
    cosine = expert(expert.visual_input(faces), mel)
    return -torch.log(((cosine + 1) / 2).clamp(min=1e-6)).mean()
