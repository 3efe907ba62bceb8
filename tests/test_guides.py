"""Guides read time in a declared unit; PPAP experts route by the equivalent train index under any family's
trajectory; classifier-free guidance batches safely (extra branches, a channel subset); feature injection
replays a recorded pass exactly on the ADM UNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from guided_diffusion.denoisers import Denoiser, Prediction
from guided_diffusion.denoisers.discrete import DiscreteDenoiser
from guided_diffusion.diffusion.continuous import ContinuousDiffusion
from guided_diffusion.guidance import (ClassifierFreeGuidance, CondFnGuide, FeatureInjection, GradientGuidedDenoiser,
                                       classifier_guide)
from guided_diffusion.models.unet import UNetModel
from guided_diffusion.nn import hook_points
from guided_diffusion.ppap.experts import FullExpertSet
from guided_diffusion.samplers import sample_ddim, sample_heun
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.timesteps import DiscreteSchedule, NoiseLevel, TimestepRange, TimeUnit
from guided_diffusion.toy import GaussianMixture
from guided_diffusion.trajectory import Trajectory

MIX = GaussianMixture([0.5, 0.5], [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.3])
GUIDE_DIFFUSION = create_gaussian_diffusion(steps=1000, noise_schedule="linear")  # what the experts trained on
GUIDE_SCHEDULE = DiscreteSchedule(GUIDE_DIFFUSION.train_trajectory.alphas, GUIDE_DIFFUSION.train_trajectory.sigmas)


class Expert(nn.Module):
    """A linear classifier on the mean of x that records when it is asked."""

    def __init__(self, index: int, log: list):
        super().__init__()
        self.index, self.log = index, log
        self.weight = nn.Parameter(torch.randn(3, 2, generator=torch.Generator().manual_seed(index)))

    def forward(self, x):
        self.log.append(self.index)
        return x.reshape(len(x), -1).float() @ self.weight.T


def equivalent_expert(level: NoiseLevel, n_experts: int = 5) -> int:
    """The expert that guides the level, found independently: the guide's train index at the level's noise
    (linear interpolation of the index in log(sigma / alpha) over the guide's schedule), routed by PPAP's
    released rule (the default): expert 0 owns [0, 200], expert i owns (200 i, 200 (i + 1)]."""
    abar = GUIDE_DIFFUSION.alphas_cumprod
    log_rho = 0.5 * np.log((1 - abar) / abar)
    index = np.interp(np.log(float(level.edm_sigma[0])), log_rho, np.arange(1000))
    return max(int(np.ceil(index / (1000 // n_experts))) - 1, 0)


def ppap_guided_run(trajectory, denoiser, sampler):
    log, seen = [], []
    experts = FullExpertSet([Expert(i, log) for i in range(5)], total_steps=1000)
    guide = classifier_guide(experts, scale=2.0, schedule=GUIDE_SCHEDULE)

    class Watch(GradientGuidedDenoiser):
        def __call__(self, x, level, **kw):
            seen.append(level)
            return super().__call__(x, level, **kw)

    guided = Watch(denoiser, guide)
    x = torch.randn(4, 2, 1, 1, generator=torch.Generator().manual_seed(0)) * trajectory.prior_std
    sampler(guided, trajectory, x, model_kwargs={"y": torch.tensor([0, 1, 2, 0])})
    return log, [equivalent_expert(level) for level in seen]


def test_ppap_experts_route_by_the_equivalent_train_index_on_a_continuous_model():
    """A v-objective (continuous log-SNR time) model guided by PPAP experts trained on ADM's linear schedule:
    each DDIM step goes to the expert whose train-index range holds the level's equivalent train index."""
    process = ContinuousDiffusion(logsnr_schedule="cosine", model_out_type="eps")
    denoiser = process.denoiser(MIX.continuous_model(process.schedule, "eps"), clip_denoised=False)
    log, expected = ppap_guided_run(process.trajectory(10), denoiser, sample_ddim)
    assert log == expected and len(set(log)) >= 4  # not all to expert 0, as a bare time tensor would route


def test_ppap_experts_route_by_the_equivalent_train_index_on_a_sigma_trajectory():
    """EDM's sigma grid with Heun (two levels per step, churn off the grid): the same rule at every call."""
    log, expected = ppap_guided_run(Trajectory.karras(8, 0.02, 80.0), MIX.denoiser(),
                                    lambda d, t, x, **kw: sample_heun(d, t, x, s_churn=2, **kw))
    assert log == expected and len(set(log)) == 5


def test_a_guide_with_no_declared_unit_refuses_levels_of_another_unit():
    guide = CondFnGuide(lambda x, t, **kw: torch.zeros_like(x))
    continuous = ContinuousDiffusion().trajectory(10).level(torch.tensor([3]))
    with pytest.raises(ValueError, match="declares no time unit.*continuous|time"):
        guide(torch.zeros(1, 2, 1, 1), continuous)
    sigma_level = Trajectory.karras(5).level(torch.tensor([2]))
    with pytest.raises(ValueError, match="declares no time unit"):
        guide(torch.zeros(1, 2, 1, 1), sigma_level)
    adm_level = GUIDE_DIFFUSION.trajectory.level(torch.tensor([7]))
    assert guide(torch.zeros(1, 2, 1, 1), adm_level).shape == (1, 2, 1, 1)
    with pytest.raises(ValueError, match="either"):
        CondFnGuide(lambda x, t: x, unit="logsnr", schedule=GUIDE_SCHEDULE)
    # A guide that declares its unit reads that unit.
    seen = []
    CondFnGuide(lambda x, t, **kw: seen.append(t) or x, unit=TimeUnit.LOGSNR)(torch.zeros(1, 2, 1, 1), continuous)
    torch.testing.assert_close(seen[0], continuous.logsnr)


def test_exact_guide_and_classifier_guide_agree_at_any_level():
    """The oracle's exact guide equals autograd through its ideal classifier read at the schedule's index, with x
    scaled to the schedule's alpha at VE levels (classifier_cond_fn takes its log-softmax in float32)."""
    train = GUIDE_DIFFUSION.train_trajectory
    through_classifier = classifier_guide(MIX.ideal_classifier(train.alphas, train.sigmas), 1.5,
                                          schedule=GUIDE_SCHEDULE)
    exact = MIX.guide(1.5)
    x, y = torch.randn(3, 2, 1, 1, dtype=torch.float64), torch.tensor([0, 1, 1])
    rho = torch.tensor([0.05, 1.3, 40.0], dtype=torch.float64)
    vp_alpha = torch.rsqrt(1 + rho ** 2)
    for level in (NoiseLevel.at(torch.ones_like(rho), rho), NoiseLevel.at(vp_alpha, rho * vp_alpha)):
        torch.testing.assert_close(through_classifier(x, level, y=y), exact(x, level, y=y), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------ CFG
class Branchy(Denoiser):
    """eps = tanh(x) + 0.1 y (+ 0.05 switch when a shared switch tensor is passed); records batch sizes."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, level, y=None, switch=None, **_):
        self.calls.append(x.shape[0])
        eps = torch.tanh(x) + 0.1 * y.view(-1, 1, 1, 1).to(x.dtype)
        if switch is not None:
            eps = eps + 0.05 * switch.sum()
        return Prediction.from_eps(x, level, eps)


def test_cfg_batches_shared_inputs_once_and_separates_differing_ones():
    level = GUIDE_DIFFUSION.trajectory.level(torch.full((3,), 300))
    x, y = torch.randn(3, 4, 2, 2), torch.tensor([1, 2, 3])
    shared = torch.ones(2)  # not per-sample: one object for both branches
    den = Branchy()
    cfg = ClassifierFreeGuidance(den, scale=2.0, uncond_kwargs={"y": torch.zeros_like(y)})
    out = cfg(x, level, y=y, switch=shared, extra=None)
    assert den.calls == [6]
    cond, uncond = den(x, level, y=y, switch=shared), den(x, level, y=torch.zeros_like(y), switch=shared)
    torch.testing.assert_close(out.eps, uncond.eps + 2.0 * (cond.eps - uncond.eps))
    den.calls.clear()
    cfg2 = ClassifierFreeGuidance(den, scale=2.0, uncond_kwargs={"y": torch.zeros_like(y), "switch": torch.zeros(2)})
    cfg2(x, level, y=y, switch=shared)
    assert den.calls == [3, 3]  # a non-batch input that differs between branches: two calls


def test_cfg_on_a_channel_subset_keeps_the_conditional_rest():
    """DiT guides the first 3 of its 4 latent channels; the 4th and the variance come from the conditional."""
    level = GUIDE_DIFFUSION.trajectory.level(torch.full((3,), 300))
    x, y = torch.randn(3, 4, 2, 2), torch.tensor([1, 2, 3])
    den = Branchy()
    out = ClassifierFreeGuidance.on_eps(den, 4.0, uncond_kwargs={"y": torch.zeros_like(y)}, channels=3)(x, level, y=y)
    cond, uncond = den(x, level, y=y), den(x, level, y=torch.zeros_like(y))
    torch.testing.assert_close(out.eps[:, :3], uncond.eps[:, :3] + 4.0 * (cond.eps[:, :3] - uncond.eps[:, :3]))
    torch.testing.assert_close(out.eps[:, 3:], cond.eps[:, 3:])
    a, s = level.coefficient(level.alpha, x), level.coefficient(level.sigma, x)
    torch.testing.assert_close(a * out.x0 + s * out.eps, x, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        ClassifierFreeGuidance.on_posterior_mean(den, 1.0, uncond_kwargs={"y": y}).__class__(
            den, w=1.0, uncond_kwargs={"y": y}, on="posterior_mean", channels=3)


# ------------------------------------------------------------------------------------------------ injection
def tiny_unet() -> UNetModel:
    torch.manual_seed(0)
    model = UNetModel(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                      attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16, num_classes=4,
                      use_scale_shift_norm=True)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def test_unet_exposes_hook_points_without_changing_its_state_dict():
    model = tiny_unet()
    hooks = hook_points(model)
    assert "output_blocks.0.0.hook_out" in hooks and "middle_block.1.attention.hook_q" in hooks
    assert not any("hook" in key for key in model.state_dict())


def test_feature_injection_replays_a_pass_exactly_and_is_inert_outside_its_range():
    """Record every ResBlock output of a pass with label 0; a pass with label 2 from the same noise, injecting
    them at every step, reproduces the recorded pass exactly (the output only sees the last block); with an
    empty range it is exactly the plain label-2 pass."""
    diffusion = create_gaussian_diffusion(steps=100, timestep_respacing="ddim5")
    unet = tiny_unet()
    denoiser = DiscreteDenoiser(unet, "eps", train_trajectory=diffusion.train_trajectory, clip_denoised=True)
    resblocks = [h for h in hook_points(unet) if h.endswith("hook_out")]
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    label = lambda k: {"y": torch.full((2,), k)}  # noqa: E731

    def run(den, k):
        return sample_ddim(den, diffusion.trajectory, x, model_kwargs=label(k))

    injection = FeatureInjection(denoiser, resblocks)
    with injection.recording():
        source = run(injection, 0)
    assert len(injection.store) == len(resblocks) * 5
    with injection.injecting():
        replay = run(injection, 2)
    assert torch.equal(replay, source)
    plain = run(denoiser, 2)
    never = FeatureInjection(denoiser, {h: TimestepRange(0, 0, closed="neither") for h in resblocks})
    never.store = injection.store
    with never.injecting():
        untouched = run(never, 2)
    assert torch.equal(untouched, plain) and (plain - source).abs().max() > 1e-3
    with pytest.raises(ValueError, match="not hook points"):
        FeatureInjection(denoiser, ["input_blocks.0"])
