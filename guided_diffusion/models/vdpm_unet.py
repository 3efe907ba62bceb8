"""The v-diffusion UNet of tqch/v-diffusion-torch (``v_diffusion/models/unet.py``), parameter for parameter.

The module tree reproduces the original's key names and shapes, so its ``.pt`` checkpoints (the ``model`` entry,
or ``ema.shadow``) load with strict key checking, and it computes what the original computes:

- time: a fairseq-style sinusoidal embedding of 1000 t (sin then cos, frequencies exp(-k log(1e4) / (half - 1)),
  computed in t's precision: the original's sampler passes float64 t), then Linear(hid -> emb), SiLU,
  Linear(emb -> emb); emb defaults to 4 hid (``embedding_dim``);
- labels, added to the time embedding: single-label data embed y in 0..K (0 = the classifier-free null label,
  k + 1 = class k) as the one-hot of k with the null row dropped, then Linear(K -> emb); multi-tag data (CelebA's
  40 attributes) use Linear(K -> emb) of y / sqrt(max(#tags set, 1));
- residual blocks: GroupNorm(32, eps 1e-6) -> SiLU -> resample -> conv3x3, then (1 + scale) GN(h) + shift from
  Linear(SiLU(emb)) -> SiLU -> dropout -> conv3x3; the skip path resamples (then a 1x1 conv when the width
  changes); h + skip without rescaling. Resampling sits inside the block (BigGAN style): 2x2 average pooling
  down, nearest-neighbour x2 up;
- attention (levels with ``apply_attn``) follows *every* block of the level, the resampling block included,
  so a level's blocks are (res, attn) pairs with keys ``.0.`` and ``.1.``; the middle is res, attn, res;
- the head is GroupNorm -> SiLU -> conv3x3.

Layout: ``downsamples.level_i`` holds num_res_blocks blocks (and a downsampling block except on the last level);
``upsamples.level_i`` holds num_res_blocks + 1 blocks, each taking one skip, then an upsampling block except on
level 0. Attention width: with both ``head_dim`` and ``num_heads`` set it is head_dim * num_heads (the original's
rule; its defaults.json sets num_heads 1, so the published CelebA config attends over 64 channels); with one of
them the other follows from the block's width; with neither, one head.

``use_xformers`` builds the original's xFormers attention layout (Linear ``to_q``/``to_k``/``to_v``/``proj_out``
over the flattened positions). Its checkpoints then load too; the computation, including the original's final
reshape of that path, is reproduced with exact softmax attention. The original's ``resample_with_res=False``
path is not: its strided downsampling conv has no padding, so its skip connections never line up.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

TIME_SCALE = 1000.0
GROUPS, NORM_EPS = 32, 1e-6

# Named sizes (the model sections of the original's configs; "tiny" for tests).
VDPM_UNET_SIZES: Dict[str, Dict] = {
    "tiny": dict(hid_channels=32, ch_multipliers=(1, 2), num_res_blocks=1, apply_attn=(False, True),
                 drop_rate=0.0, num_heads=1),
    "cifar10": dict(hid_channels=256, ch_multipliers=(1, 1, 1), num_res_blocks=3, apply_attn=(False, True, True),
                    drop_rate=0.2, num_heads=1),
    "celeba": dict(hid_channels=192, ch_multipliers=(1, 2, 3, 4), num_res_blocks=3,
                   apply_attn=(False, True, True, True), embedding_dim=768, drop_rate=0.1, head_dim=64,
                   num_heads=1),
}


def lecun_normal_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The original's init: a normal truncated at +-2, times sqrt(scale / fan_in); scale 0 gives zeros."""
    with torch.no_grad():
        nn.init.trunc_normal_(weight, mean=0.0, std=1.0, a=-2.0, b=2.0)
        return weight.mul_(math.sqrt(scale / (weight.shape[1] * math.prod(weight.shape[2:]))))


def _init(layer: Union[nn.Linear, nn.Conv2d], scale: float = 1.0):
    lecun_normal_(layer.weight, scale)
    nn.init.zeros_(layer.bias)
    return layer


