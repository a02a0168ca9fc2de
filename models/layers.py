"""Building blocks shared by the StyleSync networks (StyleGAN2 conventions).

Weights use the equalised learning rate of StyleGAN: stored as N(0, 1) and scaled by 1/sqrt(fan_in)
at run time. Activations are leaky ReLU(0.2) times sqrt(2), which keeps unit variance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACT_GAIN = math.sqrt(2.0)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU with StyleGAN's variance-preserving gain."""
    return F.leaky_relu(x, 0.2) * ACT_GAIN


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scales x to unit root-mean-square along `dim`."""
    return x * torch.rsqrt(x.square().mean(dim=dim, keepdim=True) + eps)


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate, optionally followed by lrelu."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias_init: float = 0.0,
        activate: bool = False,
        lr_mul: float = 1.0,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        weight = torch.zeros(out_dim, in_dim) if zero_init else torch.randn(out_dim, in_dim) / lr_mul
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, in] -> [B, out]
        out = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return lrelu(out) if self.activate else out


class Blur(nn.Module):
    """Depthwise 4x4 binomial low-pass filter ([1, 3, 3, 1] outer product), StyleGAN2's resampling filter."""

    def __init__(self, channels: int, padding: int, gain: float = 1.0) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
        kernel = torch.outer(taps, taps)
        kernel = kernel / kernel.sum() * gain
        self.register_buffer("kernel", kernel.expand(channels, 1, 4, 4).clone(), persistent=False)
        self.padding = padding
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C, H + 2p - 3, W + 2p - 3]
        return F.conv2d(x, self.kernel, padding=self.padding, groups=self.channels)


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate; `down=True` blurs and then convolves with stride 2."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        down: bool = False,
        bias: bool = True,
        activate: bool = False,
        stride: tuple[int, int] | int = 1,
        padding: tuple[int, int] | int | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.activate = activate
        if down:
            # Blur padding chosen so that blur + stride-2 conv halves H and W exactly.
            self.blur = Blur(in_ch, padding=(4 - 2 + (kernel - 1) + 1) // 2)
            self.stride, self.padding = 2, 0
        else:
            self.blur = None
            self.stride, self.padding = stride, kernel // 2 if padding is None else padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, in, H, W] -> [B, out, H', W']
        if self.blur is not None:
            x = self.blur(x)
        out = F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)
        return lrelu(out) if self.activate else out


class ResDownBlock(nn.Module):
    """StyleGAN2 residual block that halves the resolution: conv, down-conv, plus a 1x1 down skip."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = EqualConv2d(in_ch, in_ch, 3, activate=True)
        self.conv2 = EqualConv2d(in_ch, out_ch, 3, down=True, activate=True)
        self.skip = EqualConv2d(in_ch, out_ch, 1, down=True, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, in, H, W] -> [B, out, H/2, W/2]
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)


class StyleInputConv(nn.Module):
    """The one ordinary convolution inside a modulated convolution, with a weight shared by the batch.

    Its output is the pre-demodulation activation (a forward hook here observes it). With `up=True` it
    is StyleGAN2's upsampling convolution: a stride-2 transposed convolution followed by a blur.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, up: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.scale = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.kernel = kernel
        # x4 gain makes up for the zeros the stride-2 transposed convolution inserts.
        self.blur = Blur(out_ch, padding=1, gain=4.0) if up else None

    def scaled_weight(self) -> torch.Tensor:  # [out, in, k, k]
        return self.weight * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, in, H, W] -> [B, out, H or 2H, W or 2W]
        weight = self.scaled_weight()
        if self.blur is None:
            return F.conv2d(x, weight, padding=self.kernel // 2)
        return self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))


class Modulation(nn.Module):
    """The style path of a modulated convolution: w -> style s, and the demodulation coefficients.

    Its own module so that exporters can find it: an fp16 graph keeps these small [B, C] computations
    (a square, a sum and a reciprocal square root per sample) in fp32.

    fp16 headroom: s is normalised to unit RMS (after dividing by its largest entry, so the RMS itself
    cannot overflow). Demodulation cancels any common scale of s, so the output is unchanged, but the
    pre-demodulation activation conv(x * s, W) then has about the magnitude of x whatever the style's
    magnitude, instead of growing with it.
    """

    def __init__(self, w_dim: int, in_ch: int, demodulate: bool) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)  # StyleGAN2's "A": w -> style s
        self.demodulate = demodulate

    def forward(
        self, w: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # w: [B, w_dim]; weight: [out, in, k, k] the convolution's scaled weight; shift: [B, in] added to
        # the affine's output (a per-sample move of its bias), or None.
        # Returns s: [B, in] and demod: [B, out] (None without demodulation).
        s = self.affine(w) if shift is None else self.affine(w) + shift
        s = s / s.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-4)
        s = normalize_2nd_moment(s)
        if not self.demodulate:
            return s, None
        weight_sq = weight.square().sum(dim=(2, 3))  # [out, in]
        return s, torch.rsqrt(s.square() @ weight_sq.t() + 1e-8)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution, in the shared-weight form that batches and exports.

    out = demod * conv(x * s, W): the input is scaled per sample by its style s, one ordinary
    convolution runs with the shared weight W, and each output channel is scaled by
    demod = 1 / sqrt(sum_{i,k} (W_oik s_i)^2 + eps). This equals convolving with per-sample weights
    W_oik * s_i * demod_o (the grouped form, kept in `forward_grouped` as the readable reference).
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, w_dim: int, demodulate: bool = True, up: bool = False
    ) -> None:
        super().__init__()
        self.modulation = Modulation(w_dim, in_ch, demodulate)
        self.conv = StyleInputConv(in_ch, out_ch, kernel, up)
        self.in_ch, self.out_ch = in_ch, out_ch

    def forward(self, x: torch.Tensor, w: torch.Tensor, style_shift: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, in, H, W] features; w: [B, w_dim] this layer's style vector; style_shift: [B, in] or None.
        s, demod = self.modulation(w, self.conv.scaled_weight(), style_shift)  # [B, in], [B, out]
        out = self.conv(x * s[:, :, None, None])  # [B, out, H', W'] pre-demodulation
        return out if demod is None else out * demod[:, :, None, None]

    def forward_grouped(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Reference form: build each sample's modulated weight and run a grouped convolution."""
        batch, _, height, width = x.shape
        s, _ = self.modulation(w, self.conv.scaled_weight())  # [B, in]
        weight = self.conv.scaled_weight()[None] * s[:, None, :, None, None]  # [B, out, in, k, k]
        if self.modulation.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum(dim=(2, 3, 4)) + 1e-8)[:, :, None, None, None]
        x = x.reshape(1, batch * self.in_ch, height, width)
        k = self.conv.kernel
        if self.conv.blur is None:
            out = F.conv2d(x, weight.reshape(batch * self.out_ch, self.in_ch, k, k), padding=k // 2, groups=batch)
        else:
            weight = weight.transpose(1, 2).reshape(batch * self.in_ch, self.out_ch, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=batch)
            blur = self.conv.blur.kernel[:1].expand(batch * self.out_ch, 1, 4, 4)
            out = F.conv2d(out, blur, padding=1, groups=batch * self.out_ch)
        return out.reshape(batch, self.out_ch, out.shape[-2], out.shape[-1])
