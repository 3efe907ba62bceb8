"""Classifier-free guidance on the continuous process: closed forms on a two-Gaussian mixture, both conventions
on the discrete (ADM) process, and label dropout that trains the unconditional branch."""

from __future__ import annotations

import math

import pytest
import torch

from guided_diffusion.denoisers import Prediction
from guided_diffusion.diffusion import ContinuousDiffusion
from guided_diffusion.guidance import ClassifierFreeGuidance, drop_labels
from guided_diffusion.samplers import ancestral_step, ddim_step, sample_ddim
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.toy import GaussianMixture
from guided_diffusion.vdpm import sample_vdpm

M, VAR = 0.02, 0.04  # class means +-M, per-class variance VAR: M / sqrt(VAR) = 0.1
NULL = 0


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def two_gaussians(dim: int):
    """The oracle's ideal x0-denoisers of x0 | y=1 ~ N(+M, VAR I), x0 | y=2 ~ N(-M, VAR I), and (y = 0, the null
    label) of their equal mixture. With V = alpha^2 VAR + sigma^2 and k = alpha VAR / V:
    E[x0 | x_t, y] = mu_y + k (x_t - alpha mu_y);
    E[x0 | x_t] = k x_t + (1 - alpha k) M tanh(alpha M sum(x_t) / V)   (p(1 | x_t) - p(2 | x_t) = tanh(...)).
    """
    return GaussianMixture([0.5, 0.5], [[M] * dim, [-M] * dim], [VAR, VAR]).denoiser(label_offset=1,
                                                                                     null_label=NULL)


def _cfg(convention, w, labels, dim=1):
    null = {"y": torch.full_like(labels, NULL)}
    if convention == "posterior_mean":
        return ClassifierFreeGuidance.on_posterior_mean(two_gaussians(dim), w, uncond_kwargs=null)
    return ClassifierFreeGuidance.on_eps(two_gaussians(dim), 1.0 + w, uncond_kwargs=null)


