"""Guides: the gradient of log p(y | x_t) at a noise level, with the unit of time the guide reads declared.

A guide is called as ``guide(x, level, **model_kwargs)`` with a
:class:`~guided_diffusion.timesteps.NoiseLevel` and returns the already scaled gradient s * grad log p(y | x_t).
A guide never receives a bare time tensor, so it cannot misread one clock as another:

- :class:`CondFnGuide` runs an ADM-style ``cond_fn(x, t, **model_kwargs)``. It passes ``t`` in the unit it
  declares (``unit``, via ``level.time_in``) or as the train index of the schedule it was trained on
  (``schedule``, a :class:`~guided_diffusion.timesteps.DiscreteSchedule`: the equivalent train index of any
  level, fractional off that schedule's grid). With neither, it is ADM's contract: the level must itself be a
  train-index level, and any other level is an error rather than a misread.
- :func:`classifier_guide` is a noisy classifier's guide (ADM's classifier guidance, PPAP's experts).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Optional, Union

import torch

from ..timesteps import DiscreteSchedule, NoiseLevel, TimeUnit
from .classifier import CondFn, classifier_cond_fn


class Guide(ABC):
    """``guide(x, level, **model_kwargs) -> scaled gradient of log p(y | x_t)`` (shape of x)."""

    @abstractmethod
    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> torch.Tensor:
        ...


class CondFnGuide(Guide):
    """An ADM-style ``cond_fn(x, t, **model_kwargs)`` as a guide, with the time it reads made explicit.

    :param unit: pass ``level.time_in(unit)`` as t (and x as it is).
    :param schedule: pass the level's train index on this discrete schedule, and x scaled to that schedule's
        alpha (what a classifier trained on its noise expects, whatever the sampler's trajectory; the gradient
        is taken back through the scaling). On the schedule's own grid nothing is rescaled.
    With neither, t is ``level.t`` and the level must be in train-index units (ADM's contract).
    """

    def __init__(self, cond_fn: CondFn, *, unit: Optional[Union[TimeUnit, str]] = None,
                 schedule: Optional[DiscreteSchedule] = None):
        if unit is not None and schedule is not None:
            raise ValueError("give a guide either the unit it reads or the schedule it was trained on, not both")
        self.cond_fn = cond_fn
        self.unit = None if unit is None else TimeUnit(unit)
        self.schedule = schedule

    def time(self, level: NoiseLevel) -> torch.Tensor:
        """The t this guide's cond_fn receives at ``level``."""
        if self.schedule is not None:
            return self.schedule.index_at(level)
        if self.unit is not None:
            return level.time_in(self.unit)
        if level.unit != TimeUnit.TRAIN_INDEX:
            raise ValueError(f"this guide declares no time unit, so it reads train indices, but the sampler's "
                             f"levels are in {level.unit.value}: give it unit= or the schedule= of the noise it "
                             "was trained on (e.g. classifier_guide(..., schedule=DiscreteSchedule(...)))")
        return level.t

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> torch.Tensor:
        if self.schedule is not None:
            own = self.schedule.own_level(level)
            if own is not level:  # d/dx log p(y | c x) = c * (grad at c x)
                scale = level.coefficient(own.alpha / level.alpha, x)
                return self.cond_fn(x * scale, own.t, **model_kwargs) * scale
        return self.cond_fn(x, self.time(level), **model_kwargs)


def as_guide(guide) -> Guide:
    """A Guide as is; any other callable as an ADM cond_fn reading train indices (:class:`CondFnGuide`)."""
    return guide if isinstance(guide, Guide) else CondFnGuide(guide)


def classifier_guide(classifier: Callable, scale: float = 1.0, *, schedule: Optional[DiscreteSchedule] = None,
                     unit: Optional[Union[TimeUnit, str]] = None, takes_time: bool = True) -> CondFnGuide:
    """scale * grad_x log softmax(classifier(x, t))[y] with ``y`` from model_kwargs, t as in :class:`CondFnGuide`.

    A classifier trained on the noise of a discrete schedule (ADM's noisy classifier, PPAP's experts, which
    route by that t) takes ``schedule=`` so it reads its own train index under any sampler or model family.
    """
    return CondFnGuide(classifier_cond_fn(classifier, scale, takes_time=takes_time), unit=unit, schedule=schedule)


class SumGuide(Guide):
    """The sum of several guides' gradients (guidance by a product of likelihoods)."""

    def __init__(self, *guides):
        if not guides:
            raise ValueError("SumGuide needs at least one guide")
        self.guides = [as_guide(g) for g in guides]

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> torch.Tensor:
        return sum(g(x, level, **model_kwargs) for g in self.guides)


__all__ = ["Guide", "CondFnGuide", "SumGuide", "as_guide", "classifier_guide", "CondFn"]
