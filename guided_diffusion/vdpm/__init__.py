"""The v-objective family (VDPM): what its scripts share (flags -> model and process, labels, seeded sampling,
checkpoint hints, metrics); its training loop is :mod:`guided_diffusion.vdpm.training`, the original's configs and
checkpoints (and where its 2023 and 2024 versions differ) :mod:`guided_diffusion.vdpm.original`.

The network is chosen by the ``arch`` flag: ``original`` (the original's UNet, its parameter names and shapes,
:mod:`guided_diffusion.models.vdpm_unet`) or ``adm`` (this package's ADM UNet in its place); a run's flags.json
written before that flag existed means ``adm`` (``MODEL_FLAG_DEFAULTS``).

Labels follow the seed: class k is stored as k + 1 and 0 is the classifier-free null label; CelebA's 40 tags
are a {0, 1} vector whose null is all zeros. Data sets yield 0-based classes; :func:`model_labels` shifts them.
In sample files (``arr_1``) classes are 0-based, as in ADM's npz, and a tag vector is stored as the int64
bit mask sum_j tag_j 2^j.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch

from ..data import VDPM_DATASET_INFO
from ..denoisers import Denoiser
from ..diffusion.continuous import ContinuousDiffusion
from ..guidance.cfg import ClassifierFreeGuidance
from ..labels import null_label_fn
from ..metrics.evaluate import compute_activations
from ..metrics.stats import frechet_distance, precision_recall
from ..models.vdpm import VDPMUNet, VDiffusionUNet, create_vdpm_model
from ..samplers import sample_ancestral, sample_ddim
from ..sample_writer import to_uint8
from ..sampling import BatchFn, ClassLabels, LabelMode, TagRows, make_batch_sampler, tag_bits

MODEL_FLAGS = ("arch", "hid_channels", "ch_multipliers", "num_res_blocks", "apply_attn", "drop_rate", "num_heads",
               "head_dim", "embedding_dim", "use_xformers")
# What a flags.json written before these flags existed means by their absence (the ADM UNet was the only one).
MODEL_FLAG_DEFAULTS = {"arch": "adm", "embedding_dim": 0, "use_xformers": False}
DIFFUSION_FLAGS = ("logsnr_schedule", "logsnr_min", "logsnr_max", "train_timesteps", "sample_timesteps",
                   "model_out_type", "model_var_type", "intp_frac", "reweight_type", "loss_type")
# What fixes the network's shape: a checkpoint loads only into a model built from the same values.
NETWORK_FLAGS = ("dataset", "image_size", "use_cfg", "model_out_type") + MODEL_FLAGS
# The flags a run's flags.json must hold for its model to be rebuilt.
REQUIRED_FLAGS = tuple(k for k in NETWORK_FLAGS + DIFFUSION_FLAGS if k not in MODEL_FLAG_DEFAULTS)
DEFAULT_CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs" / "vdpm")
# The original's fill-in values for its configs (its configs/defaults.json).
DEFAULTS_CONFIG = str(Path(DEFAULT_CONFIG_DIR) / "defaults.json")
# A checkpoint that does not fit is explained in these flags (ADM's name -> VDPM's; None: no VDPM flag says it).
CHECKPOINT_FLAG_NAMES = {"num_channels": "hid-channels", "num_res_blocks": "num-res-blocks",
                         "channel_mult": "ch-multipliers", "class_cond": "use-cfg", "num_classes": None,
                         "learn_sigma": None, "attention_resolutions": None, "use_scale_shift_norm": None,
                         "resblock_updown": None, "image_size": "image-size"}
NULL_LABEL = 0


# ---------------------------------------------------------------------------------------------- model, process
def dataset_image_size(flags: Dict) -> int:
    """--image-size, or the data set's native size when it is 0."""
    size = int(flags.get("image_size") or 0)
    return size or VDPM_DATASET_INFO[flags["dataset"]].image_size


def model_from_flags(flags: Dict) -> Union[VDPMUNet, VDiffusionUNet]:
    """The ``arch`` network for ``flags`` (a dict of flag values): conditional exactly when ``use_cfg`` is set."""
    info = VDPM_DATASET_INFO[flags["dataset"]]
    return create_vdpm_model(image_size=dataset_image_size(flags), in_channels=info.in_channels,
                             model_out_type=flags["model_out_type"],
                             num_classes=info.num_classes if flags["use_cfg"] else 0, multitags=info.multilabel,
                             **{k: flags.get(k, MODEL_FLAG_DEFAULTS.get(k)) for k in MODEL_FLAGS})


