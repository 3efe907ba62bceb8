"""Low-rank adapters (LoRA) for the PPAP students, in the key layout of the released checkpoints.

Two layers wrap an existing module and add a trainable low-rank delta to its frozen weight:

- :class:`LoRAConv2d` (loralib's conv layout): ``lora_A`` is (r*k, in*k) and ``lora_B`` is (out*k, r*k), so
  ``(B @ A).view(W.shape)`` is a full-rank-per-tap delta of the k x k kernel.
- :class:`LoRALinear`: ``lora_A`` (r, in), ``lora_B`` (out, r).

Scale conventions (the delta is multiplied by ``scale``):

- ``"alpha_over_r"``: lora_alpha / r, the LoRA paper's convention; the released conv adapters use it.
- ``"unit"``: 1. The released DeiT-PPAP checkpoints were trained with a linear layer whose forward forgot the
  alpha/r factor, so their factors only reproduce the trained classifier at scale 1.

Both layers default to ``"alpha_over_r"``; :func:`guided_diffusion.ppap.classifiers.add_lora` picks the
released convention per layer type unless told otherwise.
"""

from __future__ import annotations

import abc
import math
from typing import Dict, Iterator, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

SCALE_CONVENTIONS = ("alpha_over_r", "unit")


def lora_scale(r: int, lora_alpha: float, scale_convention: str) -> float:
    """The multiplier of B @ A under a named convention."""
    if scale_convention == "alpha_over_r":
        return lora_alpha / r
    if scale_convention == "unit":
        return 1.0
    raise ValueError(f"unknown LoRA scale convention {scale_convention!r}; "
                     f"choose one of {SCALE_CONVENTIONS}")


class _LoRABase(nn.Module, abc.ABC):
    """Shared bookkeeping: factors, scale, and merging the delta into the wrapped weight.

    Merging replaces the wrapped weight's data by W + delta and keeps the original tensor as a non-persistent
    buffer, so unmerging restores it bit for bit (W + d - d is not W in floating point). While merged,
    ``state_dict`` still reports the unmerged weight, so a checkpoint saved from a merged layer does not
    count the delta twice, and loading a state dict unmerges first.
    """

    r: int
    lora_alpha: float
    scale: float
    scale_convention: str
    kernel_factor: int

    def _init_lora(self, r: int, lora_alpha: float, a_shape: Tuple[int, int], b_shape: Tuple[int, int],
                   scale_convention: str, scale: Optional[float], like: torch.Tensor) -> None:
        if r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {r}")
        self.r = int(r)
        self.lora_alpha = float(lora_alpha)
        if scale is None:
            self.scale = lora_scale(self.r, self.lora_alpha, scale_convention)
            self.scale_convention = scale_convention
        else:
            self.scale = float(scale)
            self.scale_convention = "explicit"
        self.lora_A = nn.Parameter(torch.empty(a_shape, dtype=like.dtype, device=like.device))
        self.lora_B = nn.Parameter(torch.zeros(b_shape, dtype=like.dtype, device=like.device))
        # B = 0 makes the adapted layer start exactly at the pretrained one.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False
        self.register_state_dict_post_hook(_report_unmerged_weight)
        self.register_load_state_dict_pre_hook(_unmerge_before_load)

    # Subclasses name the wrapped module; the base class only needs its weight parameter.
    @abc.abstractmethod
    def _base(self) -> nn.Module:
        ...

    def delta_weight(self) -> torch.Tensor:
        """The scaled low-rank update in the shape of the wrapped weight."""
        weight = self._base().weight
        return (self.lora_B @ self.lora_A).view(weight.shape) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the delta into the wrapped weight (one plain op per forward); idempotent."""
        if self.merged:
            return
        weight = self._base().weight
        self.register_buffer("_unmerged_weight", weight.data, persistent=False)
        weight.data = weight.data + self.delta_weight().to(weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact unmerged weight; idempotent."""
        if not self.merged:
            return
        self._base().weight.data = self._buffers.pop("_unmerged_weight")
        self.merged = False

    def extra_repr(self) -> str:
        return (f"r={self.r}, lora_alpha={self.lora_alpha:g}, scale={self.scale:g} "
                f"({self.scale_convention}), merged={self.merged}")


