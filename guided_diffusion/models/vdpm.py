"""The VDPM networks, chosen by ``--arch``: both take continuous time t in [0, 1] and VDPM's labels.

- ``original``: the v-diffusion UNet itself (:mod:`guided_diffusion.models.vdpm_unet`), with the original's
  parameter names and shapes, so the original's checkpoints and configs load strictly.
- ``adm``: this package's ADM UNet set up to match that design where ADM has the same option: adaptive group
  norm ((1 + scale) * GN(h) + shift, ADM's ``use_scale_shift_norm``), resampling inside residual blocks (BigGAN
  style, ADM's ``resblock_updown``), attention per level and in the middle block. It differs from the original
  in its module names, its normalisation epsilon (1e-5), where attention sits (ADM puts none after a resampling
  block) and its time embedding (ADM's cos-then-sin); its checkpoints are ADM-format state dicts.

Time input: the network is called as ``model(x, t, y)`` with t the continuous time (0 clean, 1 noise), as the
seed's UNet is; it embeds ``TIME_SCALE * t`` = 1000 t with ADM's sinusoidal embedding, which is the seed's
choice and keeps the embedding frequencies in the range ADM's UNet was designed for (train indices 0..999).

Labels (VDPM's convention, kept so the null label is an ordinary input):

- single-label data (``num_classes`` K, ``multitags`` False): y is an int in 0..K, 0 the classifier-free null
  label and k + 1 class k; the embedding has K + 1 rows (the seed's one-hot of k + 1 with index 0 dropped,
  followed by a linear layer, is the same family: a free vector per class plus a bias for null);
- multi-tag data (CelebA's 40 attributes): y is a float {0, 1} vector of K tags, null = all zeros; the
  embedding is Linear(K -> emb)(y / sqrt(max(#tags set, 1))), the seed's normalisation;
- unconditional (``num_classes`` 0): no label input.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .unet import UNetModel
from .vdpm_unet import VDiffusionUNet

TIME_SCALE = 1000.0
# --arch values: the original v-diffusion UNet, or this package's ADM UNet in the same role.
ARCHS = ("original", "adm")
# --model-out-type values (and the original's spellings x_0, epsilon); how they are read is the denoiser's job.
OUT_TYPE_NAMES = ("x0", "eps", "both", "v", "x_0", "epsilon")

# Named sizes: "tiny" for tests, "small" (the training script's defaults) for CPU runs, then the seed's
# published configurations (configs/vdpm/*.json set them).
VDPM_MODEL_SIZES: Dict[str, Dict] = {
    "tiny": dict(hid_channels=32, ch_multipliers=(1, 2), num_res_blocks=1, apply_attn=(False, False),
                 drop_rate=0.0, num_heads=1, head_dim=-1),
    "small": dict(hid_channels=64, ch_multipliers=(1, 2, 2), num_res_blocks=2, apply_attn=(False, True, True),
                  drop_rate=0.1, num_heads=1, head_dim=-1),
    "cifar10": dict(hid_channels=256, ch_multipliers=(1, 1, 1), num_res_blocks=3, apply_attn=(False, True, True),
                    drop_rate=0.2, num_heads=1, head_dim=-1),
    "celeba": dict(hid_channels=192, ch_multipliers=(1, 2, 3, 4), num_res_blocks=3,
                   apply_attn=(False, True, True, True), drop_rate=0.1, num_heads=1, head_dim=64),
}


def parse_int_list(value: Union[str, Sequence[int]], name: str) -> Tuple[int, ...]:
    """``"1,2,2"`` (or a sequence) -> (1, 2, 2); a clear error naming the flag otherwise."""
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.replace(" ", "").split(",") if v != "")
        except ValueError:
            raise ValueError(f"--{name} takes comma-separated integers such as 1,2,2; got {value!r}") from None
    return tuple(int(v) for v in value)


def parse_bool_list(value: Union[str, Sequence], name: str) -> Tuple[bool, ...]:
    """``"0,1,1"`` or ``"false,true,true"`` (or a sequence of bools) -> (False, True, True)."""
    if isinstance(value, str):
        words = {"1": True, "true": True, "t": True, "0": False, "false": False, "f": False}
        items = [v.lower() for v in value.replace(" ", "").split(",") if v != ""]
        bad = [v for v in items if v not in words]
        if bad:
            raise ValueError(f"--{name} takes one 0/1 (or true/false) per level, e.g. 0,1,1; got {value!r}")
        return tuple(words[v] for v in items)
    return tuple(bool(v) for v in value)


class MultiTagEmbedding(nn.Module):
    """Linear(K -> dim) of a {0, 1} tag vector divided by sqrt(number of tags set, at least 1)."""

    def __init__(self, num_tags: int, dim: int):
        super().__init__()
        self.num_tags = num_tags
        self.proj = nn.Linear(num_tags, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.ndim != 2 or y.shape[1] != self.num_tags:
            raise ValueError(f"multi-tag labels must have shape (N, {self.num_tags}), got {tuple(y.shape)}")
        y = y.to(self.proj.weight.dtype)
        count = (y != 0).sum(dim=1, keepdim=True).clamp(min=1).to(y.dtype)
        return self.proj(y / count.sqrt())


class VDPMUNet(UNetModel):
    """ADM's UNet with continuous time and VDPM's labels (see the module docstring).

    :param apply_attn: one bool per level of ``ch_multipliers``: attention after that level's residual blocks.
    :param head_dim: channels per attention head (-1: use ``num_heads`` heads).
    :param num_classes: classes (single label) or tags (``multitags``); 0 for an unconditional model.
    """

    def __init__(self, *, image_size: int, in_channels: int, out_channels: int, hid_channels: int,
                 ch_multipliers: Sequence[int], num_res_blocks: int, apply_attn: Sequence[bool],
                 drop_rate: float = 0.0, num_heads: int = 1, head_dim: int = -1, num_classes: int = 0,
                 multitags: bool = False):
        ch_multipliers, apply_attn = tuple(ch_multipliers), tuple(apply_attn)
        if len(apply_attn) != len(ch_multipliers):
            raise ValueError(f"--apply-attn needs one value per level of --ch-multipliers ({len(ch_multipliers)}), "
                             f"got {len(apply_attn)}")
        if hid_channels % 32 or any((m * hid_channels) % 32 for m in ch_multipliers):
            raise ValueError(f"--hid-channels {hid_channels} times each multiplier must be a multiple of 32 "
                             "(the UNet's group norm uses 32 groups)")
        if num_classes < 0 or (multitags and num_classes == 0):
            raise ValueError(f"num_classes must be >= 0 (and > 0 for multi-tag labels), got {num_classes}")
        factor = 2 ** (len(ch_multipliers) - 1)
        if image_size % factor:
            raise ValueError(f"image size {image_size} cannot be halved {len(ch_multipliers) - 1} times "
                             f"(--ch-multipliers {','.join(map(str, ch_multipliers))})")
        embeddings = None if num_classes == 0 else (num_classes if multitags else num_classes + 1)
        super().__init__(image_size=image_size, in_channels=in_channels, model_channels=hid_channels,
                         out_channels=out_channels, num_res_blocks=num_res_blocks,
                         attention_resolutions=tuple(2 ** i for i, on in enumerate(apply_attn) if on),
                         dropout=drop_rate, channel_mult=ch_multipliers, num_classes=embeddings,
                         num_heads=num_heads, num_head_channels=head_dim, use_scale_shift_norm=True,
                         resblock_updown=True)
        self.multitags = bool(multitags)
        self.num_labels = num_classes  # classes or tags, without the null entry
        if multitags:
            self.label_emb = MultiTagEmbedding(num_classes, hid_channels * 4)

    @property
    def conditional(self) -> bool:
        return self.num_labels > 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` (N, C, H, W) at continuous times ``t`` (N,) in [0, 1]; ``y`` as in the module docstring."""
        if y is not None and not self.multitags and y.dtype.is_floating_point:
            raise ValueError("class labels must be integers (0 = null, k + 1 = class k)")
        return super().forward(x, t.float() * TIME_SCALE, y)


