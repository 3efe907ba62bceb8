"""What the VDPM scripts share: flags -> model and process, config files, labels, seeded sampling, metrics.

Labels follow the seed: class k is stored as k + 1 and 0 is the classifier-free null label; CelebA's 40 tags
are a {0, 1} vector whose null is all zeros. Data sets yield 0-based classes; :func:`model_labels` shifts them.
In sample files (``arr_1``) classes are 0-based, as in ADM's npz, and a tag vector is stored as the int64
bit mask sum_j tag_j 2^j.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .data import VDPM_DATASET_INFO
from .diffusion.continuous import ContinuousDiffusion
from .metrics.evaluate import compute_activations
from .metrics.stats import frechet_distance, precision_recall
from .models.vdpm import VDPMUNet, create_vdpm_model
from .sample_writer import to_uint8
from .seeded import StackedRandomGenerator

MODEL_FLAGS = ("hid_channels", "ch_multipliers", "num_res_blocks", "apply_attn", "drop_rate", "num_heads",
               "head_dim")
DIFFUSION_FLAGS = ("logsnr_schedule", "logsnr_min", "logsnr_max", "train_timesteps", "sample_timesteps",
                   "model_out_type", "model_var_type", "intp_frac", "reweight_type", "loss_type")
# What fixes the network's shape: a checkpoint loads only into a model built from the same values.
NETWORK_FLAGS = ("dataset", "image_size", "use_cfg", "model_out_type") + MODEL_FLAGS
DEFAULT_CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs" / "vdpm")
NULL_LABEL = 0


# ---------------------------------------------------------------------------------------------- model, process
def dataset_image_size(flags: Dict) -> int:
    """--image-size, or the data set's native size when it is 0."""
    size = int(flags.get("image_size") or 0)
    return size or VDPM_DATASET_INFO[flags["dataset"]].image_size


def model_from_flags(flags: Dict) -> VDPMUNet:
    """The network for ``flags`` (a dict of flag values): conditional exactly when ``use_cfg`` is set."""
    info = VDPM_DATASET_INFO[flags["dataset"]]
    return create_vdpm_model(image_size=dataset_image_size(flags), in_channels=info.in_channels,
                             model_out_type=flags["model_out_type"],
                             num_classes=info.num_classes if flags["use_cfg"] else 0, multitags=info.multilabel,
                             **{k: flags[k] for k in MODEL_FLAGS})


def diffusion_from_flags(flags: Dict, **overrides) -> ContinuousDiffusion:
    """The continuous log-SNR process of ``flags`` (``overrides`` replace single values, e.g. sample_timesteps)."""
    values = {k: flags[k] for k in DIFFUSION_FLAGS}
    values.update(overrides)
    return ContinuousDiffusion(**values)


def model_labels(labels: torch.Tensor, multitags: bool) -> torch.Tensor:
    """Data-set labels as the model takes them: class k -> k + 1 (0 is null); tag vectors unchanged (float)."""
    return labels.float() if multitags else labels.long() + 1


def tags_to_int(tags: torch.Tensor) -> torch.Tensor:
    """(N, K <= 62) {0, 1} tag vectors -> int64 bit masks sum_j tag_j 2^j (how sample files store them)."""
    bits = (tags != 0).long()
    return (bits << torch.arange(bits.shape[1], device=bits.device)).sum(dim=1)


# ---------------------------------------------------------------------------------------------- config files
def resolve_config_path(config: str, config_dir: str) -> str:
    """A path, or a bare name looked up as ``<config_dir>/<name>.json``."""
    if os.path.isfile(config):
        return config
    candidate = os.path.join(config_dir or DEFAULT_CONFIG_DIR, config if config.endswith(".json") else config + ".json")
    if os.path.isfile(candidate):
        return candidate
    names = sorted(p[:-5] for p in os.listdir(config_dir)) if os.path.isdir(config_dir) else []
    raise FileNotFoundError(f"--config {config!r}: neither a file nor {candidate!r}"
                            + (f"; configs in {config_dir}: {', '.join(names)}" if names else ""))


