"""The one seeded batch sampler: seeds -> images, every image a function of its own seed.

It takes the pieces every family has: a denoiser stack (the model's denoiser wrapped in CFG, gradient
guidance, experts, injection ...), a trajectory, a sampler function (``sample_ddim``, ``sample_ancestral``,
``sample_heun`` with their knobs bound, e.g. by ``functools.partial``), the shape, the start-noise scale
(``trajectory.prior_std`` by default), a condition provider and an optional decoder (a latent model's
autoencoder). Sample i draws from the generator of its seed, in this order: its start noise, then whatever
its condition draws (a class, a tag row), then every step's noise. So a seed gives the same image on any
number of ranks and at any batch size; the writers in :mod:`guided_diffusion.sample_writer` shard, resume and
save what it returns.

Condition providers are callables ``(generator, seeds) -> (model_kwargs, stored labels or None)``:
:class:`ClassLabels` (random, cycled, listed, fixed or null classes), :class:`TagRows` (multi-label vectors)
and :class:`Constant` (embeddings, prompt encodings or any inputs shared by every sample).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .denoisers import Denoiser
from .sample_writer import to_uint8
from .seeded import StackedRandomGenerator
from .trajectory import Trajectory

BatchFn = Callable[[List[int]], Tuple[np.ndarray, Optional[np.ndarray]]]
ConditionProvider = Callable[[StackedRandomGenerator, List[int]], Tuple[Dict, Optional[np.ndarray]]]
LabelMode = Union[str, int, Sequence[int]]


class ClassLabels:
    """One class per sample, drawn from its seed's generator (``randint(num_classes)``) whatever the mode, so a
    seed's later noise does not depend on the mode:

    - "random": the drawn class; "cycle": seed % num_classes; a list L: L[seed % len(L)]; an int k: class k
      for every sample (a target label);
    - "null": ``null_label`` for the model and no stored labels (the unconditional branch).

    The model receives ``to_model(classes)`` under ``key``; the stored labels (``arr_1``) are the classes.
    """

    def __init__(self, num_classes: int, mode: LabelMode = "random", *, key: str = "y",
                 to_model: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 null_label: Optional[Union[int, float]] = None):
        if num_classes < 1:
            raise ValueError(f"a class-label condition needs num_classes >= 1, got {num_classes}")
        if isinstance(mode, str):
            if mode not in ("random", "cycle", "null"):
                raise ValueError(f"labels must be 'random', 'cycle', 'null', a class or a list of classes, got "
                                 f"{mode!r}")
            if mode == "null" and null_label is None:
                raise ValueError("null labels need the model's null_label")
        else:
            classes = [int(mode)] if isinstance(mode, (int, np.integer)) else [int(v) for v in mode]
            bad = [v for v in classes if not 0 <= v < num_classes]
            if not classes or bad:
                raise ValueError(f"labels must be classes in 0..{num_classes - 1}, got {mode}")
            mode = classes
        self.num_classes, self.mode, self.key = num_classes, mode, key
        self.to_model, self.null_label = to_model, null_label

    def __call__(self, gen: StackedRandomGenerator, seeds: List[int]) -> Tuple[Dict, Optional[np.ndarray]]:
        drawn = gen.randint(self.num_classes)
        if self.mode == "null":
            return {self.key: torch.full_like(drawn, self.null_label)}, None
        if self.mode == "cycle":
            drawn = torch.tensor([s % self.num_classes for s in seeds], device=drawn.device)
        elif isinstance(self.mode, list):
            drawn = torch.tensor([self.mode[s % len(self.mode)] for s in seeds], device=drawn.device)
        model_labels = drawn if self.to_model is None else self.to_model(drawn)
        return {self.key: model_labels}, drawn.cpu().numpy().astype(np.int64)


def tag_bits(tags: torch.Tensor) -> torch.Tensor:
    """(N, K <= 62) {0, 1} tag vectors -> int64 bit masks sum_j tag_j 2^j (how sample files store them)."""
    bits = (tags != 0).long()
    return (bits << torch.arange(bits.shape[1], device=bits.device)).sum(dim=1)


class TagRows:
    """A multi-label condition: each sample gets a row of ``rows`` (N, K) {0, 1}, drawn from its seed; stored as
    the int64 bit mask sum_j tag_j 2^j (K <= 62). ``null=True`` feeds all-zero rows of ``num_tags`` tags and
    stores nothing (it still draws one integer below ``num_tags``, keeping the later noise of every seed)."""

    def __init__(self, rows: Optional[torch.Tensor] = None, *, key: str = "y", null: bool = False,
                 num_tags: Optional[int] = None):
        if not null and (rows is None or len(rows) == 0):
            raise ValueError("a multi-tag model needs tag rows (label vectors) to sample with")
        self.rows = None if rows is None else torch.as_tensor(rows)
        self.num_tags = num_tags if num_tags is not None else (None if rows is None else self.rows.shape[1])
        if null and not self.num_tags:
            raise ValueError("null tag rows need num_tags")
        self.key, self.null = key, null

    def __call__(self, gen: StackedRandomGenerator, seeds: List[int]) -> Tuple[Dict, Optional[np.ndarray]]:
        if self.null:
            gen.randint(self.num_tags)
            return {self.key: torch.zeros(len(seeds), self.num_tags, device=gen.device)}, None
        picked = self.rows.to(gen.device)[gen.randint(len(self.rows))]
        return {self.key: picked.float()}, tag_bits(picked).cpu().numpy().astype(np.int64)


class Constant:
    """Inputs shared by every sample (an embedding, a prompt encoding): tensors with a leading batch dimension
    of 1 are repeated to the batch; other values pass as they are. Draws nothing; stores ``stored`` if given."""

    def __init__(self, model_kwargs: Dict, stored: Optional[np.ndarray] = None):
        self.model_kwargs, self.stored = dict(model_kwargs), stored

    def __call__(self, gen: StackedRandomGenerator, seeds: List[int]) -> Tuple[Dict, Optional[np.ndarray]]:
        n = len(seeds)
        out = {k: (v.to(gen.device).expand(n, *v.shape[1:]) if isinstance(v, torch.Tensor) and v.shape[:1] == (1,)
                   else v) for k, v in self.model_kwargs.items()}
        return out, None if self.stored is None else np.repeat(self.stored[None], n, axis=0)


def make_batch_sampler(denoiser: Denoiser, trajectory: Trajectory, sampler: Callable, *,
                       shape: Sequence[int], device, prior_std: Optional[float] = None,
                       conditions: Optional[ConditionProvider] = None,
                       decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                       to_images: Callable[[torch.Tensor], np.ndarray] = to_uint8,
                       progress: bool = False) -> BatchFn:
    """``seeds -> (uint8 NHWC RGB images, int64 labels or None)`` (see the module docstring).

    ``sampler(denoiser, trajectory, x, model_kwargs=..., noise_fn=..., progress=...)`` runs one chain;
    ``shape`` is one sample's (C, H, W); ``prior_std`` defaults to the trajectory's; ``decode`` maps the
    sampler's output to images in [-1, 1]; one-channel images are repeated to RGB (what the npz readers take).
    """
    device = torch.device(device)
    scale = trajectory.prior_std if prior_std is None else float(prior_std)

    @torch.no_grad()
    def sample_batch(seeds: List[int]):
        gen = StackedRandomGenerator(device, seeds)
        x = gen.randn((len(seeds),) + tuple(shape))
        if scale != 1.0:
            x = x * scale
        model_kwargs, stored = conditions(gen, list(seeds)) if conditions is not None else ({}, None)
        out = sampler(denoiser, trajectory, x, model_kwargs=model_kwargs, noise_fn=gen.randn_like,
                      progress=progress)
        if decode is not None:
            out = decode(out)
        if not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out)).sum())
            raise ValueError(f"sampling seeds {seeds[0]}..{seeds[-1]} gave {bad:,} non-finite values of "
                             f"{out.numel():,} (as images they would be black): check the checkpoint for NaN or inf "
                             "weights and the guidance scale and sampler flags; nothing was written for these seeds")
        images = to_images(out)
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        return images, stored

    return sample_batch


__all__ = ["make_batch_sampler", "ClassLabels", "TagRows", "Constant", "tag_bits", "BatchFn", "ConditionProvider"]