def create_vdpm_model(*, image_size: int, in_channels: int, model_out_type: str, num_classes: int = 0,
                      multitags: bool = False, hid_channels: int, ch_multipliers, num_res_blocks: int, apply_attn,
                      drop_rate: float = 0.0, num_heads: int = 1, head_dim: int = -1, arch: str = "adm",
                      embedding_dim: int = 0, use_xformers: bool = False) -> Union[VDPMUNet, VDiffusionUNet]:
    """The ``arch`` network from flag values (lists may be "1,2" strings); output channels follow
    ``model_out_type`` (twice ``in_channels`` for ``both``, which has an x0 and an eps head).

    ``head_dim`` -1 and (original only) ``num_heads`` 0 mean "not set"; ``embedding_dim`` 0 means 4 *
    hid_channels; ``embedding_dim`` and ``use_xformers`` (the original's xFormers attention layout) need
    ``arch`` original. The original UNet builds for any image size its levels can halve.
    """
    if model_out_type not in OUT_TYPE_NAMES:
        raise ValueError(f"unknown model output type {model_out_type!r}; choose one of "
                         f"{', '.join(OUT_TYPE_NAMES)}")
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    out_channels = 2 * in_channels if model_out_type == "both" else in_channels
    mults = parse_int_list(ch_multipliers, "ch-multipliers")
    if arch == "original":
        factor = 2 ** (len(mults) - 1)
        if image_size % factor:
            raise ValueError(f"image size {image_size} cannot be halved {len(mults) - 1} times "
                             f"(--ch-multipliers {','.join(map(str, mults))})")
        return VDiffusionUNet(in_channels=in_channels, hid_channels=int(hid_channels), out_channels=out_channels,
                              ch_multipliers=mults, num_res_blocks=int(num_res_blocks),
                              apply_attn=parse_bool_list(apply_attn, "apply-attn"),
                              embedding_dim=int(embedding_dim) or None, drop_rate=float(drop_rate),
                              head_dim=None if int(head_dim) <= 0 else int(head_dim),
                              num_heads=None if int(num_heads) <= 0 else int(num_heads),
                              num_classes=int(num_classes), multitags=bool(multitags),
                              use_xformers=bool(use_xformers))
    if use_xformers or int(embedding_dim) not in (0, 4 * int(hid_channels)):
        raise ValueError("--embedding-dim and --use-xformers describe the original UNet; add --arch original")
    if int(num_heads) <= 0 and int(head_dim) <= 0:
        raise ValueError("--arch adm needs --num-heads >= 1 or --head-dim >= 1")
    return VDPMUNet(image_size=image_size, in_channels=in_channels,
                    out_channels=out_channels, hid_channels=int(hid_channels),
                    ch_multipliers=mults,
                    num_res_blocks=int(num_res_blocks), apply_attn=parse_bool_list(apply_attn, "apply-attn"),
                    drop_rate=float(drop_rate), num_heads=int(num_heads), head_dim=int(head_dim),
                    num_classes=int(num_classes), multitags=bool(multitags))


__all__ = ["VDPMUNet", "VDiffusionUNet", "MultiTagEmbedding", "create_vdpm_model", "VDPM_MODEL_SIZES", "ARCHS",
           "TIME_SCALE",
           "parse_int_list", "parse_bool_list"]
