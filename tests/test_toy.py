"""The analytic Gaussian mixture used by the demo: its closed forms, and guidance through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guided_diffusion.guidance import classifier_cond_fn
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.toy import GaussianMixture


def test_single_component_eps_is_the_gaussian_closed_form():
    mixture = GaussianMixture([1.0], [[0.5, -1.0]], [0.3])
    x = torch.randn(5, 2, 1, 1)
    a, s = torch.full((5,), 0.8, dtype=torch.float64), torch.full((5,), 0.6, dtype=torch.float64)
    expected = 0.6 * (x.double().view(5, 2) - 0.8 * torch.tensor([0.5, -1.0])) / (0.64 * 0.3 + 0.36)
    assert torch.allclose(mixture.eps(x, a, s).view(5, 2).double(), expected, atol=1e-6)


def test_posterior_tends_to_the_prior_under_heavy_noise_and_is_normalised():
    mixture = GaussianMixture([0.3, 0.7], [[-1.0], [1.0]], [0.1, 0.1])
    x = torch.randn(4, 1)
    heavy = mixture.log_posterior(x, torch.full((4,), 1e-4), torch.ones(4)).exp()
    assert torch.allclose(heavy, torch.tensor([[0.3, 0.7]] * 4, dtype=torch.float64), atol=1e-3)
    clean = mixture.log_posterior(x, torch.ones(4), torch.full((4,), 0.5)).exp()
    assert torch.allclose(clean.sum(1), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture([0.5, 0.6], [[0.0], [1.0]], [1.0, 1.0])


def test_guided_ddim_through_the_ideal_classifier_gives_the_requested_class():
    mixture = GaussianMixture([0.3, 0.7], [[-1.5, 1.0], [1.5, -1.0]], [0.25, 0.25])
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="ddim50")
    train = diffusion.train_trajectory
    model = mixture.ideal_model(train.alphas, train.sigmas)
    cond_fn = classifier_cond_fn(mixture.ideal_classifier(train.alphas, train.sigmas), 1.0)
    n = 2000
    noise = torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(3))
    plain = diffusion.ddim_sample_loop(model, noise.shape, noise=noise, clip_denoised=False, device="cpu")
    guided = diffusion.ddim_sample_loop(model, noise.shape, noise=noise, clip_denoised=False, device="cpu",
                                        cond_fn=cond_fn, model_kwargs={"y": torch.zeros(n, dtype=torch.long)})
    leak = mixture.class_probability_given(1)[0]  # class-1 draws that the Bayes rule calls class 0
    prior_share = 0.3 * mixture.class_probability_given(0)[0] + 0.7 * leak
    se = np.sqrt(0.25 / n)
    assert abs(float((mixture.classify(plain.view(n, 2)) == 0).double().mean()) - prior_share) < 4 * se
    assert float((mixture.classify(guided.view(n, 2)) == 0).double().mean()) > 1 - 4 * se