def diffusion_from_flags(flags: Dict, **overrides) -> ContinuousDiffusion:
    """The continuous log-SNR process of ``flags`` (``overrides`` replace single values, e.g. sample_timesteps)."""
    values = {k: flags[k] for k in DIFFUSION_FLAGS}
    values.update(overrides)
    return ContinuousDiffusion(**values)


def model_labels(labels: torch.Tensor, multitags: bool) -> torch.Tensor:
    """Data-set labels as the model takes them: class k -> k + 1 (0 is null); tag vectors unchanged (float)."""
    return labels.float() if multitags else labels.long() + 1


# Multi-tag rows are stored in sample files as bit masks (bit j = tag j).
tags_to_int = tag_bits


def vdpm_batch_sampler(model, diffusion: ContinuousDiffusion, *, shape: Tuple[int, int, int], num_classes: int = 0,
                       multitags: bool = False, labels: LabelMode = "random", tag_rows: Optional[torch.Tensor] = None,
                       w_guide: float = 0.0, guidance: str = "posterior_mean", use_ddim: bool = False,
                       eta: float = 0.0, num_steps: Optional[int] = None, device=None, progress: bool = False
                       ) -> BatchFn:
    """VDPM's recipe for the one seeded batch sampler: ``seeds -> (uint8 NHWC RGB images, labels or None)``.

    Sample i draws from the generator of its seed: its starting noise, then its label (a class in
    0..num_classes-1, or a row of ``tag_rows`` for multi-tag models), then each step's noise. ``labels``:
    "random" keeps the drawn class, "cycle" uses seed % num_classes, a list L uses L[seed % len(L)], "null" feeds
    the null label (0, or all-zero tags: the unconditional branch) and returns no labels; the label is drawn in
    every mode, so a seed's noise does not depend on the mode. ``num_classes`` 0: an unconditional model.
    Classes are stored 0-based and fed to the model as k + 1; tag rows are stored as bit masks.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    conditions = None
    if num_classes and multitags:
        conditions = TagRows(tag_rows, null=labels == "null", num_tags=num_classes)
    elif num_classes:
        conditions = ClassLabels(num_classes, labels, to_model=lambda c: model_labels(c, False),
                                 null_label=NULL_LABEL)
    null = labels == "null" or not num_classes
    denoiser = vdpm_denoiser(diffusion, model, w_guide=0.0 if null else w_guide, guidance=guidance)
    trajectory = diffusion.trajectory(num_steps)
    if use_ddim:
        sampler = functools.partial(sample_ddim, eta=eta, clip_denoised=True)
    else:
        sampler = functools.partial(sample_ancestral, variance=diffusion.model_var_type,
                                    intp_frac=diffusion.intp_frac, clip_denoised=True)
    return make_batch_sampler(denoiser, trajectory, sampler, shape=shape, device=device, conditions=conditions,
                              progress=progress)


# ---------------------------------------------------------------------------------------------- sampling
def vdpm_denoiser(diffusion: ContinuousDiffusion, model, *, w_guide: float = 0.0,
                  null_label: Union[int, float] = NULL_LABEL, label_key: str = "y", guidance: str = "posterior_mean",
                  clip_denoised: bool = True) -> Denoiser:
    """The model's denoiser, wrapped in classifier-free guidance when w_guide > 0 (the unconditional branch
    feeds ``null_label`` in place of each batch's labels).

    ``guidance`` "posterior_mean" is VDPM's (1 + w) * cond - w * uncond on the clipped-x0 posterior mean;
    "eps" applies the same strength as uncond + (1 + w) * (cond - uncond) to the raw predictions. Without
    clipping the two coincide, and the eps form is used.
    """
    if guidance not in ("posterior_mean", "eps"):
        raise ValueError(f"guidance must be posterior_mean or eps, got {guidance!r}")
    denoiser = diffusion.denoiser(model, clip_denoised=clip_denoised)
    if w_guide == 0:
        return denoiser
    uncond = {label_key: null_label_fn(null_label)}
    if guidance == "posterior_mean" and clip_denoised:
        return ClassifierFreeGuidance.on_posterior_mean(denoiser, w_guide, uncond_kwargs=uncond)
    return ClassifierFreeGuidance.on_eps(denoiser, 1.0 + w_guide, uncond_kwargs=uncond)


def sample_vdpm(diffusion: ContinuousDiffusion, model, noise: torch.Tensor, labels: Optional[torch.Tensor] = None,
                *, w_guide: float = 0.0, guidance: str = "posterior_mean", use_ddim: bool = False, eta: float = 0.0,
                num_steps: Optional[int] = None, clip_denoised: bool = True, null_label: Union[int, float] = NULL_LABEL,
                label_key: str = "y", model_kwargs: Optional[dict] = None,
                noise_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                progress: bool = False) -> torch.Tensor:
    """VDPM's sampler: from ``noise`` over ``num_steps`` (default sample_timesteps) steps t = (i + 1) / N -> i / N.

    Ancestral (the process' variance type) or DDIM(eta); x0 clipped to [-1, 1]; the last step returns the
    (guided) x0. The result is determined by ``noise`` and, for ancestral or eta > 0, by ``noise_fn``
    (per-step Gaussian draws; torch.randn_like under the global RNG when None, a
    ``StackedRandomGenerator.randn_like`` for per-sample seeds).
    """
    model_kwargs = dict(model_kwargs or {})
    if labels is not None:
        model_kwargs[label_key] = labels
    denoiser = vdpm_denoiser(diffusion, model, w_guide=0.0 if labels is None else w_guide, null_label=null_label,
                             label_key=label_key, guidance=guidance, clip_denoised=clip_denoised)
    trajectory = diffusion.trajectory(num_steps)
    if use_ddim:
        return sample_ddim(denoiser, trajectory, noise, eta=eta, clip_denoised=clip_denoised,
                           model_kwargs=model_kwargs, noise_fn=noise_fn, progress=progress)
    return sample_ancestral(denoiser, trajectory, noise, variance=diffusion.model_var_type,
                            intp_frac=diffusion.intp_frac, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                            noise_fn=noise_fn, progress=progress)


# ---------------------------------------------------------------------------------------------- metrics
class DatasetImages:
    """A data set as an image source for the metrics: uint8 NHWC batches of its first ``limit`` items."""

    def __init__(self, dataset, limit: Optional[int] = None):
        self.dataset = dataset
        self.count = len(dataset) if limit is None else min(int(limit), len(dataset))

    def __len__(self) -> int:
        return self.count

    def iter_images(self, batch_size: int, limit: Optional[int] = None) -> Iterator[np.ndarray]:
        total = self.count if limit is None else min(limit, self.count)
        for start in range(0, total, batch_size):
            batch = torch.stack([self.dataset[i][0] for i in range(start, min(start + batch_size, total))])
            yield to_uint8(batch)


def fid_precision_recall(net, samples, reference, *, batch_size: int = 64, k: int = 3,
                         progress: bool = True) -> Dict:
    """FID and improved precision/recall (k-NN balls, k = 3) of two image sources under ``net``."""
    smp = compute_activations(net, samples, batch_size=batch_size, keep_pool=True, progress=progress,
                              desc="samples")
    ref = compute_activations(net, reference, batch_size=batch_size, keep_pool=True, progress=progress,
                              desc="reference")
    fid = frechet_distance(smp["pool"].mean(), smp["pool"].cov(), ref["pool"].mean(), ref["pool"].cov())
    precision, recall = precision_recall(ref["pool"].features(), smp["pool"].features(), k=k)
    return {"fid": float(fid), "precision": precision, "recall": recall, "num_samples": len(samples),
            "num_reference_images": len(reference), "feature_net": net.name, "k": k}


__all__ = ["MODEL_FLAGS", "DIFFUSION_FLAGS", "NETWORK_FLAGS", "REQUIRED_FLAGS", "MODEL_FLAG_DEFAULTS",
           "DEFAULT_CONFIG_DIR", "DEFAULTS_CONFIG", "NULL_LABEL",
           "CHECKPOINT_FLAG_NAMES",
           "dataset_image_size", "model_from_flags", "diffusion_from_flags", "model_labels", "tags_to_int",
           "vdpm_batch_sampler",
           "vdpm_denoiser", "sample_vdpm",
           "DatasetImages", "fid_precision_recall"]
