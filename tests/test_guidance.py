"""Guidance composition: CFG conventions, classifier cond_fns, range gating and stacking wrappers."""

from __future__ import annotations

import pytest
import torch

from guided_diffusion.denoisers import Denoiser, Prediction
from guided_diffusion.guidance import (
    ClassifierFreeGuidance,
    GradientGuidedDenoiser,
    classifier_cond_fn,
    combine_cond_fns,
    restrict_cond_fn,
)
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.timesteps import TimestepRange, TimeUnit


class ToyDenoiser(Denoiser):
    """eps = tanh(x) + 0.1 * y (y = 0 is the null label); counts calls and batch sizes."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, level, y=None, **_):
        self.calls.append(x.shape[0])
        eps = torch.tanh(x) + 0.1 * y.view(-1, 1, 1, 1).to(x.dtype)
        return Prediction.from_eps(x, level, eps, var_values=x * 0 + y.view(-1, 1, 1, 1), var_kind="learned")


@pytest.fixture
def setting():
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="ddim10")
    level = diffusion.trajectory.level(torch.full((3,), 4))
    x = torch.randn(3, 2, 4, 4)
    y = torch.tensor([1, 2, 3])
    return diffusion, level, x, y


def test_cfg_conventions_agree_and_match_the_formula(setting):
    _, level, x, y = setting
    toy = ToyDenoiser()
    cond = toy(x, level, y=y)
    uncond = toy(x, level, y=torch.zeros_like(y))
    s_form = ClassifierFreeGuidance(toy, scale=3.0, uncond_kwargs={"y": torch.zeros_like(y)})(x, level, y=y)
    w_form = ClassifierFreeGuidance(toy, w=2.0, uncond_kwargs={"y": torch.zeros_like(y)})(x, level, y=y)
    expected_eps = uncond.eps + 3.0 * (cond.eps - uncond.eps)
    assert torch.allclose(s_form.eps, expected_eps, atol=1e-6)
    assert torch.allclose(w_form.eps, 3.0 * cond.eps - 2.0 * uncond.eps, atol=1e-6)
    assert torch.allclose(s_form.x0, w_form.x0, atol=1e-6)
    # x0 and eps stay consistent: x = alpha x0 + sigma eps.
    a, s = level.coefficient(level.alpha, x), level.coefficient(level.sigma, x)
    assert torch.allclose(a * s_form.x0 + s * s_form.eps, x, atol=1e-5)
    assert torch.equal(s_form.var_values, cond.var_values)  # variance from the conditional pass


def test_cfg_batches_both_passes_into_one_call(setting):
    _, level, x, y = setting
    toy = ToyDenoiser()
    ClassifierFreeGuidance(toy, scale=2.0, uncond_kwargs={"y": torch.zeros_like(y)})(x, level, y=y)
    assert toy.calls == [6]
    toy.calls.clear()
    one = ClassifierFreeGuidance(toy, scale=1.0, uncond_kwargs={"y": torch.zeros_like(y)})(x, level, y=y)
    assert torch.allclose(one.eps, toy(x, level, y=y).eps, atol=1e-6)  # scale 1 is the conditional model


def test_cfg_interval_skips_the_unconditional_pass(setting):
    _, level, x, y = setting  # level 4 of ddim10 is t = 400
    toy = ToyDenoiser()
    late = TimestepRange(0, 300, TimeUnit.TRAIN_INDEX)
    out = ClassifierFreeGuidance(toy, scale=5.0, uncond_kwargs={"y": torch.zeros_like(y)}, active=late)(
        x, level, y=y)
    assert toy.calls == [3]
    assert torch.allclose(out.eps, toy(x, level, y=y).eps)
    with pytest.raises(ValueError, match="exactly one"):
        ClassifierFreeGuidance(toy, scale=1.0, w=0.0, uncond_kwargs={})
    with pytest.raises(ValueError, match="does not pass"):
        ClassifierFreeGuidance(toy, scale=2.0, uncond_kwargs={"mask": 1})(x, level, y=y)


def _linear_classifier(weight):
    def classifier(x, t):
        return x.mean(dim=(2, 3)) @ weight.T + 0 * t.float()[:, None]
    return classifier


def test_classifier_cond_fn_is_the_scaled_log_softmax_gradient():
    weight = torch.randn(5, 2)
    x, t, y = torch.randn(3, 2, 4, 4), torch.tensor([7, 7, 7]), torch.tensor([0, 4, 2])
    grad = classifier_cond_fn(_linear_classifier(weight), scale=2.5)(x, t, y=y)
    probs = torch.softmax(x.mean(dim=(2, 3)) @ weight.T, dim=-1)
    # d/dx of log softmax(W m(x))[y] = (W[y] - probs @ W) / (H * W) at every pixel
    expected = (weight[y] - probs @ weight) / 16
    assert torch.allclose(grad, 2.5 * expected[:, :, None, None].expand_as(x), atol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        classifier_cond_fn(_linear_classifier(weight))(x, t)


def test_combine_and_restrict_cond_fns():
    weight = torch.randn(5, 2)
    fn = classifier_cond_fn(_linear_classifier(weight), scale=1.0)
    x, y = torch.randn(2, 2, 4, 4), torch.tensor([1, 3])
    t = torch.tensor([150, 650])
    both = combine_cond_fns(fn, fn)(x, t, y=y)
    assert torch.allclose(both, 2 * fn(x, t, y=y), atol=1e-6)
    early = restrict_cond_fn(fn, TimestepRange(0, 200))(x, t, y=y)
    assert torch.allclose(early[0], fn(x, t, y=y)[0]) and early[1].abs().max() == 0
    with pytest.raises(ValueError, match="train_index"):
        restrict_cond_fn(fn, TimestepRange(0, 1, TimeUnit.EDM_SIGMA))


def test_cfg_and_classifier_guidance_stack(setting):
    _, level, x, y = setting
    weight = torch.randn(5, 2)
    cond_fn = classifier_cond_fn(_linear_classifier(weight), scale=4.0)
    toy = ToyDenoiser()
    cfg = ClassifierFreeGuidance(toy, scale=2.0, uncond_kwargs={"y": torch.zeros_like(y)})
    stacked = GradientGuidedDenoiser(cfg, cond_fn)(x, level, y=y)
    grad = cond_fn(x, level.t, y=y)
    expected_eps = cfg(x, level, y=y).eps - level.coefficient(level.sigma, x) * grad
    assert torch.allclose(stacked.eps, expected_eps, atol=1e-5)
    assert stacked.var_kind == "learned"
    outside = GradientGuidedDenoiser(cfg, cond_fn, active=TimestepRange(0, 0.1, TimeUnit.SAMPLING_FRACTION))
    assert torch.allclose(outside(x, level, y=y).eps, cfg(x, level, y=y).eps)


def test_adm_loops_accept_a_guided_denoiser(setting):
    diffusion, _, x, y = setting
    from guided_diffusion.samplers import sample_ddim

    cfg = ClassifierFreeGuidance(ToyDenoiser(), scale=2.0, uncond_kwargs={"y": torch.zeros_like(y)})
    through_adm = diffusion.ddim_sample_loop(cfg, x.shape, noise=x, clip_denoised=False, model_kwargs={"y": y})
    direct = sample_ddim(cfg, diffusion.trajectory, x, clip_denoised=False, model_kwargs={"y": y})
    plain = diffusion.ddim_sample_loop(ToyDenoiser(), x.shape, noise=x, clip_denoised=False, model_kwargs={"y": y})
    assert torch.allclose(through_adm, direct) and (through_adm - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="pass device="):
        diffusion.ddim_sample_loop(cfg, x.shape, model_kwargs={"y": y})
