"""Inference normalisation modes, applied to a copy of a trained generator.

- ``instance``: every BatchNorm normalises each tile with that tile's own statistics, using the BN
  affine parameters (what the public pix2pix test script does with batch size 1).
- ``running``: BatchNorm uses its running statistics (``eval()``).

In both modes each sample is normalised on its own, so a tile's output never depends on which other
tiles share its batch. Dropout is off unless asked for. The training module is never mutated.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NORM_MODES = ("instance", "running")


def per_tile_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """Instance norm of (N, C, H, W) ``x`` (each sample and channel by its own H, W statistics), then the affine.

    Equal to ``F.instance_norm`` but keeps ``x``'s memory format: ``F.instance_norm`` makes its input contiguous,
    which undoes channels_last at every norm layer. Statistics are float32 whatever ``x``'s dtype (as cuDNN's norm
    kernels do); the result has ``x``'s dtype. The normalisation and the affine are one pass per channel,
    ``x * scale + shift``.
    """
    # Not F.group_norm (a group per channel), though its CPU kernel keeps channels_last and is much faster: its
    # sums depend on the batch size and the thread count, and a tile's output must not (batches, splits, bbox).
    if x.dtype != torch.float32:
        return _per_tile_norm_low(x, weight, bias, eps)
    var, mean = torch.var_mean(x, dim=(2, 3), correction=0, keepdim=True)
    return _normalise(x, mean, var, weight, bias, eps)


def _normalise(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None,
               bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` as one float32 pass ``x * scale + shift`` (float32 (N, C,
    1, 1) statistics), in ``x``'s dtype."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.float().reshape(1, -1, 1, 1)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.float().reshape(1, -1, 1, 1)
    return torch.addcmul(shift, x, scale).to(x.dtype)


def _per_tile_norm_low(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``per_tile_norm`` of bf16/fp16 ``x`` without copying it to float32 (that copy and the float32 passes over
    it cost bf16 on the CPU about 15 % of the generator's time). Statistics are float32; the affine reads ``x``
    itself, in float32, rounded once at the end."""
    n, c, h, w = x.shape
    if x.device.type != "cpu":
        mean, var = _centred_statistics(x)
        return _normalise(x, mean, var, weight, bias, eps)
    mean, var = (_plane_statistics_cpu(x) if x.dtype == torch.bfloat16 and h * w > 1
                 else (t.view(n, c) for t in _centred_statistics(x)))
    # The CPU's batch_norm kernel reads bf16, computes in float32 and writes bf16 in one pass; one sample at a time
    # with that sample's statistics, so nothing depends on the batch.
    weight32, bias32 = (None if t is None else t.float() for t in (weight, bias))
    out = torch.empty_like(x)
    for i in range(n):
        out[i:i + 1] = F.batch_norm(x[i:i + 1], mean[i], var[i], weight32, bias32, False, 0.0, eps)
    return out


def _centred_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (N, C, 1, 1) mean and variance of low-precision ``x``. The variance is the float32 mean square of
    ``x`` centred on its mean rounded to ``x``'s dtype, so E[x^2] - E[x]^2 has no cancellation where the mean is
    many deviations from zero (the centring rounds too, but only relative to the deviations)."""
    mean = torch.mean(x, dim=(2, 3), keepdim=True, dtype=torch.float32)
    centre = mean.to(x.dtype)
    offset = mean - centre.float()  # the centred values' mean
    root_sum_sq = torch.linalg.vector_norm(x - centre, 2, dim=(2, 3), keepdim=True, dtype=torch.float32)
    return mean, (root_sum_sq.square() / (x.shape[2] * x.shape[3]) - offset.square()).clamp_(min=0.0)


def _plane_statistics_cpu(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (N, C) mean and (biased) variance of each plane of bf16 ``x`` (H * W > 1), without the
    reductions over H, W of channels_last bf16, which crawl on a CPU: the norms of a batch of 8 take 32 ms instead
    of 76 (ngf 64).

    Each (n, c) plane becomes a channel of a contiguous (1, N * C, H, W) view, whose batch-norm statistics the CPU
    sums per channel in float32 running sums (the mean, then the squares centred on it, so no cancellation where
    the mean is far from zero), each plane in one fixed order: the same bits whatever the batch or the thread
    count. (The channels_last kernel would split a plane across threads.) Inference only: no gradient flows
    through these statistics."""
    n, c, h, w = x.shape
    running_mean = torch.zeros(n * c, dtype=torch.float32, device=x.device)  # required by the op; receives the mean
    running_var = torch.ones(n * c, dtype=torch.float32, device=x.device)
    mean, var = torch.batch_norm_update_stats(x.contiguous().view(1, n * c, h, w), running_mean, running_var, 1.0)
    return mean.view(n, c), var.view(n, c)


