"""What every sampler shares: the guarded model call with x0 post-processing, the step loop, the mean shift.

A *guide* is any callable ``guide(x, level, **model_kwargs)`` returning the already scaled gradient of
log p(y | x_t) at that :class:`~guided_diffusion.timesteps.NoiseLevel` (see :mod:`guided_diffusion.guidance`
for guides built from classifiers and from ADM-style cond_fns). Samplers apply it the way ADM does: DDIM
shifts eps after x0 is clipped, the ancestral sampler shifts the step mean.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, Optional

import torch
from tqdm.auto import tqdm

from ..denoisers import Denoiser, Prediction
from ..timesteps import NoiseLevel
from ..trajectory import Trajectory

NoiseFn = Callable[[torch.Tensor], torch.Tensor]
Guide = Callable[..., torch.Tensor]


def predict(denoiser: Denoiser, x: torch.Tensor, level: NoiseLevel, *, clip_denoised: Optional[bool] = None,
            denoised_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
            model_kwargs: Optional[dict] = None) -> Prediction:
    """Call the denoiser, then post-process x0: ``denoised_fn`` first, then clamp to [-1, 1] when
    ``clip_denoised`` (None: what the denoiser asks for, ``denoiser.clip_denoised``); eps is re-derived from the
    processed x0 so the prediction stays consistent.

    A prediction marked ``x0_final`` (its x0 was post-processed inside the denoiser stack) is returned as is.
    """
    if clip_denoised is None:
        clip_denoised = denoiser.clip_denoised
    pred = denoiser(x, level, **(model_kwargs or {}))
    if pred.x0_final or (denoised_fn is None and not clip_denoised):
        return pred
    x0 = pred.x0 if denoised_fn is None else denoised_fn(pred.x0)
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
    return pred.with_x0(x, level, x0)


def shift_mean(mean: torch.Tensor, variance: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient guidance on an ancestral step: mean' = mean + variance * grad (float32, as ADM computes it)."""
    return mean.float() + variance * grad.float()


def run_chain(step: Callable[[torch.Tensor, torch.Tensor], Dict[str, torch.Tensor]], trajectory: Trajectory,
              x: torch.Tensor, *, indices: Optional[Iterable[int]] = None, progress: bool = False
              ) -> Iterator[Dict[str, torch.Tensor]]:
    """Apply ``step(x, index)`` over trajectory indices (default K-1 down to 0), yielding each step's output.

    Each step runs under ``torch.no_grad()``; gradient guidance enables gradients inside itself.
    """
    if indices is None:
        indices = range(len(trajectory) - 1, -1, -1)
    indices = list(indices)
    for i in tqdm(indices, disable=not progress, leave=False):
        index = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        with torch.no_grad():
            out = step(x, index)
        yield out
        x = out["sample"]


def last(outputs: Iterator[Dict[str, torch.Tensor]]) -> torch.Tensor:
    """The final sample of a progressive loop."""
    final = None
    for output in outputs:
        final = output
    if final is None:
        raise ValueError("the sampling loop ran no steps")
    return final["sample"]
