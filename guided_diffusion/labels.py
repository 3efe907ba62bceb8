"""Class labels for classifier-free guidance: the null ("no condition") label and training-time label dropout.

Null-label conventions differ by family: VDPM reserves index 0 and feeds class k as k + 1 (multi-tag rows:
the all-zero vector), ADM/DiT-style models reserve index ``num_classes``. Both are a ``null_label`` value here.
"""

from __future__ import annotations

from typing import Optional, Union

import torch


def null_labels_like(labels: torch.Tensor, null_label: Union[int, float] = 0) -> torch.Tensor:
    """The null ("no condition") labels for a batch: ``null_label`` in every entry.

    For multi-tag labels (N, K) with null_label 0 this is the all-zero tag vector (VDPM's CelebA convention).
    """
    return torch.full_like(labels, null_label)


def null_label_fn(null_label: Union[int, float] = 0):
    """``labels -> null_labels_like(labels, null_label)``: the unconditional inputs of classifier-free guidance
    for whatever batch comes (``ClassifierFreeGuidance(..., uncond_kwargs={"y": null_label_fn(0)})``)."""
    return lambda labels: null_labels_like(labels, null_label)


def drop_labels(labels: torch.Tensor, p_uncond: float, null_label: Union[int, float] = 0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Classifier-free training: replace each sample's label by ``null_label`` with probability ``p_uncond``.

    Call it *before* the forward pass so the unconditional branch is trained (VDPM's HEAD masked the labels
    after the forward, which trained nothing). Multi-tag rows (labels of shape (N, K)) are nulled as a whole.
    Which rows drop is decided by N uniform draws from ``generator`` (the global RNG when None); with
    p_uncond = 0 nothing is drawn and the labels are returned unchanged.
    """
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    if p_uncond == 0.0:
        return labels
    device = generator.device if generator is not None else labels.device
    drop = torch.rand(labels.shape[0], generator=generator, device=device).to(labels.device) < p_uncond
    drop = drop.reshape(-1, *([1] * (labels.ndim - 1)))
    return torch.where(drop, null_labels_like(labels, null_label), labels)
