"""Class accuracy of samples: how often a classifier assigns each sample the label it was sampled for."""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from .image_batches import BatchFormatError, NpzBatch
from .stats import class_accuracy


@torch.no_grad()
def sample_class_accuracy(classifier, batch: NpzBatch, *, batch_size: int = 256, timestep: int = 0,
                          takes_time: bool = True) -> Dict[str, float]:
    """Top-1/top-5 accuracy of ``classifier`` on the npz's images (``arr_0``) against its labels (``arr_1``).

    Images go in as ADM models take them, (x / 127.5 - 1) in NCHW; a classifier with a time input (ADM's
    noisy classifier) is queried at ``timestep`` (0: clean).
    """
    if "arr_1" not in batch.keys:
        raise BatchFormatError(f"{batch.path} has no arr_1 labels; class accuracy needs the requested labels "
                               "(classifier_sample.py and class-conditional image_sample.py write them)")
    raw = batch.read("arr_1").reshape(-1)
    if len(raw) != len(batch):
        raise BatchFormatError(f"{batch.path}: {len(raw)} labels for {len(batch)} images")
    if not (np.issubdtype(raw.dtype, np.integer) or (np.issubdtype(raw.dtype, np.floating)
                                                      and np.isfinite(raw).all() and (raw == np.round(raw)).all())):
        raise BatchFormatError(f"{batch.path}: arr_1 holds {raw.dtype} values that are not class indices (e.g. "
                               f"{raw[:3].tolist()}); save the requested classes as integers")
    labels = raw.astype(np.int64)
    device = next(classifier.parameters()).device
    logits = []
    for images in batch.iter_images(batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        x = x.to(device)
        t = torch.full((len(x),), timestep, dtype=torch.long, device=device)
        logits.append((classifier(x, t) if takes_time else classifier(x)).float().cpu())
    logits = torch.cat(logits)
    outside = labels[(labels < 0) | (labels >= logits.shape[1])]
    if len(outside):
        found = sorted(set(outside.tolist()))[:5]
        raise BatchFormatError(f"{batch.path}: {len(outside)} labels in arr_1 are not classes of this classifier "
                               f"(it has {logits.shape[1]}: 0..{logits.shape[1] - 1}; found {found}); judge with "
                               "a classifier of the samples' classes")
    out = class_accuracy(logits, torch.from_numpy(labels))
    out["num_samples"] = int(len(labels))
    out["predicted_class_counts"] = np.bincount(logits.argmax(-1).numpy(), minlength=logits.shape[1]).tolist()
    return out


__all__ = ["sample_class_accuracy"]