def conv(cin: int, cout: int, kernel: int, scale: float = 1.0) -> nn.Conv2d:
    return _init(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), scale)


def linear(cin: int, cout: int, scale: float = 1.0) -> nn.Linear:
    return _init(nn.Linear(cin, cout), scale)


def group_norm(channels: int) -> nn.GroupNorm:
    if channels % GROUPS:
        raise ValueError(f"the v-diffusion UNet normalises with {GROUPS} groups; {channels} channels do not "
                         "split into them (check --hid-channels and --ch-multipliers)")
    return nn.GroupNorm(GROUPS, channels, eps=NORM_EPS)


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = TIME_SCALE) -> torch.Tensor:
    """[sin(s t w_k), cos(s t w_k)] with w_k = exp(-k log(1e4) / (dim / 2 - 1)), in t's float precision (an
    integer t is read as float32), returned as float32; an odd ``dim`` gets a zero last column."""
    t = t.reshape(-1)
    t = scale * (t if t.is_floating_point() else t.float())
    half = dim // 2
    freqs = torch.exp(-torch.arange(half, dtype=t.dtype, device=t.device) * (math.log(10000) / (half - 1)))
    args = torch.outer(t, freqs)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1).float()
    return F.pad(emb, [0, 1]) if dim % 2 else emb


