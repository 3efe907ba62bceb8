"""The denoiser contract at any (alpha, sigma): every base denoiser maps off-grid levels to its own network
time, and Heun (with and without churn), Euler/DDIM and DDIM inversion run on every family, checked against
the analytic oracle's exact probability-flow ODE solution and data law.

The oracle is one Gaussian with a full (correlated) covariance, x0 ~ N(mu, C): its PF-ODE has the closed form
u(rho) - mu = (C + rho^2 I)^(1/2) (C + rho_0^2 I)^(-1/2) (u_0 - mu) in u = x / alpha, rho = sigma / alpha.
It is wrapped three ways: as an ADM discrete-time eps network (train indices of the linear 1000-step schedule),
as a v-objective network in continuous time (cosine log-SNR), and as an analytic variance-exploding denoiser.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guided_diffusion.denoisers.continuous import ContinuousDenoiser
from guided_diffusion.denoisers.discrete import DiscreteDenoiser
from guided_diffusion.diffusion.continuous import ContinuousDiffusion, LogSNRSchedule
from guided_diffusion.samplers import ddim_invert, ddim_invert_loop, sample_ddim, sample_euler, sample_heun
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.timesteps import DiscreteSchedule, NoiseLevel, TimeUnit
from guided_diffusion.toy import GaussianMixture
from guided_diffusion.trajectory import Trajectory, karras_sigmas

COV = np.array([[0.5, 0.3], [0.3, 1.5]])
MEAN = np.array([0.8, -0.5])
ORACLE = GaussianMixture([1.0], [MEAN], [COV])
ADM = create_gaussian_diffusion(steps=1000, noise_schedule="linear")
COSINE = LogSNRSchedule("cosine")


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


def denoisers():
    train = ADM.train_trajectory
    return {
        "adm_discrete": DiscreteDenoiser(ORACLE.ideal_model(train.alphas, train.sigmas), "eps",
                                         train_trajectory=train),
        "continuous_v": ContinuousDenoiser(ORACLE.continuous_model(COSINE, "v"), "v", COSINE),
        "analytic_ve": ORACLE.denoiser(),
    }


def start(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def exact_endpoint(trajectory: Trajectory, x_top: torch.Tensor) -> torch.Tensor:
    top = trajectory.level(torch.full((len(x_top),), len(trajectory) - 1))
    return ORACLE.ode_solution(x_top, top, trajectory.final_level(len(x_top)))


# ------------------------------------------------------------------------------------------------ denoisers
def off_grid_levels(n: int = 6):
    """VE levels (alpha = 1) and VP levels at edm sigmas that are on no training grid."""
    rho = torch.tensor([0.037, 0.31, 1.0, 2.9, 17.0, 63.0], dtype=torch.float64)[:n]
    vp_alpha = torch.rsqrt(1 + rho ** 2)
    return [NoiseLevel.at(torch.ones_like(rho), rho), NoiseLevel.at(vp_alpha, rho * vp_alpha)]


@pytest.mark.parametrize("name", ["adm_discrete", "continuous_v"])
def test_network_denoisers_are_exact_at_off_grid_levels(name):
    """At levels on no training grid (VE and VP alike), the discrete and continuous denoisers give the oracle's
    exact x0 and eps: the level is mapped to the network's own time and x to its own scale. (The continuous
    network receives its time in float32, hence its looser tolerance.)"""
    denoiser, exact = denoisers()[name], ORACLE.denoiser()
    tol = 1e-9 if name == "adm_discrete" else 1e-6
    for level in off_grid_levels():
        x0, eps = start(6, 1), start(6, 2)
        x = level.coefficient(level.alpha, x0) * x0 + level.coefficient(level.sigma, eps) * eps
        got, want = denoiser(x, level), exact(x, level)
        torch.testing.assert_close(got.x0, want.x0, rtol=tol, atol=tol)
        torch.testing.assert_close(got.eps, want.eps, rtol=tol, atol=tol)


def test_discrete_denoiser_feeds_adm_integer_indices_on_its_grid_and_fractions_off_it():
    seen = []
    train = ADM.train_trajectory
    model = ORACLE.ideal_model(train.alphas, train.sigmas)
    denoiser = DiscreteDenoiser(lambda x, t: seen.append(t) or model(x, t), "eps", train_trajectory=train)
    spaced = create_gaussian_diffusion(steps=1000, timestep_respacing="ddim25")
    denoiser(start(2), spaced.trajectory.level(torch.tensor([5, 5])))
    assert seen[-1].dtype == torch.long and seen[-1].tolist() == [200, 200]
    schedule = DiscreteSchedule(train.alphas, train.sigmas)
    rho = np.sqrt((1 - ADM.alphas_cumprod) / ADM.alphas_cumprod)
    level = NoiseLevel.at(torch.ones(2, dtype=torch.float64), torch.tensor([rho[200], np.sqrt(rho[300] * rho[301])]))
    denoiser(start(2), level)
    assert seen[-1].tolist()[0] == 200.0  # on a grid level, even when reached from another family
    expected = 300 + (np.log(rho[300] * rho[301]) / 2 - np.log(rho[300])) / (np.log(rho[301]) - np.log(rho[300]))
    assert seen[-1].tolist()[1] == pytest.approx(expected, abs=1e-9)  # interpolated in log(sigma / alpha)
    assert schedule.index_at(NoiseLevel.at(1.0, 1e5)).item() == 999.0  # clamped beyond the grid


@pytest.mark.parametrize("schedule", ["linear", "sigmoid", "cosine", "legacy"])
def test_log_snr_schedules_invert(schedule):
    s = LogSNRSchedule(schedule)
    t = torch.linspace(0.003, 0.997, 101, dtype=torch.float64)
    assert (s.inverse(s(t)) - t).abs().max().item() < 1e-9


def test_continuous_denoiser_without_its_schedule_refuses_other_units():
    denoiser = ContinuousDenoiser(lambda x, t: x, "eps")
    with pytest.raises(ValueError, match="schedule="):
        denoiser(start(1), NoiseLevel.at(1.0, 0.5))


# ------------------------------------------------------------------------------------------------ samplers
@pytest.mark.parametrize("sampler,order", [("heun", 2), ("ddim", 1), ("euler", 1)])
def test_deterministic_samplers_converge_to_the_exact_ode_solution_at_their_order(sampler, order):
    """On EDM's sigma grid (0.02 .. 80, rho 7), 18 and 64 steps, every family lands on the exact PF-ODE endpoint
    with an error that shrinks as steps^-order (Heun 2, Euler/DDIM 1), identically for the three families."""
    errors = {}
    for name, denoiser in denoisers().items():
        for n in (18, 64):
            trajectory = Trajectory.karras(n, 0.02, 80.0)
            x = start(256) * trajectory.prior_std
            if sampler == "heun":
                out = sample_heun(denoiser, trajectory, x)
            elif sampler == "euler":
                out = sample_euler(denoiser, trajectory, x)
            else:
                out = sample_ddim(denoiser, trajectory, x, clip_denoised=False)
            errors[name, n] = (out - exact_endpoint(trajectory, x)).abs().max().item()
    for name in denoisers():
        ratio = errors[name, 18] / errors[name, 64]
        assert (64 / 18) ** order * 0.9 < ratio < (64 / 18) ** (order + 0.5), (name, errors)
        assert errors[name, 64] < (0.01 if order == 2 else 0.15), errors
        assert errors[name, 18] == pytest.approx(errors["analytic_ve", 18], rel=1e-6)


def test_ddim_on_each_familys_own_grid_converges_at_first_order():
    """DDIM on the ADM respaced grid and on the continuous process' own grid (start: the VP prior)."""
    for make in (lambda n: create_gaussian_diffusion(steps=1000, timestep_respacing=str(n)).trajectory,
                 lambda n: ContinuousDiffusion(logsnr_schedule="cosine", logsnr_min=-10).trajectory(n)):
        errors = []
        for n in (25, 100):
            trajectory = make(n)
            x = start(256)
            assert trajectory.prior_std == 1.0
            denoiser = denoisers()["adm_discrete"] if trajectory.unit == TimeUnit.TRAIN_INDEX else \
                denoisers()["continuous_v"]
            out = sample_ddim(denoiser, trajectory, x, clip_denoised=False)
            errors.append((out - exact_endpoint(trajectory, x)).abs().max().item())
        assert 4 * 0.8 < errors[0] / errors[1] < 4 * 1.5, errors