@pytest.mark.parametrize("convention", ["posterior_mean", "eps"])
@pytest.mark.parametrize("w", [0.0, 0.1, 1.0, 3.0])
def test_guided_prediction_separates_classes_by_one_plus_w(convention, w):
    """At any x_t the unconditional term is shared by both classes and cancels:
    x0_w(x, y=1) - x0_w(x, y=2) = (1 + w) (E[x0 | x, 1] - E[x0 | x, 2]) = (1 + w) * 2M sigma^2 / V."""
    process = ContinuousDiffusion(logsnr_schedule="cosine")
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    level = process.level(t)
    x = 0.3 * torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ones, twos = torch.ones(5, dtype=torch.long), torch.full((5,), 2)
    sep = _cfg(convention, w, ones, 4)(x, level, y=ones).x0 - _cfg(convention, w, twos, 4)(x, level, y=twos).x0
    a, s = level.alpha.reshape(-1, 1, 1, 1), level.sigma.reshape(-1, 1, 1, 1)
    expected = (1 + w) * 2 * M * s ** 2 / (a ** 2 * VAR + s ** 2)
    assert torch.allclose(sep, expected.expand_as(sep), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("w", [0.0, 0.1, 1.0, 3.0])
def test_sampled_class_separation_grows_as_one_plus_w(w):
    """End to end, DDIM over 20 steps with both classes from the same antithetic noise.

    Derivation (u = x / alpha, rho = sigma / alpha; DDIM is Euler for du/drho = (u - x0_w(u)) / rho):
    to first order in M / sqrt(VAR), tanh(z) ~ z makes the unconditional prediction linear, and the guided
    prediction is x0_w = VAR u / (VAR + rho^2) + (1 + w) mu_y rho^2 / (VAR + rho^2) + O(w M^2 u). The class
    mean m_u then obeys d(m_u - (1 + w) mu_y) / drho = rho (m_u - (1 + w) mu_y) / (VAR + rho^2), and each
    DDIM step multiplies m_u - (1 + w) mu_y by (VAR + rho_s rho_t) / (VAR + rho_t^2): from m_u = 0 at
    rho_max ~ 2e4 it decays to ~1e-5 of its start, at any step count. So the sample means are (1 + w) mu_y
    and the separation is (1 + w) * 2M, up to a relative O(w M^2 / VAR) = O(w / 100) from the neglected
    cubic of tanh (asserted as <= w M^2 / VAR; measured ~1/3 of it). A convention off by one (w instead of
    1 + w) or with the signs swapped misses by at least 1 / (1 + w) relative.
    """
    process = ContinuousDiffusion(logsnr_schedule="cosine")
    n = 2000
    z = torch.randn(n // 2, 1, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = torch.cat([z, -z, z, -z])
    labels = torch.cat([torch.ones(n, dtype=torch.long), torch.full((n,), 2)])
    denoiser = _cfg("posterior_mean", w, labels)
    out = sample_ddim(denoiser, process.trajectory(20), z, model_kwargs={"y": labels})
    separation = (out[:n].mean() - out[n:].mean()).item()
    assert abs(separation / (2 * M) - (1 + w)) / (1 + w) <= max(w * M ** 2 / VAR, 1e-4)
    assert out[:n].mean().item() == pytest.approx(-out[n:].mean().item(), abs=1e-12)  # mirror symmetry
    # No branch reaches the clipping bound here, so the eps convention with s = 1 + w samples the same.
    eps_form = sample_ddim(_cfg("eps", w, labels), process.trajectory(20), z, model_kwargs={"y": labels})
    assert torch.allclose(out, eps_form, atol=1e-12)
    assert denoiser.inner.calls == 20  # one batched forward per step


def test_process_sampler_uses_the_seed_convention_on_the_mixture():
    """ContinuousDiffusion.sample with w_guide wraps exactly ClassifierFreeGuidance.on_posterior_mean."""
    process = ContinuousDiffusion(logsnr_schedule="cosine", sample_timesteps=8)
    labels = torch.tensor([1, 2, 1, 2])
    z = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    via_process = sample_vdpm(process, two_gaussians(4), z, labels, w_guide=1.0, use_ddim=True)
    direct = sample_ddim(_cfg("posterior_mean", 1.0, labels, 4), process.trajectory(8), z, model_kwargs={"y": labels})
    assert torch.equal(via_process, direct)


# ------------------------------------------------------------------------------------------------------------
# Both conventions on the discrete (ADM) process
def _adm_model(x, t, y=None):
    """An eps network whose x0 often leaves [-1, 1], so clipping matters; y = 0 is its null label."""
    return torch.tanh(2 * x) + 0.4 * y.reshape(-1, 1, 1, 1).to(x.dtype) - 0.1 * t.reshape(-1, 1, 1, 1) / 1000


@pytest.mark.parametrize("index", [2, 6])
def test_both_conventions_on_the_adm_process(index):
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="ddim10")
    traj, w = diffusion.trajectory, 1.5
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y, null = torch.tensor([1, 2, 3]), torch.zeros(3, dtype=torch.long)
    idx = torch.full((3,), index)
    plain = diffusion.denoiser(_adm_model)

    def step(fn, denoiser, labels):
        return fn(denoiser, traj, x, idx, noise_fn=torch.zeros_like, model_kwargs={"y": labels})

    cond_a, uncond_a = step(ancestral_step, plain, y), step(ancestral_step, plain, null)
    assert (cond_a["pred_xstart"].abs() == 1).any()  # clipping is active in this setting
    # Seed convention: (1 + w) * mean_cond - w * mean_uncond of the clipped-x0 posterior means.
    seed = ClassifierFreeGuidance.on_posterior_mean(plain, w, uncond_kwargs={"y": null})
    guided_a = step(ancestral_step, seed, y)
    assert torch.allclose(guided_a["mean"], (1 + w) * cond_a["mean"] - w * uncond_a["mean"], atol=1e-10)
    cond_d, uncond_d = step(ddim_step, plain, y), step(ddim_step, plain, null)
    guided_d = step(ddim_step, seed, y)
    assert torch.allclose(guided_d["sample"], (1 + w) * cond_d["sample"] - w * uncond_d["sample"], atol=1e-10)
    # The other convention: uncond + s * (cond - uncond) on the raw eps, then the sampler clips x0.
    scale = 1 + w
    eps_form = ClassifierFreeGuidance.on_eps(plain, scale, uncond_kwargs={"y": null})
    level = traj.level(idx)
    raw_c, raw_u = plain(x, level, y=y), plain(x, level, y=null)
    guided_eps = raw_u.eps + scale * (raw_c.eps - raw_u.eps)
    expected_x0 = Prediction.from_eps(x, level, guided_eps).x0.clamp(-1, 1)
    assert torch.allclose(step(ancestral_step, eps_form, y)["pred_xstart"], expected_x0, atol=1e-10)
    # With clipping active the two conventions are different methods.
    assert (step(ancestral_step, eps_form, y)["mean"] - guided_a["mean"]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------------------
# Label dropout
class TinyConditional(torch.nn.Module):
    """x0-prediction = a * x + emb[y] (per channel), with row 0 of the embedding the null label."""

    def __init__(self, num_classes: int = 10, channels: int = 2):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.5))
        self.emb = torch.nn.Embedding(num_classes + 1, channels)
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append(y.clone())
        return self.a * x + self.emb(y)[:, :, None, None]


