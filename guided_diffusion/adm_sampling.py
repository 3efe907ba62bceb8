"""Seeded batch samplers for ADM models, the glue between a model, a diffusion and ``run_seeded_sampling``.

Sample i of a batch draws its starting noise, then its class label (when one is needed), then every
step's noise from the generator seeded with its own seed (EDM's order), so its image depends on the
seed alone.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np
import torch

from . import dist_util
from .models.checkpoints import load_checkpoint, load_state_dict_checked
from .sample_writer import to_uint8
from .seeded import StackedRandomGenerator


def load_model_checked(model: torch.nn.Module, path: str, *, flags: Optional[dict] = None, flag: str = "--model_path",
                       use_fp16: bool = False) -> torch.nn.Module:
    """Load ``path`` into ``model`` with readable errors, move it to this rank's device, set eval mode."""
    load_state_dict_checked(model, load_checkpoint(path, flag=flag), flags=flags)
    model.to(dist_util.dev())
    if use_fp16:
        if dist_util.dev().type != "cuda":
            raise ValueError(f"{flag}: --use_fp16 True needs a CUDA GPU; sample on CPU with --use_fp16 False")
        model.convert_to_fp16()
    return model.eval()


def make_batch_sampler(model, diffusion, *, image_size: int, use_ddim: bool = False, clip_denoised: bool = True,
                       num_classes: Optional[int] = None, class_cond: bool = False,
                       cond_fn: Optional[Callable] = None, eta: float = 0.0, progress: bool = False,
                       fixed_label: Optional[int] = None) -> Callable[[List[int]], tuple]:
    """``seeds -> (uint8 NHWC images, labels or None)``.

    Labels are drawn when ``num_classes`` is given (for a class-conditional model, for classifier
    guidance, or both); a class-conditional model receives them as ``y``, ``cond_fn`` always does.
    ``fixed_label`` replaces every drawn label after the draw, so each seed's noise stream, and hence the
    image pairing with a random-label run, is unchanged.
    """
    def model_fn(x, t, y=None):
        return model(x, t, y if class_cond else None)

    def sample_batch(seeds: List[int]):
        gen = StackedRandomGenerator(dist_util.dev(), seeds)
        shape = (len(seeds), 3, image_size, image_size)
        noise = gen.randn(shape)
        labels = gen.randint(num_classes) if num_classes else None
        if labels is not None and fixed_label is not None:
            labels = torch.full_like(labels, fixed_label)
        kwargs = {} if labels is None else {"y": labels}
        loop = diffusion.ddim_sample_loop if use_ddim else diffusion.p_sample_loop
        extra = {"eta": eta} if use_ddim else {}
        sample = loop(model_fn, shape, noise=noise, clip_denoised=clip_denoised, cond_fn=cond_fn,
                      model_kwargs=kwargs, progress=progress, noise_fn=gen.randn_like, **extra)
        return to_uint8(sample), (None if labels is None else labels.cpu().numpy().astype(np.int64))

    return sample_batch


__all__ = ["load_model_checked", "make_batch_sampler"]