class _PerTileBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose statistics are each sample's own (instance norm with the BN affine)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_tile_norm(x, self.weight, self.bias, self.eps)


class _AlwaysOnDropout(nn.Dropout):
    """Dropout that stays active in eval mode (the public pix2pix test-time behaviour, opt-in)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, training=True)


def _swap_modules(module: nn.Module, norm_mode: str, dropout: bool) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and norm_mode == "instance":
            replacement = _PerTileBatchNorm(child.num_features, eps=child.eps, affine=child.affine)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        elif isinstance(child, nn.Dropout) and dropout:
            setattr(module, name, _AlwaysOnDropout(child.p))
        else:
            _swap_modules(child, norm_mode, dropout)


class InferenceGenerator(nn.Module):
    """A generator prepared for inference: [-1, 1] NCHW in, [-1, 1] NCHW out, no gradients."""

    def __init__(self, net: nn.Module, norm_mode: str, dropout: bool = False) -> None:
        super().__init__()
        if norm_mode not in NORM_MODES:
            raise ValueError(f"unknown norm mode {norm_mode!r}; expected one of {', '.join(NORM_MODES)}")
        net = copy.deepcopy(net)
        _swap_modules(net, norm_mode, dropout)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self.norm_mode = norm_mode
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def prepare_for_inference(net: nn.Module, norm_mode: str, dropout: bool = False) -> InferenceGenerator:
    return InferenceGenerator(net, norm_mode, dropout)


def with_low_precision_convolutions(model: InferenceGenerator, dtype: torch.dtype) -> InferenceGenerator:
    """A copy of ``model`` whose convolution weights and biases are ``dtype`` (bf16/fp16), to be called with
    ``dtype`` input: what autocast computes, without casting every weight at every call. Norm parameters stay
    float32 (the norms compute in float32 and return ``dtype``)."""
    cast: dict[int, nn.Parameter] = {}  # deepcopy's memo: the copy takes these instead of fp32 copies (no transient)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            for param in module.parameters(recurse=False):
                cast[id(param)] = nn.Parameter(param.detach().to(dtype), requires_grad=False)
    return copy.deepcopy(model, cast)  # type: ignore[arg-type]


class _PackedConvolution(nn.Module):
    """A CPU Conv2d / ConvTranspose2d whose weight oneDNN reordered once into its own blocked layout. The plain
    module hands oneDNN the weight in PyTorch's layout and oneDNN reorders it at every call: about 8 % of the
    bf16 generator's time at batch 8 on this project's CPU (``ONEDNN_VERBOSE``), for the same results (checked
    on a probe when built). Its opaque weight cannot be deep-copied, moved (``.to()``) or saved: pack last."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
        super().__init__()
        ops = torch.ops.mkldnn
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        self.geometry: tuple[Any, ...] = (
            list(conv.padding), *([list(conv.output_padding)] if self.transposed else []),
            list(conv.stride), list(conv.dilation), conv.groups)
        reorder = ops._reorder_convolution_transpose_weight if self.transposed else ops._reorder_convolution_weight
        # Plain attributes, not parameters: an opaque oneDNN tensor must stay out of .to() and state_dict().
        self.packed_weight = reorder(conv.weight.detach(), *self.geometry)
        self.bias = None if conv.bias is None else conv.bias.detach()
        probe = torch.randn(1, conv.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))  # not the global RNG
        probe = probe.to(conv.weight.dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():  # bit for bit, or the layer stays plain (e.g. where plain bf16 skips oneDNN)
            if not torch.equal(self(probe), conv(probe)):
                raise RuntimeError("the packed convolution disagrees with the plain one")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.mkldnn
        run = ops._convolution_transpose_pointwise if self.transposed else ops._convolution_pointwise
        return run(x, self.packed_weight, self.bias, *self.geometry, "none", [], "")


def pack_convolutions_for_cpu(model: nn.Module) -> int:
    """Replace, in place, every convolution of a CPU inference ``model`` that oneDNN runs by a
    ``_PackedConvolution``; returns how many. These are PyTorch's internal oneDNN ops (what torch.compile's
    freezing uses): where a build lacks them or refuses a layer, that layer stays as it was."""
    packed = 0
    for name, child in list(model.named_children()):
        if (isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)) and child.weight.device.type == "cpu"
                and child.padding_mode == "zeros"):  # oneDNN pads with zeros only (seed-unet's reflect stays)
            try:
                replacement = _PackedConvolution(child)
            except (AttributeError, RuntimeError, NotImplementedError):  # no oneDNN, or not for this layer
                continue
            setattr(model, name, replacement)
            packed += 1
        else:
            packed += pack_convolutions_for_cpu(child)
    return packed
