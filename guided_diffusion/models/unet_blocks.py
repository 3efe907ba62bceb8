"""Building blocks of the ADM UNet and its noisy classifier.

Parameter names follow the public guided-diffusion checkpoints exactly (``in_layers.2``, ``emb_layers.1``,
``out_layers.3``, ``qkv``, ``proj_out`` ...), so those files load with ``strict=True``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import HookPoint, avg_pool_nd, checkpoint, conv_nd, linear, normalization, sdpa_heads, zero_module


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        ...


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """Sequential that hands the embedding to the children that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour x2 (inner two dims for 3-D signals), optionally followed by a 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv, or 2x2 average pooling when ``use_conv`` is False."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            if self.channels != self.out_channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding.

    With ``use_scale_shift_norm`` the embedding modulates the second GroupNorm as GN(h)*(1+scale)+shift;
    otherwise it is added before it. ``up``/``down`` resample both branches with parameter-free layers
    placed between the first SiLU and the first conv.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: Optional[int] = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, dims: int = 2,
                 use_checkpoint: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False, dims), Upsample(channels, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False, dims), Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        emb_out = 2 * self.out_channels if use_scale_shift_norm else self.out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)
        self.hook_out = HookPoint()  # the block's output (PnP injects decoder ResBlock features here)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.ndim - emb_out.ndim)))
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.hook_out(self.skip_connection(x) + h)


def split_qkv(qkv: torch.Tensor, num_heads: int, legacy_order: bool):
    """q, k, v of shape (B, H, ch, T) from a fused (B, 3*H*ch, T) projection.

    The two channel layouts have identical parameter shapes but are not interchangeable:
    the legacy order interleaves per head ([q_h, k_h, v_h] for each head h), the new order
    stores all queries, then all keys, then all values.
    """
    b, width, length = qkv.shape
    if width % (3 * num_heads):
        raise ValueError(f"qkv width {width} is not divisible by 3 * num_heads ({num_heads})")
    ch = width // (3 * num_heads)
    if legacy_order:
        return qkv.reshape(b, num_heads, 3 * ch, length).split(ch, dim=2)
    return tuple(part.reshape(b, num_heads, ch, length) for part in qkv.chunk(3, dim=1))


def qkv_attention(qkv: torch.Tensor, num_heads: int, legacy_order: bool) -> torch.Tensor:
    """Multi-head attention over a fused (B, 3*H*ch, T) projection (layouts: see :func:`split_qkv`)."""
    return sdpa_heads(*split_qkv(qkv, num_heads, legacy_order))


class _HookedAttention(nn.Module):
    """Attention over a fused qkv with hook points on the queries, keys and values (PnP injects q and k)."""

    legacy_order = False

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        q, k, v = split_qkv(qkv, self.n_heads, self.legacy_order)
        return sdpa_heads(self.hook_q(q), self.hook_k(k), self.hook_v(v))


class QKVAttentionLegacy(_HookedAttention):
    """Attention with the per-head interleaved qkv layout (``use_new_attention_order=False``)."""

    legacy_order = True


class QKVAttention(_HookedAttention):
    """Attention with the q-then-k-then-v layout (``use_new_attention_order=True``, attention pooling)."""

    legacy_order = False


def heads_for(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Head count: ``channels // num_head_channels`` when that is set (not -1), else ``num_heads``."""
    if num_head_channels == -1:
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into num_heads={num_heads} heads")
        return num_heads
    if channels % num_head_channels:
        raise ValueError(
            f"{channels} channels are not divisible by num_head_channels={num_head_channels}"
        )
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection (keys ``norm``, ``qkv``, ``proj_out``)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_checkpoint: bool = False, use_new_attention_order: bool = False):
        super().__init__()
        self.channels = channels
        self.num_heads = heads_for(channels, num_heads, num_head_channels)
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        attention = QKVAttention if use_new_attention_order else QKVAttentionLegacy
        self.attention = attention(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.attention(self.qkv(self.norm(x)))
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token attends over all positions; returns that token.

    Always uses the new (q, k, v) attention order, whatever order the rest of the network uses.
    """

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads_channels: int,
                 output_dim: Optional[int] = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(embed_dim, spacial_dim ** 2 + 1) / embed_dim ** 0.5
        )
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = heads_for(embed_dim, 1, num_heads_channels)
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)
        if x.shape[-1] + 1 != self.positional_embedding.shape[-1]:
            side = int(round((self.positional_embedding.shape[-1] - 1) ** 0.5))
            raise ValueError(
                f"attention pooling expects a {side}x{side} feature map, got {x.shape[-1]} positions; "
                "the classifier only takes images of the image_size it was built for"
            )
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))
        return x[:, :, 0]
