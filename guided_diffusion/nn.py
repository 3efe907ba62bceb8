"""Small neural-network helpers shared by the model families (names as in ADM's ``nn`` module)."""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _torch_checkpoint


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that always computes in float32 and returns the input dtype (keeps fp16 torsos stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class HookPoint(nn.Identity):
    """A named place in a network where activations can be read or replaced (forward hooks on it), e.g. by
    :class:`~guided_diffusion.guidance.injection.FeatureInjection`. It computes nothing and holds no weights,
    so state dicts and checkpoints are unaffected."""


def hook_points(module: nn.Module) -> list:
    """The names of every :class:`HookPoint` inside ``module`` (module paths, e.g.
    ``output_blocks.4.0.hook_out``)."""
    return [name for name, m in module.named_modules() if isinstance(m, HookPoint)]


def normalization(channels: int) -> nn.Module:
    """The normalisation layer every ADM block uses: GroupNorm with 32 groups, computed in float32."""
    return GroupNorm32(32, channels)


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-D, 2-D or 3-D convolution."""
    layers = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
    if dims not in layers:
        raise ValueError(f"unsupported dimensions: {dims} (expected 1, 2 or 3)")
    return layers[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-D, 2-D or 3-D average pooling layer."""
    layers = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
    if dims not in layers:
        raise ValueError(f"unsupported dimensions: {dims} (expected 1, 2 or 3)")
    return layers[dims](*args, **kwargs)


def linear(*args, **kwargs) -> nn.Linear:
    return nn.Linear(*args, **kwargs)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place, so a residual branch starts as the identity."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module: nn.Module, scale: float) -> nn.Module:
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


@torch.no_grad()
def update_ema(target_params: Iterable[torch.Tensor], source_params: Iterable[torch.Tensor],
               rate: float = 0.99) -> None:
    """targ = rate * targ + (1 - rate) * src, in place."""
    for targ, src in zip(target_params, source_params):
        targ.mul_(rate).add_(src, alpha=1 - rate)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
    """Sinusoidal embedding [cos(t*f), sin(t*f)] (cos first) with f = max_period^(-i/half).

    Timesteps may be fractional. An odd ``dim`` gets a trailing zero column.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def checkpoint(func: Callable, inputs: Sequence[torch.Tensor], params: Iterable[torch.Tensor],
               flag: bool):
    """Run ``func(*inputs)``, recomputing its activations in backward when ``flag`` is set.

    ``params`` is accepted for ADM call compatibility; PyTorch's non-reentrant checkpoint tracks
    parameters itself, so gradients with respect to the inputs work even when the parameters are frozen.
    """
    del params
    if flag and torch.is_grad_enabled():
        return _torch_checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


def sdpa_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(ch)) v over heads laid out as (B, H, ch, T); returns (B, H*ch, T).

    The same function as ADM's attention (q and k each scaled by ch^-1/4, softmax in float32),
    computed by ``scaled_dot_product_attention``.
    """
    b, h, ch, length = q.shape
    out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return out.transpose(-1, -2).reshape(b, h * ch, length)