def _report_unmerged_weight(module: _LoRABase, state_dict: Dict[str, torch.Tensor], prefix: str,
                            local_metadata) -> None:
    if module.merged:
        name = f"{prefix}{module._base_name}.weight"
        state_dict[name] = module._buffers["_unmerged_weight"].detach()


def _unmerge_before_load(module: _LoRABase, state_dict, prefix, local_metadata, strict, missing_keys,
                         unexpected_keys, error_msgs) -> None:
    module.unmerge()


class LoRAConv2d(_LoRABase):
    """A frozen ``nn.Conv2d`` (attribute ``conv``) plus a scaled low-rank update of its kernel."""

    _base_name = "conv"

    def __init__(self, conv: nn.Conv2d, r: int, lora_alpha: float, scale_convention: str = "alpha_over_r",
                 scale: Optional[float] = None):
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"LoRAConv2d wraps an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            # The factor shapes assume a dense (out, in, k, k) kernel; a grouped kernel has in/groups inputs.
            raise ValueError(f"LoRAConv2d supports groups=1 only, this conv has groups={conv.groups}")
        kh, kw = conv.kernel_size
        if kh != kw:
            raise ValueError(f"LoRAConv2d needs a square kernel, got {conv.kernel_size}")
        k = kh
        self.kernel_factor = k
        self._init_lora(r, lora_alpha, (r * k, conv.in_channels * k), (conv.out_channels * k, r * k),
                        scale_convention, scale, conv.weight)
        self.conv = conv

    def _base(self) -> nn.Module:
        return self.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.conv(x)
        # _conv_forward keeps the wrapped conv's stride, padding (and padding mode) and dilation.
        return self.conv._conv_forward(x, self.conv.weight + self.delta_weight(), self.conv.bias)


class LoRALinear(_LoRABase):
    """A frozen ``nn.Linear`` (attribute ``linear``) plus x A^T B^T * scale."""

    _base_name = "linear"

    def __init__(self, linear: nn.Linear, r: int, lora_alpha: float, scale: Optional[float] = None,
                 scale_convention: str = "alpha_over_r"):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(linear).__name__}")
        self.kernel_factor = 1
        self._init_lora(r, lora_alpha, (r, linear.in_features), (linear.out_features, r),
                        scale_convention, scale, linear.weight)
        self.linear = linear

    def _base(self) -> nn.Module:
        return self.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        if self.merged:
            return out
        # Two thin matmuls instead of forming the (out, in) delta: cheaper for r << in, out.
        return out + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale


LoRALayer = (LoRAConv2d, LoRALinear)


def lora_layers(model: nn.Module) -> Iterator[Tuple[str, _LoRABase]]:
    """(qualified name, layer) for every LoRA layer in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer):
            yield name, module


def merge_lora(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.unmerge()


def check_lora_ranks(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise a ValueError naming both ranks when a checkpoint's LoRA factors were trained with another rank.

    A plain strict load would only report a size mismatch of ``lora_A``; the rank is what the user has to
    change (PPAP calls it ``--gamma``).
    """
    for name, layer in lora_layers(model):
        prefix = f"{name}." if name else ""
        for factor in ("lora_A", "lora_B"):
            value = state_dict.get(prefix + factor)
            ours = getattr(layer, factor)
            if value is None or tuple(value.shape) == tuple(ours.shape):
                continue
            rank_axis = 0 if factor == "lora_A" else 1
            other = 1 - rank_axis
            k = layer.kernel_factor
            if value.ndim != 2 or value.shape[other] != ours.shape[other] or value.shape[rank_axis] % k:
                continue  # not explained by the rank alone: leave it to the layout check
            theirs = value.shape[rank_axis] // k
            raise ValueError(
                f"LoRA rank mismatch at {prefix + factor}: the checkpoint has rank {theirs} "
                f"(shape {tuple(value.shape)}), the model was built with rank {layer.r} "
                f"(shape {tuple(ours.shape)}); rebuild the student with r={theirs} (PPAP's --gamma)")