@pytest.mark.parametrize("name", ["adm_discrete", "continuous_v", "analytic_ve"])
def test_heun_with_churn_recovers_the_data_law(name):
    """EDM's stochastic sampler (S_churn 40: gamma = sqrt(2) - 1 at 18 steps) samples N(mu, C) on every family:
    the mean within 4 standard errors and the covariance within its O(1/steps) discretisation bias, which
    shrinks from 18 to 64 steps at least at first order; the churn noise is drawn through noise_fn, so the runs
    are seeded."""
    n = 20000
    bias = {}
    for steps in (18, 64):
        trajectory = Trajectory.karras(steps, 0.02, 80.0)
        gen = torch.Generator().manual_seed(2)
        out = sample_heun(denoisers()[name], trajectory, start(n, 1) * trajectory.prior_std, s_churn=40,
                          noise_fn=lambda z: torch.randn(z.shape, generator=gen, dtype=z.dtype))
        samples = out.reshape(n, 2).numpy()
        se_mean = np.sqrt(np.diag(COV) / n)
        assert np.all(np.abs(samples.mean(0) - MEAN) < 4 * se_mean)
        bias[steps] = np.abs(np.cov(samples, rowvar=False) - COV).max()
    assert bias[64] < bias[18] * 18 / 64 and bias[64] < 0.08, bias