class OneHotNoNull(nn.Module):
    """y in 0..K -> the one-hot of y - 1 over K classes; y = 0 (the null label) -> zeros. No parameters."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = y.long()
        out = F.one_hot((y - 1).clamp(min=0), self.num_classes)
        return (out * (y != 0).unsqueeze(-1)).float()


class ResidualBlock(nn.Module):
    """Adaptive-group-norm residual block with optional resampling inside (see the module docstring)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, drop_rate: float = 0.0, resample: str = "none"):
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = conv(cin, cout, 3)
        self.fc = linear(emb_dim, 2 * cout)
        self.norm2 = group_norm(cout)
        self.conv2 = conv(cout, cout, 3, scale=0.0)
        self.skip = nn.Identity() if cin == cout else conv(cin, cout, 1)
        self.resample = {"none": nn.Identity(), "down": nn.AvgPool2d(2),
                         "up": nn.Upsample(scale_factor=2, mode="nearest")}[resample]
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        skip = self.skip(self.resample(x))
        h = self.conv1(self.resample(F.silu(self.norm1(x))))
        shift, scale = self.fc(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = (1 + scale) * self.norm2(h) + shift
        return self.conv2(self.dropout(F.silu(h))) + skip


def _heads(width: int, head_dim: Optional[int], num_heads: Optional[int]):
    """(head_dim, num_heads) by the original's rule (see the module docstring)."""
    if head_dim is None and num_heads is None:
        num_heads = 1
    if head_dim is None:
        if width % num_heads:
            raise ValueError(f"attention over {width} channels cannot split into {num_heads} heads (--num-heads)")
        head_dim = width // num_heads
    if num_heads is None:
        if width % head_dim:
            raise ValueError(f"attention over {width} channels cannot split into heads of {head_dim} (--head-dim)")
        num_heads = width // head_dim
    return head_dim, num_heads


class AttentionBlock(nn.Module):
    """GN -> 1x1 conv to [q | k | v] (each num_heads * head_dim, head-major) -> softmax(q.k / sqrt(head_dim))
    over all positions -> 1x1 conv back -> residual."""

    def __init__(self, width: int, head_dim: Optional[int] = None, num_heads: Optional[int] = None):
        super().__init__()
        self.head_dim, self.num_heads = _heads(width, head_dim, num_heads)
        inner = self.head_dim * self.num_heads
        self.norm = group_norm(width)
        self.proj_in = conv(width, 3 * inner, 1)
        self.proj_out = conv(inner, width, 1, scale=0.0)

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = self.proj_in(self.norm(x)).reshape(b, 3, self.num_heads, self.head_dim, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, self.num_heads * self.head_dim, h, w)
        return x + self.proj_out(out)


class XFormersAttentionBlock(nn.Module):
    """The original's ``use_xformers`` layout: GN over the flattened positions, Linear q/k/v and output.

    The original applies ``proj_out`` to the per-head output and reshapes (B, 1, HW, C) straight into
    (B, C, H, W), which mixes positions and channels; that is reproduced so its checkpoints compute what they
    computed. It only runs with one head (with more, the original's ``proj_out`` does not fit its input).
    """

    def __init__(self, width: int, head_dim: Optional[int] = None, num_heads: Optional[int] = None):
        super().__init__()
        self.head_dim, self.num_heads = _heads(width, head_dim, num_heads)
        if self.num_heads != 1:
            raise ValueError("the original's xFormers attention block (--use-xformers) only works with one head; "
                             "pass --num-heads 1 (and no --head-dim), or drop --use-xformers")
        inner = self.head_dim
        self.norm = group_norm(width)
        self.to_q, self.to_k, self.to_v = linear(width, inner), linear(width, inner), linear(width, inner)
        self.proj_out = linear(inner, width, scale=0.0)

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, _, h, w = x.shape
        seq = self.norm(x.flatten(start_dim=2)).transpose(1, 2)  # (B, HW, C)
        q, k, v = (f(seq).unsqueeze(1) for f in (self.to_q, self.to_k, self.to_v))  # (B, 1, HW, head_dim)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # xFormers' (B, HW, heads, head_dim)
        out = self.proj_out(out)
        return out.transpose(1, 2).reshape(b, -1, h, w) + x


class ResAttn(nn.Sequential):
    """A residual block followed by attention (keys ``.0.`` and ``.1.``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self[1](self[0](x, emb))


class Middle(nn.Sequential):
    """res, attention, res (keys ``middle.0/1/2``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb)
        return x


class VDiffusionUNet(nn.Module):
    """The original UNet; ``forward(x, t, y)`` with t the continuous time in [0, 1] (see the module docstring).

    :param num_classes: classes (single label) or tags (``multitags``); 0 for an unconditional model.
    :param head_dim, num_heads: None where the original's config leaves them out.
    :param embedding_dim: width of the time (and label) embedding; None: 4 * hid_channels.
    """

    def __init__(self, *, in_channels: int, hid_channels: int, out_channels: int, ch_multipliers: Sequence[int],
                 num_res_blocks: int, apply_attn: Union[bool, Sequence[bool]], embedding_dim: Optional[int] = None,
                 drop_rate: float = 0.0, head_dim: Optional[int] = None, num_heads: Optional[int] = None,
                 num_classes: int = 0, multitags: bool = False, resample_with_res: bool = True,
                 use_xformers: bool = False):
        super().__init__()
        mults = tuple(int(m) for m in ch_multipliers)
        levels = len(mults)
        attn = (bool(apply_attn),) * levels if isinstance(apply_attn, bool) else tuple(bool(a) for a in apply_attn)
        if len(attn) != levels:
            raise ValueError(f"--apply-attn needs one value per level of --ch-multipliers ({levels}), got {len(attn)}")
        if not resample_with_res:
            raise ValueError("resample_with_res=False is not supported: the original's strided downsampling conv "
                             "has no padding, so that model cannot run")
        if num_res_blocks < 1 or num_classes < 0 or (multitags and num_classes == 0):
            raise ValueError("num_res_blocks must be >= 1 and num_classes >= 0 (> 0 for multi-tag labels)")
        self.in_channels, self.out_channels, self.hid_channels = in_channels, out_channels, hid_channels
        self.ch_multipliers, self.apply_attn, self.num_res_blocks = mults, attn, int(num_res_blocks)
        self.embedding_dim = int(embedding_dim or 4 * hid_channels)
        self.num_classes, self.multitags = int(num_classes), bool(multitags)
        self.head_dim, self.num_heads, self.use_xformers = head_dim, num_heads, bool(use_xformers)
        self._block_args = dict(emb_dim=self.embedding_dim, drop_rate=drop_rate)
        emb = self.embedding_dim

        self.time_embed = nn.Sequential(linear(hid_channels, emb), nn.SiLU(), linear(emb, emb))
        if self.num_classes:
            # The multi-tag projection keeps torch's default init, as in the original.
            self.class_embed = (nn.Linear(num_classes, emb) if multitags
                                else nn.Sequential(OneHotNoNull(num_classes), linear(num_classes, emb)))
        self.in_conv = conv(in_channels, hid_channels, 3)
        chs = [hid_channels * m for m in mults]
        self.downsamples = nn.ModuleDict({f"level_{i}": self._down_level(i, chs) for i in range(levels)})
        mid = chs[-1]
        self.middle = Middle(ResidualBlock(mid, mid, **self._block_args), self._attention(mid),
                             ResidualBlock(mid, mid, **self._block_args))
        self.upsamples = nn.ModuleDict({f"level_{i}": self._up_level(i, chs) for i in range(levels)})
        self.out_conv = nn.Sequential(group_norm(chs[0]), nn.SiLU(), conv(chs[0], out_channels, 3, scale=0.0))

    def _attention(self, width: int) -> nn.Module:
        kind = XFormersAttentionBlock if self.use_xformers else AttentionBlock
        return kind(width, head_dim=self.head_dim, num_heads=self.num_heads)

    def _block(self, level: int, cin: int, cout: int, resample: str = "none") -> nn.Module:
        res = ResidualBlock(cin, cout, resample=resample, **self._block_args)
        return ResAttn(res, self._attention(cout)) if self.apply_attn[level] else res

    def _down_level(self, level: int, chs: Sequence[int]) -> nn.ModuleList:
        cin, cout = (chs[level - 1] if level else self.hid_channels), chs[level]
        blocks = [self._block(level, cin, cout)]
        blocks += [self._block(level, cout, cout) for _ in range(self.num_res_blocks - 1)]
        if level != len(chs) - 1:
            blocks.append(self._block(level, cout, cout, "down"))
        return nn.ModuleList(blocks)

    def _up_level(self, level: int, chs: Sequence[int]) -> nn.ModuleList:
        cur = chs[level]
        below = chs[level + 1] if level + 1 < len(chs) else chs[-1]  # what arrives from the deeper level
        skip_last = chs[level - 1] if level else self.hid_channels  # the last skip comes from the level above
        blocks = [self._block(level, below + cur, cur)]
        blocks += [self._block(level, 2 * cur, cur) for _ in range(self.num_res_blocks - 1)]
        blocks.append(self._block(level, skip_last + cur, cur))
        if level != 0:
            blocks.append(self._block(level, cur, cur, "up"))
        return nn.ModuleList(blocks)

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` (N, C, H, W) at continuous times ``t`` (N,) in [0, 1]; ``y`` as in the module docstring."""
        emb = self.time_embed(timestep_embedding(t, self.hid_channels).to(x.dtype))
        if self.num_classes and y is not None:
            if self.multitags:
                if y.ndim != 2 or y.shape[1] != self.num_classes:
                    raise ValueError(f"multi-tag labels must have shape (N, {self.num_classes}), got {tuple(y.shape)}")
                y = y.to(x.dtype)
                y = y / torch.count_nonzero(y, dim=1).clamp(min=1).to(y.dtype).sqrt().unsqueeze(1)
            elif y.dtype.is_floating_point:
                raise ValueError("class labels must be integers (0 = null, k + 1 = class k)")
            emb = emb + self.class_embed(y)
        hs = [self.in_conv(x)]
        for level in range(len(self.ch_multipliers)):
            for block in self.downsamples[f"level_{level}"]:
                hs.append(block(hs[-1], emb))
        h = self.middle(hs[-1], emb)
        for level in reversed(range(len(self.ch_multipliers))):
            for j, block in enumerate(self.upsamples[f"level_{level}"]):
                h = block(torch.cat([h, hs.pop()], dim=1) if j <= self.num_res_blocks else h, emb)
        return self.out_conv(h)


__all__ = ["VDiffusionUNet", "VDPM_UNET_SIZES", "timestep_embedding", "ResidualBlock", "AttentionBlock",
           "XFormersAttentionBlock", "OneHotNoNull", "lecun_normal_", "TIME_SCALE"]
