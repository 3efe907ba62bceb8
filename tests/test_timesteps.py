"""Time units: conversions of noise levels and timestep-range routing under respacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.timesteps import NoiseLevel, TimestepRange, TimeUnit, route


def _levels(respacing: str):
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing=respacing)
    for i in range(diffusion.num_timesteps - 1, -1, -1):
        yield diffusion, diffusion.trajectory.level(torch.full((2,), i))


def test_level_conversions_match_the_schedule():
    diffusion = create_gaussian_diffusion(steps=1000, noise_schedule="cosine", timestep_respacing="ddim10")
    level = diffusion.trajectory.level(torch.tensor([3, 3]))
    abar = diffusion.alphas_cumprod[3]
    assert level.t.tolist() == [300, 300]
    assert level.time_in(TimeUnit.TIME).tolist() == pytest.approx([0.301, 0.301])
    assert level.time_in("edm_sigma")[0].item() == pytest.approx(np.sqrt((1 - abar) / abar), rel=1e-12)
    assert level.time_in("logsnr")[0].item() == pytest.approx(np.log(abar / (1 - abar)), rel=1e-12)
    assert level.time_in(TimeUnit.SAMPLING_STEP)[0].item() == 6  # 900, 800, ..., 300 is the 7th step
    assert level.time_in(TimeUnit.SAMPLING_FRACTION)[0].item() == pytest.approx(0.6)


def test_bare_sigma_is_not_a_unit_and_edm_sigma_is_sigma_over_alpha():
    with pytest.raises(ValueError, match="ambiguous.*edm_sigma"):
        TimeUnit("sigma")
    level = NoiseLevel.at(torch.tensor([0.5, 0.8], dtype=torch.float64), torch.tensor([0.2, 0.6]))
    assert level.unit == TimeUnit.EDM_SIGMA
    assert level.t.tolist() == pytest.approx([0.4, 0.75]) and level.edm_sigma.tolist() == pytest.approx([0.4, 0.75])
    assert level.time_in("logsnr").tolist() == pytest.approx([2 * np.log(2.5), 2 * np.log(0.8 / 0.6)])
    with pytest.raises(ValueError, match="no train_index"):
        NoiseLevel.at(1.0, 0.5, unit="train_index")
    with pytest.raises(ValueError, match="no train steps"):
        level.time_in(TimeUnit.TRAIN_INDEX)


def test_steps_are_per_sample():
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="ddim10")
    level = diffusion.trajectory.level(torch.tensor([3, 9]))
    assert level.time_in(TimeUnit.SAMPLING_STEP).tolist() == [6, 0]
    bare = NoiseLevel(alpha=level.alpha, sigma=level.sigma, t=level.t)
    with pytest.raises(ValueError, match="not part of a sampling schedule"):
        bare.time_in(TimeUnit.SAMPLING_STEP)


def test_split_into_experts():
    ranges = TimestepRange.split(5, 1000)
    assert [(r.lo, r.hi) for r in ranges] == [(0, 200), (200, 400), (400, 600), (600, 800), (800, 1000)]
    assert str(ranges[0]) == "[0, 200) train_index"
    with pytest.raises(ValueError):
        TimestepRange.split(0, 1000)


@pytest.mark.parametrize("respacing, per_expert", [("ddim25", [5] * 5), ("ddim10", [2] * 5), ("250", [50] * 5)])
def test_expert_routing_under_respacing(respacing, per_expert):
    # Half-open ranges, as the experts are trained: a boundary step (t = 200) goes to the upper expert.
    ranges = TimestepRange.split(5, 1000)
    counts = [0] * 5
    for _, level in _levels(respacing):
        counts[route(level, ranges)] += 1
    assert counts == per_expert


def test_boundary_goes_to_the_upper_range():
    ranges = TimestepRange.split(5, 1000)
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="ddim25")
    index = diffusion.timestep_map.index(200)
    assert route(diffusion.trajectory.level(torch.full((1,), index)), ranges) == 1


def test_ranges_in_other_units():
    first_half = TimestepRange(0, 0.5, TimeUnit.SAMPLING_FRACTION)
    active = [int(level.t[0]) for _, level in _levels("ddim10") if first_half.contains(level).all()]
    assert active == [900, 800, 700, 600, 500]
    low_noise = TimestepRange(0, 1.0, TimeUnit.EDM_SIGMA, closed="both")
    active = [int(level.t[0]) for d, level in _levels("ddim10") if low_noise.contains(level).all()]
    diffusion = create_gaussian_diffusion(steps=1000)
    sigmas = np.sqrt((1 - diffusion.alphas_cumprod) / diffusion.alphas_cumprod)
    assert active == [t for t in range(900, -1, -100) if sigmas[t] <= 1.0]
    assert 0 < len(active) < 10


def test_range_errors():
    with pytest.raises(ValueError, match="empty range"):
        TimestepRange(5, 1)
    with pytest.raises(ValueError, match="closed"):
        TimestepRange(0, 1, closed="open")
    diffusion = create_gaussian_diffusion(steps=1000)
    mixed = diffusion.trajectory.level(torch.tensor([10, 900]))
    with pytest.raises(ValueError, match="straddles"):
        route(mixed, TimestepRange.split(2, 1000))
    with pytest.raises(ValueError, match="no range holds"):
        route(diffusion.trajectory.level(torch.tensor([999])), [TimestepRange(0, 500)])