def test_churn_levels_are_off_grid_and_every_step_draws_noise():
    calls, draws = [], []
    oracle = ORACLE.denoiser()

    class Recorder(type(oracle)):
        def __call__(self, x, level, **kw):
            calls.append(level)
            return super().__call__(x, level, **kw)

    trajectory = Trajectory.karras(6, 0.02, 80.0)
    den = Recorder(ORACLE, "y", 0, None)
    sample_heun(den, trajectory, start(3) * 80, s_churn=3, s_tmin=0.1, s_tmax=10,
                noise_fn=lambda z: draws.append(1) or torch.zeros_like(z))
    assert len(draws) == 6 and len(calls) == 2 * 6 - 1  # EDM: noise every step, NFE = 2N - 1
    sigmas = karras_sigmas(6, 0.02, 80.0)
    churned = [float(c.edm_sigma[0]) for c in calls[0::2]]
    gamma = min(3 / 6, np.sqrt(2) - 1)
    expected = [s * (1 + gamma) if 0.1 <= s <= 10 else s for s in sigmas]
    np.testing.assert_allclose(churned, expected, rtol=1e-12)


def test_karras_grid_is_edms():
    # EDM's example grid for 18 steps (its paper and code), to the digits it is quoted with.
    quoted = [80, 57.59, 40.79, 28.37, 19.35, 12.91, 8.40, 5.32, 3.26, 1.92, 1.09, 0.585, 0.296, 0.140, 0.060,
              0.023, 0.0075, 0.002]
    np.testing.assert_allclose(karras_sigmas(18), quoted, rtol=1e-2, atol=5e-4)
    assert karras_sigmas(18)[-1] == pytest.approx(0.002)
    trajectory = Trajectory.karras(18)
    assert trajectory.prior_std == 80.0 and trajectory.beyond is None and trajectory.unit == TimeUnit.EDM_SIGMA


# ------------------------------------------------------------------------------------------------ inversion
def test_ddim_inversion_then_sampling_returns_the_data():
    """x0 -> DDIM inversion -> DDIM sampling on ADM's 1000 levels returns x0: to 1e-3 with one fixed-point
    refinement per step (the step then inverts DDIM's own step to third order); plain inversion errs at first
    order in the step, so its round-trip error falls about 4x from 250 to 1000 levels."""
    x0 = ORACLE.sample(64, torch.Generator().manual_seed(5))[0].reshape(64, 2, 1, 1)
    for name, denoiser in denoisers().items():
        full = create_gaussian_diffusion(steps=1000).trajectory
        refined = ddim_invert(denoiser, full, x0, refine=1)
        assert (sample_ddim(denoiser, full, refined, clip_denoised=False) - x0).abs().max() < 1e-3, name
    denoiser = ORACLE.denoiser()
    plain = {}
    for n in (250, 1000):
        trajectory = create_gaussian_diffusion(steps=1000, timestep_respacing=str(n)).trajectory
        back = sample_ddim(denoiser, trajectory, ddim_invert(denoiser, trajectory, x0), clip_denoised=False)
        plain[n] = (back - x0).abs().max().item()
    assert 3.0 < plain[250] / plain[1000] < 5.0 and plain[1000] < 1e-2, plain


def test_inversion_from_a_noisy_final_level_with_eps_at_the_current_level():
    """Stable Diffusion's DDIM ends at alpha_bar_0, not at clean data; the original PnP inverts from there with
    eps at the current level. The latents of every level are yielded, and sampling returns to the start."""
    base = create_gaussian_diffusion(steps=1000, noise_schedule="scaled_linear")
    abar0 = base.alphas_cumprod[0]
    t = base.trajectory
    trajectory = Trajectory(t.alphas[1:], t.sigmas[1:], t.times[1:], num_train_steps=1000,
                            final=(np.sqrt(abar0), np.sqrt(1 - abar0)))
    x = ORACLE.sample(16, torch.Generator().manual_seed(1))[0].reshape(16, 2, 1, 1)
    steps = list(ddim_invert_loop(ORACLE.denoiser(), trajectory, x, eps_at="current", refine=1))
    assert [s["index"] for s in steps] == list(range(len(trajectory)))
    back = sample_ddim(ORACLE.denoiser(), trajectory, steps[-1]["sample"], clip_denoised=False)
    assert (back - x).abs().max() < 1e-3
    with pytest.raises(ValueError, match="clean data"):
        next(ddim_invert_loop(ORACLE.denoiser(), t, x, eps_at="current"))


def test_trajectory_final_level_beyond_and_prior():
    vp = create_gaussian_diffusion(steps=1000).trajectory
    assert vp.prior_std == 1.0 and vp.beyond == (0.0, 1.0) and vp.final == (1.0, 0.0)
    ve = Trajectory.variance_exploding([0.5, 2.0, 10.0])
    assert ve.prior_std == 10.0 and ve.beyond is None
    from guided_diffusion.samplers import ddim_step
    with pytest.raises(ValueError, match="no level beyond"):
        ddim_step(ORACLE.denoiser(), ve, start(2), torch.tensor([2, 2]), reverse=True)
    with pytest.raises(ValueError, match="less noisy than level 0"):
        Trajectory.variance_exploding([0.5, 2.0], final=(1.0, 0.6))
