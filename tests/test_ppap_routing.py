"""Which expert guides each step: PPAP's released sampler rule (the default) and the training ranges, for n
that divides the 1000 steps and n that does not, checked step by step against the rules as PPAP's code writes
them (transcribed here, independently of the package)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guided_diffusion.adm.sampling import guide_schedule
from guided_diffusion.guidance import GradientGuidedDenoiser, classifier_guide
from guided_diffusion.ppap import ExpertRanges, FullExpertSet
from guided_diffusion.samplers import sample_ddim
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.toy import GaussianMixture
from test_guides import Expert as RecordingExpert  # a linear classifier that logs each call

T = 1000
MIX = GaussianMixture([0.5, 0.5], [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.3])


def original_expert(t: float, n: int, num_timesteps: int = T) -> int:
    """riiid/PPAP guided_diffusion/multi_expert_helper.py, MultiExpertWrapper (as called by classifier_sample.py
    with n = len(classifier_path) and num_timesteps = diffusion.original_num_steps)."""
    step_range = [int(i * num_timesteps / n) for i in range(0, n + 1)]
    for i in range(0, len(step_range)):
        if step_range[i] <= t <= step_range[i + 1]:
            return i
    raise AssertionError("unreachable for 0 <= t <= T")


def training_expert(t: float, n: int, max_step: int = T) -> int:
    """riiid/PPAP python_scripts/classifier_train.py: range_list of [lo, hi), t drawn from U{lo, ..., hi - 1}."""
    for interval in range(n):
        lo, hi = int(interval / n * max_step), int((interval + 1) / n * max_step)
        if lo <= t < hi:
            return interval
    raise AssertionError("unreachable for 0 <= t < T")


def adm_spacing(respacing: str) -> list:
    """ADM's space_timesteps(1000, respacing) for "ddimN" and a single section "N", sorted."""
    if respacing.startswith("ddim"):
        count = int(respacing[4:])
        stride = next(s for s in range(1, T) if len(range(0, T, s)) == count)
        return list(range(0, T, stride))
    count = int(respacing)
    frac_stride = (T - 1) / (count - 1)
    return sorted({round(i * frac_stride) for i in range(count)})


def guided_table(respacing: str, n: int, routing) -> list:
    """The expert that guides each DDIM step of a respaced ADM diffusion, in sampling order, through the real
    guidance path: trajectory level -> the experts' train index (classifier_guide with the training schedule)
    -> FullExpertSet routing."""
    diffusion = create_gaussian_diffusion(steps=T, timestep_respacing=respacing)
    log = []
    kwargs = {} if routing is None else {"routing": routing}
    experts = FullExpertSet([RecordingExpert(i, log) for i in range(n)], total_steps=T, **kwargs)
    guide = classifier_guide(experts, 1.0, schedule=guide_schedule(diffusion))
    x = torch.randn(3, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    sample_ddim(GradientGuidedDenoiser(MIX.denoiser(), guide), diffusion.trajectory, x,
                model_kwargs={"y": torch.tensor([0, 1, 2])})
    return log


@pytest.mark.parametrize("respacing", ["ddim25", "ddim10", "250"])
@pytest.mark.parametrize("n", [3, 5, 6])
def test_each_guided_step_uses_the_original_expert_by_default(respacing, n):
    steps = adm_spacing(respacing)[::-1]  # sampling order
    assert sorted(create_gaussian_diffusion(steps=T, timestep_respacing=respacing).timestep_map) == steps[::-1]
    expected = [original_expert(t, n) for t in steps]
    assert guided_table(respacing, n, None) == expected
    assert ExpertRanges(n, routing="original").indices(steps).tolist() == expected


@pytest.mark.parametrize("respacing", ["ddim25", "ddim10", "250"])
@pytest.mark.parametrize("n", [3, 5, 6])
def test_the_training_option_uses_the_range_each_expert_was_trained_on(respacing, n):
    steps = adm_spacing(respacing)[::-1]
    assert guided_table(respacing, n, "training") == [training_expert(t, n) for t in steps]


def test_ddim25_step_counts_of_the_released_sampler():
    """With ddim25 and 5 experts PPAP's sampler gives experts 0..4 six, five, five, five and four steps; t = 200,
    400, 600, 800 are the four steps where the two rules disagree."""
    steps = adm_spacing("ddim25")
    original = [original_expert(t, 5) for t in steps]
    assert [original.count(i) for i in range(5)] == [6, 5, 5, 5, 4]
    disagree = [t for t in steps if original_expert(t, 5) != training_expert(t, 5)]
    assert disagree == [200, 400, 600, 800]
    assert ExpertRanges(5).indices(steps).tolist() == original


@pytest.mark.parametrize("n", [3, 5, 6, 7, 11])
def test_fractional_train_indices(n):
    """A guide on another family's trajectory hands the experts a fractional train index: the original rule is
    applied as written to the real number (first i with e_i <= t <= e_{i+1}), the training rule as lo <= t < hi.
    Boundaries and their float neighbours are included."""
    edges = [int(i * T / n) for i in range(n + 1)]
    near = [e + d for e in edges[:-1] for d in (-1e-6, 0.0, 1e-6, 0.5)]
    grid = np.concatenate([np.linspace(0, T - 1, 2001), near])
    grid = grid[(grid >= 0) & (grid <= T - 1)]
    t = torch.tensor(grid, dtype=torch.float64)
    assert ExpertRanges(n).indices(t).tolist() == [original_expert(v, n) for v in grid]
    assert ExpertRanges(n, routing="training").indices(t).tolist() == [training_expert(v, n) for v in grid]


@pytest.mark.parametrize("n", [3, 6, 7, 9, 13])
def test_training_ranges_are_the_original_floors(n):
    ranges = ExpertRanges(n)
    assert [(r.lo, r.hi) for r in ranges.training_ranges] == \
        [(int(i / n * T), int((i + 1) / n * T)) for i in range(n)]
    assert ranges.edges == [int(i * T / n) for i in range(n + 1)]
    # Every train index belongs to exactly one training range.
    owners = ExpertRanges(n, routing="training").indices(torch.arange(T))
    assert owners.tolist() == [training_expert(t, n) for t in range(T)]


def test_the_two_float_expressions_are_kept_apart():
    """PPAP's trainer computes int(i / n * T) and its sampler int(i * T / n); for T = 55, n = 11 they differ
    (3 / 11 * 55 = 14.999...), and each rule keeps its own expression."""
    ranges = ExpertRanges(11, total_steps=55)
    assert [int(r.lo) for r in ranges.training_ranges] == [int(i / 11 * 55) for i in range(11)]
    assert ranges.edges == [int(i * 55 / 11) for i in range(12)]
    assert [int(r.lo) for r in ranges.training_ranges] != ranges.edges[:-1]
