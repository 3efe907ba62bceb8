"""The ADM UNet (Dhariwal & Nichol, 2021), its super-resolution variant and its noisy-classifier encoder.

State dicts are those of the public guided-diffusion checkpoints: the module tree below reproduces their
key names and shapes, so ``load_state_dict(strict=True)`` accepts them. Blocks are in ``unet_blocks``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import conv_nd, linear, normalization, timestep_embedding, zero_module
from .unet_blocks import (
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
)

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Channel multipliers of the published models, by image size (ADM's flags use them when channel_mult is "").
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def convert_module_to_f16(module: nn.Module) -> None:
    """Cast a conv layer's weight and bias to float16 (ADM's fp16 scope: convs only)."""
    if isinstance(module, CONV_TYPES):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def convert_module_to_f32(module: nn.Module) -> None:
    """Undo ``convert_module_to_f16``."""
    if isinstance(module, CONV_TYPES):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()


class _Torso(nn.Module):
    """The encoder half shared by the UNet and the classifier: time embedding, input and middle blocks."""

    def _build_encoder(self, image_size: int, in_channels: int, model_channels: int, num_res_blocks: int,
                       attention_resolutions: Sequence[int], dropout: float, channel_mult: Sequence[float],
                       conv_resample: bool, dims: int, use_checkpoint: bool, num_heads: int,
                       num_head_channels: int, use_scale_shift_norm: bool, resblock_updown: bool,
                       use_new_attention_order: bool) -> Tuple[int, list, int]:
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.dropout = dropout
        self.channel_mult = tuple(channel_mult)
        self.use_checkpoint = use_checkpoint
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim)
        )
        self._res = dict(emb_channels=time_embed_dim, dropout=dropout, dims=dims,
                         use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm)
        self._attn = dict(use_checkpoint=use_checkpoint, num_head_channels=num_head_channels,
                          use_new_attention_order=use_new_attention_order)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))]
        )
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, out_channels=int(mult * model_channels), **self._res)]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=num_heads, **self._attn))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = (ResBlock(ch, out_channels=ch, down=True, **self._res) if resblock_updown
                        else Downsample(ch, conv_resample, dims=dims, out_channels=ch))
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, **self._res),
            AttentionBlock(ch, num_heads=num_heads, **self._attn),
            ResBlock(ch, **self._res),
        )
        return ch, skip_channels, ds

    @property
    def dtype(self) -> torch.dtype:
        """The torso's compute dtype: float16 after ``convert_to_fp16``, else float32."""
        return self.input_blocks[0][0].weight.dtype

    def _check_input(self, x: torch.Tensor) -> None:
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.ndim < 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (N, {self.in_channels}, ...), got {tuple(x.shape)}")
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} cannot pass {len(self.channel_mult) - 1} downsamplings: "
                f"each side must be a multiple of {factor} (this model was built for {self.image_size}px)"
            )

    def _torso_modules(self) -> list:
        return [self.input_blocks, self.middle_block]

    def convert_to_fp16(self) -> None:
        """Run the torso's convolutions in float16; Linear layers, GroupNorm and the head stay float32."""
        for module in self._torso_modules():
            module.apply(convert_module_to_f16)

    def convert_to_fp32(self) -> None:
        for module in self._torso_modules():
            module.apply(convert_module_to_f32)