def test_label_dropout_trains_the_unconditional_branch():
    torch.manual_seed(0)
    model = TinyConditional()
    process = ContinuousDiffusion(model_out_type="x0", reweight_type="constant")
    x0 = torch.rand(16, 2, 3, 3) * 2 - 1
    labels = torch.randint(1, 11, (16,))
    out = process.training_loss(model, x0, labels, p_uncond=0.5, generator=torch.Generator().manual_seed(4))
    out["loss"].backward()
    dropped = out["labels"] == NULL
    assert 0 < int(dropped.sum()) < 16
    assert torch.equal(model.seen[0], out["labels"])  # the forward pass already saw the null labels
    assert torch.equal(out["labels"][~dropped], labels[~dropped])
    assert model.emb.weight.grad[NULL].abs().sum() > 1e-4  # the null embedding is trained

    # Without dropout, or with VDPM HEAD's order (mask after the forward), the null row gets no gradient.
    model.zero_grad()
    process.training_loss(model, x0, labels, p_uncond=0.0)["loss"].backward()
    assert model.emb.weight.grad[NULL].abs().sum() == 0
    model.zero_grad()
    t = process.sample_train_times(16)
    noise = torch.randn_like(x0)
    process.training_losses(model, x0, t, noise=noise, model_kwargs={"y": labels})["loss"].mean().backward()
    _ = drop_labels(labels, 0.5)  # too late: the loss was computed with the real labels
    assert model.emb.weight.grad[NULL].abs().sum() == 0


def test_drop_labels_rate_and_conventions():
    gen = torch.Generator().manual_seed(5)
    labels = torch.randint(1, 11, (20000,))
    dropped = drop_labels(labels, 0.1, generator=gen)
    rate = (dropped == 0).float().mean().item()
    assert abs(rate - 0.1) < 5 * math.sqrt(0.1 * 0.9 / 20000)
    assert torch.equal(dropped[dropped != 0], labels[dropped != 0])
    # An ADM/DiT-style model reserves index num_classes instead of 0.
    dit = drop_labels(labels - 1, 1.0, null_label=10)
    assert bool((dit == 10).all())
    # Multi-tag labels (CelebA's 40 attributes): a dropped row becomes the all-zero vector.
    tags = (torch.rand(1000, 40, generator=gen) > 0.5).float()
    out = drop_labels(tags, 0.3, generator=gen)
    kept = (out == tags).all(dim=1)
    assert bool((out[~kept] == 0).all()) and 200 < int((~kept).sum()) < 400
    assert torch.equal(drop_labels(labels, 0.0), labels)
    with pytest.raises(ValueError):
        drop_labels(labels, 1.5)