def load_config(path: str) -> Dict:
    """A config file as a flat dict of flag names (underscores): its sections ("train", "model", ...) merge."""
    with open(path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config {path} is not valid JSON: {exc}") from None
    flat: Dict = {}
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            k = k.replace("-", "_")
            if k in flat:
                raise ValueError(f"config {path} sets {k!r} twice")
            flat[k] = v
    flat.pop("comment", None)
    return flat


def typed_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set:
    """The dest names of the options written in ``argv`` (``--x v``, ``--x=v``, ``--no-x``)."""
    words = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return {action.dest for action in parser._actions if words & set(action.option_strings)}


def _coerce(action: argparse.Action, value, source: str):
    """A config value checked (and converted) as the command line would have checked it."""
    name = action.option_strings[0]
    if value is None:
        return None
    if isinstance(action, argparse.BooleanOptionalAction) or isinstance(action.default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{source}: {name} must be true or false, got {value!r}")
        return value
    if isinstance(value, (list, tuple)):
        value = ",".join(str(int(v) if isinstance(v, bool) else v) for v in value)
    if isinstance(value, bool) or (action.type is int and isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{source}: {name} cannot take {value!r}")
    if action.type is not None:
        try:
            value = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise ValueError(f"{source}: {name} cannot take {value!r}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{source}: {name} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def apply_flag_values(parser: argparse.ArgumentParser, args: argparse.Namespace, values: Dict, typed: set,
                      source: str, ignore: Sequence[str] = ()) -> List[str]:
    """Set every flag in ``values`` that was not typed on the command line; unknown names are an error.
    Returns the names that were set."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    unknown = sorted(k for k in values if k not in actions and k not in ignore)
    if unknown:
        raise ValueError(f"{source} sets unknown flags {', '.join(unknown)}; known: {', '.join(sorted(actions))}")
    done = []
    for key, value in values.items():
        if key in typed or key in ignore:
            continue
        setattr(args, key, _coerce(actions[key], value, source))
        done.append(key)
    return done


# ---------------------------------------------------------------------------------------------- sampling
LabelMode = Union[str, Sequence[int]]


def make_vdpm_batch_sampler(model, diffusion: ContinuousDiffusion, *, shape: Tuple[int, int, int],
                            num_classes: int = 0, multitags: bool = False, labels: LabelMode = "random",
                            tag_rows: Optional[torch.Tensor] = None, w_guide: float = 0.0,
                            guidance: str = "posterior_mean", use_ddim: bool = False, eta: float = 0.0,
                            num_steps: Optional[int] = None, device=None, progress: bool = False
                            ) -> Callable[[List[int]], Tuple[np.ndarray, Optional[np.ndarray]]]:
    """``seeds -> (uint8 NHWC RGB images, labels or None)``, every sample a function of its seed alone.

    Sample i draws from the generator of its seed: its starting noise, then its label (a class in
    0..num_classes-1, or a row of ``tag_rows`` for multi-tag models), then each step's noise. ``labels``:
    "random" keeps the drawn class, "cycle" uses seed % num_classes, a list L uses L[seed % len(L)], "null" feeds
    the null label (0, or all-zero tags: the unconditional branch) and returns no labels; the label is drawn in
    every mode, so a seed's noise does not depend on the mode. ``num_classes`` 0: an unconditional model.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if not isinstance(labels, str):
        labels = [int(v) for v in labels]
        bad = [v for v in labels if not 0 <= v < num_classes]
        if not labels or bad:
            raise ValueError(f"labels must be classes in 0..{num_classes - 1}, got {labels}")
    elif labels not in ("random", "cycle", "null"):
        raise ValueError(f"labels must be 'random', 'cycle', 'null' or a list of classes, got {labels!r}")
    if num_classes and multitags and labels != "null" and (tag_rows is None or len(tag_rows) == 0):
        raise ValueError("a multi-tag model needs tag rows (label vectors) to sample with")

    @torch.no_grad()
    def sample_batch(seeds: List[int]):
        gen = StackedRandomGenerator(device, seeds)
        noise = gen.randn((len(seeds),) + tuple(shape))
        y = stored = None
        if num_classes and labels == "null":
            gen.randint(num_classes)  # keeps the step noise of every mode aligned
            y = (torch.zeros(len(seeds), num_classes, device=device) if multitags
                 else torch.full((len(seeds),), NULL_LABEL, dtype=torch.long, device=device))
        elif num_classes and multitags:
            rows = tag_rows.to(device)[gen.randint(len(tag_rows))]
            y, stored = rows.float(), tags_to_int(rows)
        elif num_classes:
            drawn = gen.randint(num_classes)
            if labels == "cycle":
                drawn = torch.tensor([s % num_classes for s in seeds], device=device)
            elif not isinstance(labels, str):
                drawn = torch.tensor([labels[s % len(labels)] for s in seeds], device=device)
            y, stored = model_labels(drawn, False), drawn
        x = diffusion.sample(model, noise, y, w_guide=w_guide, guidance=guidance, use_ddim=use_ddim, eta=eta,
                             num_steps=num_steps, null_label=NULL_LABEL, noise_fn=gen.randn_like, progress=progress)
        images = to_uint8(x)
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)  # ADM's npz and the evaluators expect RGB
        return images, (None if stored is None else stored.cpu().numpy().astype(np.int64))

    return sample_batch


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


__all__ = ["MODEL_FLAGS", "DIFFUSION_FLAGS", "NETWORK_FLAGS", "DEFAULT_CONFIG_DIR", "NULL_LABEL",
           "dataset_image_size", "model_from_flags", "diffusion_from_flags", "model_labels", "tags_to_int",
           "resolve_config_path", "load_config", "typed_dests", "apply_flag_values", "make_vdpm_batch_sampler",
           "DatasetImages", "fid_precision_recall"]