class UNetModel(_Torso):
    """The ADM diffusion UNet.

    :param attention_resolutions: downsample rates (1, 2, 4, ...) at which attention is used.
    :param channel_mult: channel multiplier per level; there are len(channel_mult)-1 downsamplings.
    :param num_classes: if set, the model is class-conditional with a label embedding added to the time
        embedding.
    :param num_heads_upsample: heads in the output blocks (-1: same as num_heads).
    :param use_new_attention_order: q,k,v layout of the fused attention projection; must match the checkpoint.
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], dropout: float = 0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True, dims: int = 2,
                 num_classes: Optional[int] = None, use_checkpoint: bool = False, use_fp16: bool = False,
                 num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.num_heads_upsample = num_heads_upsample
        self.use_fp16 = use_fp16
        ch, skip_channels, ds = self._build_encoder(
            image_size, in_channels, model_channels, num_res_blocks, attention_resolutions, dropout,
            channel_mult, conv_resample, dims, use_checkpoint, num_heads, num_head_channels,
            use_scale_shift_norm, resblock_updown, use_new_attention_order)
        input_ch = int(channel_mult[0] * model_channels)
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, model_channels * 4)

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip = skip_channels.pop()
                layers = [ResBlock(ch + skip, out_channels=int(model_channels * mult), **self._res)]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=num_heads_upsample, **self._attn))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, out_channels=ch, up=True, **self._res) if resblock_updown
                                  else Upsample(ch, conv_resample, dims=dims, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(conv_nd(dims, input_ch, out_channels, 3, padding=1))
        )

    def _torso_modules(self) -> list:
        return [self.input_blocks, self.middle_block, self.output_blocks]

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """Predict from a noisy batch ``x`` (N, C, ...) at ``timesteps`` (N,) (original train indices)."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError(
                "this UNet is class-conditional: pass y (labels)" if y is None
                else "this UNet is unconditional: do not pass y (or build it with class_cond=True)"
            )
        self._check_input(x)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)

        hs = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


class SuperResModel(UNetModel):
    """A UNet conditioned on a low-resolution image, upsampled bilinearly and concatenated to x."""

    def __init__(self, image_size: int, in_channels: int, *args, **kwargs):
        super().__init__(image_size, in_channels * 2, *args, **kwargs)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, low_res: Optional[torch.Tensor] = None,
                **kwargs) -> torch.Tensor:
        if low_res is None:
            raise ValueError("SuperResModel needs low_res (the low-resolution image batch)")
        upsampled = F.interpolate(low_res, x.shape[2:], mode="bilinear")
        return super().forward(torch.cat([x, upsampled], dim=1), timesteps, **kwargs)


class EncoderUNetModel(_Torso):
    """The noisy classifier: the UNet's encoder half followed by a pooling head.

    :param pool: "adaptive" (global average + 1x1 conv), "attention" (attention pooling; needs
        num_head_channels), "spatial" or "spatial_v2" (MLP over the spatial means of every block).
    """

    POOLS = ("adaptive", "attention", "spatial", "spatial_v2")

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], dropout: float = 0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True, dims: int = 2,
                 use_checkpoint: bool = False, use_fp16: bool = False, num_heads: int = 1,
                 num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False, pool: str = "adaptive"):
        super().__init__()
        if pool not in self.POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of {', '.join(self.POOLS)}")
        self.out_channels = out_channels
        self.use_fp16 = use_fp16
        self.pool = pool
        ch, skip_channels, ds = self._build_encoder(
            image_size, in_channels, model_channels, num_res_blocks, attention_resolutions, dropout,
            channel_mult, conv_resample, dims, use_checkpoint, num_heads, num_head_channels,
            use_scale_shift_norm, resblock_updown, use_new_attention_order)
        feature_size = sum(skip_channels) + ch  # the spatial pools read every input block and the middle
        if pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(conv_nd(dims, ch, out_channels, 1)), nn.Flatten(),
            )
        elif pool == "attention":
            if num_head_channels == -1:
                raise ValueError("pool='attention' needs num_head_channels (e.g. 64)")
            self.out = nn.Sequential(
                normalization(ch), nn.SiLU(),
                AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels),
            )
        elif pool == "spatial":
            self.out = nn.Sequential(
                nn.Linear(feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels)
            )
        else:
            self.out = nn.Sequential(
                nn.Linear(feature_size, 2048), normalization(2048), nn.SiLU(), nn.Linear(2048, out_channels)
            )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Class logits for a noisy batch ``x`` at ``timesteps`` (original train indices)."""
        self._check_input(x)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        spatial = self.pool.startswith("spatial")
        means = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            if spatial:
                means.append(h.type(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            means.append(h.type(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(means, dim=-1))
        return self.out(h.type(x.dtype))
