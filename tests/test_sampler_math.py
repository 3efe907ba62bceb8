"""Sampler maths on analytic data: DDPM, DDIM and classifier guidance against closed forms.

Gaussian data x0 ~ N(mu, C) diffused by x_t = a_t x0 + s_t eps has x_t ~ N(a_t mu, a_t^2 C + s_t^2 I), and
its ideal eps-predictor E[eps | x_t] = s_t P_t (x_t - a_t mu), P_t = (a_t^2 C + s_t^2 I)^-1, is affine in x_t.
Every DDPM or DDIM step is then affine in x_t plus fresh Gaussian noise, so the output of a whole chain is
exactly Gaussian with moments that float64 numpy computes from the schedule alone (``chain_moments``; the
step formulas are derived here from alpha_bar, independently of the package). The tests check

- the package's samples against those exact moments within a few standard errors (implementation), and
  the exact moments against the data's (the sampler's discretisation and prior-mismatch error is small);
- per sample, that each chain equals a float64 re-run of the step formulas with the same noise draws;
- for a two-Gaussian mixture with its ideal noisy classifier p(y | x_t) (closed form, like its ideal eps),
  that guidance moves the class balance to the predicted value. With scale 1 the guided eps,
  eps - s_t grad log p_t(y | x_t) = -s_t grad log p_t(x_t | y), is exactly the ideal eps of component y,
  so guided DDIM samples N(mu_y, v I) through the same affine chain, and the predicted balance is exact.

Statistical tolerances are K_SE = 4 standard errors (two-sided p = 6e-5 per check for a correct sampler;
the seeds are fixed, so the outcome is deterministic). CPU only, analytic models, a few seconds per test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from guided_diffusion.guidance import GradientGuidedDenoiser, classifier_cond_fn
from guided_diffusion.samplers import sample_ancestral, sample_ddim
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.toy import GaussianMixture

K_SE = 4.0


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The analytic models work on tensors of a few thousand numbers: intra-op threads only add
    synchronisation, which makes the runtime erratic on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# Schedules, written from their published definitions (not read from the package).
def reference_alpha_bar(schedule: str, steps: int = 1000) -> np.ndarray:
    if schedule == "linear":  # DDPM: betas linspace(1e-4, 0.02)
        return np.cumprod(1.0 - np.linspace(1e-4, 0.02, steps))
    # improved DDPM: abar(t) = f(t) / f(0), f(t) = cos^2((t + 0.008) / 1.008 * pi / 2), betas capped at 0.999
    def f(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)]
    return np.cumprod(1.0 - np.array(betas))


def make_diffusion(schedule: str, respacing: str = "", sigma_small: bool = False):
    return create_gaussian_diffusion(steps=1000, noise_schedule=schedule, timestep_respacing=respacing,
                                     learn_sigma=False, sigma_small=sigma_small)


def flat(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.reshape(len(x), dim).double()


def train_levels(diffusion):
    """The training process' (alpha, sigma) arrays: what the oracle's networks read at train indices."""
    train = diffusion.train_trajectory
    return train.alphas, train.sigmas


def recording(model, seen_t):
    def model_fn(x, t, **kwargs):
        if seen_t is not None:
            seen_t.append(t.clone())
        return model(x, t, **kwargs)
    return model_fn


# ------------------------------------------------------------------------------------------------
# The analytic oracle (guided_diffusion.toy) supplies the ideal networks; the reference maths below is written
# out here, from the data's parameters alone.
class Gaussian:
    """x0 ~ N(mean, cov) in ``dim`` channels; data tensors are (N, dim, 1, 1), or (N, 1, 1) when dim = 1."""

    def __init__(self, mean, cov):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.cov = np.atleast_2d(np.asarray(cov, dtype=np.float64))
        self.dim = len(self.mean)
        self.oracle = GaussianMixture([1.0], [self.mean], [self.cov])

    def shape(self, n: int):
        return (n, 1, 1) if self.dim == 1 else (n, self.dim, 1, 1)

    def eps_affine(self, a: float, s: float):
        """E[eps | x_t] = M x_t + k (the reference closed form)."""
        precision = np.linalg.inv(a * a * self.cov + s * s * np.eye(self.dim))
        return s * precision, -s * a * precision @ self.mean

    def model(self, diffusion, seen_t=None):
        return recording(self.oracle.ideal_model(*train_levels(diffusion)), seen_t)


class Mixture:
    """x0 ~ sum_k pi_k N(mu_k, var I): the oracle's ideal eps and noisy classifier, and the reference Bayes rule."""

    def __init__(self, weights, means, var):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.var = float(var)
        self.dim = self.means.shape[1]
        self.oracle = GaussianMixture(self.weights, self.means, [self.var] * len(self.weights))

    def component(self, k: int) -> Gaussian:
        return Gaussian(self.means[k], self.var * np.eye(self.dim))

    def model(self, diffusion):
        return self.oracle.ideal_model(*train_levels(diffusion))

    def classifier(self, diffusion):
        """Logits of the ideal noisy classifier, called as classifier(x_t, t) with the train index t."""
        return self.oracle.ideal_classifier(*train_levels(diffusion))

    def exact_cond_fn(self, diffusion, scale: float = 1.0):
        """scale * grad log p(y | x_t) in closed form (the oracle's), as an ADM cond_fn of train indices."""
        alphas, sigmas = (torch.from_numpy(v) for v in train_levels(diffusion))

        def cond_fn(x, t, y=None, **_):
            index = t.long().cpu()
            return scale * self.oracle.class_grad(x, alphas[index], sigmas[index], y)
        return cond_fn

    def bayes_rule(self):
        """The clean mixture's Bayes rule is linear: class 1 iff w . x > b."""
        w = (self.means[1] - self.means[0]) / self.var
        b = ((self.means[1] ** 2).sum() - (self.means[0] ** 2).sum()) / (2 * self.var) + math.log(
            self.weights[0] / self.weights[1])
        return w, b

    def classify(self, x: torch.Tensor) -> np.ndarray:
        w, b = self.bayes_rule()
        return (flat(x, self.dim).numpy() @ w > b).astype(np.int64)

    def prob_class0(self, mean, cov) -> float:
        """P(Bayes rule says 0) for a sample from N(mean, cov): the overlap mass, in closed form."""
        w, b = self.bayes_rule()
        return float(norm.cdf((b - w @ mean) / math.sqrt(w @ cov @ w)))


# ------------------------------------------------------------------------------------------------
# The exact chain, from alpha_bar alone.
def reference_steps(diffusion, schedule: str, sampler: str, eta: float = 0.0):
    """Each step (noisiest first) as (a_t, s_t, c_x0, c_eps, c_xt, noise_std): x_prev = c_x0 x0_hat + c_eps
    eps_hat + c_xt x_t + noise_std z, with x0_hat = (x_t - s_t eps_hat) / a_t.

    Between kept levels t and p (p = clean after the last): beta = 1 - abar_t / abar_p and the posterior
    q(x_p | x_t, x0) has mean sqrt(abar_p) beta / (1 - abar_t) x0 + sqrt(abar_t / abar_p) (1 - abar_p) /
    (1 - abar_t) x_t and variance beta (1 - abar_p) / (1 - abar_t). DDPM draws with that variance
    ("fixed_small") or beta ("fixed_large"), never on the last step; DDIM (Song et al. eq. 12) moves to
    sqrt(abar_p) x0_hat + sqrt(1 - abar_p - c^2) eps_hat + c z with c = eta * sqrt(posterior variance).
    """
    abar = reference_alpha_bar(schedule)[np.asarray(diffusion.timestep_map)]
    steps = []
    for i in range(len(abar) - 1, -1, -1):
        at, ap = abar[i], (abar[i - 1] if i > 0 else 1.0)
        beta = 1.0 - at / ap
        post_var = beta * (1.0 - ap) / (1.0 - at)
        a, s = math.sqrt(at), math.sqrt(1.0 - at)
        if sampler == "ddim":
            c = eta * math.sqrt(post_var)
            steps.append((a, s, math.sqrt(ap), math.sqrt(max(1.0 - ap - c * c, 0.0)), 0.0, c))
        else:
            std = 0.0 if i == 0 else math.sqrt(post_var if sampler == "fixed_small" else beta)
            steps.append((a, s, math.sqrt(ap) * beta / (1.0 - at), 0.0,
                          math.sqrt(at / ap) * (1.0 - ap) / (1.0 - at), std))
    return steps


def step_affine(data: Gaussian, step):
    """A step with the ideal model of ``data`` as x_prev = A x_t + b + noise_std z."""
    a, s, c_x0, c_eps, c_xt, _ = step
    m, k = data.eps_affine(a, s)
    eye = np.eye(data.dim)
    return c_x0 * (eye - s * m) / a + c_eps * m + c_xt * eye, c_x0 * (-s * k / a) + c_eps * k


def chain_moments(data: Gaussian, steps):
    """Exact mean and covariance of the chain's output from x_T ~ N(0, I)."""
    mean, cov = np.zeros(data.dim), np.eye(data.dim)
    for step in steps:
        a_mat, b = step_affine(data, step)
        mean = a_mat @ mean + b
        cov = a_mat @ cov @ a_mat.T + step[-1] ** 2 * np.eye(data.dim)
    return mean, cov


def replay_chain(data: Gaussian, steps, x_T: torch.Tensor, noises):
    """The chain run sample by sample in float64 with the package's recorded noise draws."""
    x = flat(x_T, data.dim).numpy()
    for step, z in zip(steps, noises):
        a_mat, b = step_affine(data, step)
        x = x @ a_mat.T + b + step[-1] * flat(z, data.dim).numpy()
    return x


# ------------------------------------------------------------------------------------------------
# Running the package and judging the statistics.
def seeded_noise(seed: int, record=None):
    """A reproducible noise_fn (optionally recording every draw)."""
    gen = torch.Generator().manual_seed(seed)

    def noise_fn(x):
        z = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        if record is not None:
            record.append(z.clone())
        return z
    return noise_fn


def run(diffusion, model_fn, x_T, sampler: str, eta: float = 0.0, seed: int = 1, **kwargs):
    """DDPM (p_sample_loop) or DDIM (ddim_sample_loop) from x_T, unclipped, on the CPU."""
    kwargs.setdefault("noise_fn", seeded_noise(seed))
    common = dict(noise=x_T, clip_denoised=False, device="cpu", **kwargs)
    if sampler == "ddim":
        return diffusion.ddim_sample_loop(model_fn, x_T.shape, eta=eta, **common)
    return diffusion.p_sample_loop(model_fn, x_T.shape, **common)


def start_noise(shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def assert_moments(samples: np.ndarray, mean, cov, slack_mean=0.0, slack_cov=0.0, what=""):
    """Sample mean and covariance of (N, d) samples against N(mean, cov).

    Gaussian sampling errors: Var(mean_i) = C_ii / N and Var(S_ij) = (C_ii C_jj + C_ij^2) / (N - 1); each
    entry may differ by K_SE standard errors (+ an optional known bias ``slack``).
    """
    n = len(samples)
    mean, cov = np.asarray(mean), np.atleast_2d(cov)
    var = np.diag(cov)
    se_mean = np.sqrt(var / n)
    se_cov = np.sqrt((np.outer(var, var) + cov ** 2) / (n - 1))
    got_mean, got_cov = samples.mean(0), np.atleast_2d(np.cov(samples, rowvar=False))
    assert np.all(np.abs(got_mean - mean) <= K_SE * se_mean + slack_mean), (what, got_mean, mean, se_mean)
    assert np.all(np.abs(got_cov - cov) <= K_SE * se_cov + slack_cov), (what, got_cov, cov, se_cov)


GAUSS_1D = Gaussian([0.8], [[0.3]])
GAUSS_2D = Gaussian([1.5, -0.5], [[0.5, 0.3], [0.3, 1.5]])  # correlated: checks the whole covariance


# ------------------------------------------------------------------------------------------------
# The premise: the package's forward process is the one the ideal model assumes.
@pytest.mark.parametrize("schedule,respacing", [("linear", ""), ("cosine", ""), ("cosine", "ddim50")])
def test_ideal_model_attains_the_minimum_training_loss(schedule, respacing):
    """training_losses (q_sample + eps target) at the ideal model gives the minimum MSE a_t^2 tr(C P_t) / d.

    E|eps - eps_hat|^2 with eps_hat = s P (a (x0 - mu) + s eps) is tr((I - s^2 P)^2) + s^2 a^2 tr(P C P)
    = a^2 tr(C P) (using I - s^2 P = a^2 C P). Tolerance: K_SE standard errors of the per-sample losses.
    A respaced process trains at its kept steps: step k is original index timestep_map[k], which the model
    must receive (it reads a_t, s_t from it; a wrong index would raise the loss above the minimum).
    """
    diffusion = make_diffusion(schedule, respacing)
    abar = reference_alpha_bar(schedule)
    np.testing.assert_allclose(diffusion.train_trajectory.alphas ** 2, abar, rtol=1e-12)
    np.testing.assert_allclose(diffusion.alphas_cumprod, abar[diffusion.timestep_map], rtol=1e-12)
    data, n = GAUSS_2D, 20000
    gen = torch.Generator().manual_seed(3)
    root = torch.from_numpy(np.linalg.cholesky(data.cov))
    x0 = torch.from_numpy(data.mean) + torch.randn(n, 2, generator=gen, dtype=torch.float64) @ root.T
    x0 = x0.float().reshape(n, 2, 1, 1)
    model = data.model(diffusion)
    last = diffusion.num_timesteps - 1
    for step in (0, last // 20, last * 3 // 10, last * 7 // 10, last):
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.full((n,), step, dtype=torch.long)
        mse = diffusion.training_losses(model, x0, t, noise=noise)["mse"].double().numpy()
        a2 = abar[diffusion.timestep_map[step]]
        expected = a2 * np.trace(data.cov @ np.linalg.inv(a2 * data.cov + (1 - a2) * np.eye(2))) / 2
        assert abs(mse.mean() - expected) <= K_SE * mse.std() / math.sqrt(n), (step, mse.mean(), expected)


@pytest.mark.parametrize("respacing", ["ddim50", "100"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_model_and_cond_fn_receive_original_train_indices(respacing, sampler):
    """Respaced loops call the model and the cond_fn with the original indices, noisiest first."""
    diffusion = make_diffusion("linear", respacing)
    mix = Mixture([0.5, 0.5], [[-1.0], [1.0]], 0.25)
    seen_model, seen_cond = [], []
    model = GAUSS_1D.model(diffusion, seen_model)

    def cond_fn(x, t, y=None):
        seen_cond.append(t.clone())
        return mix.exact_cond_fn(diffusion)(x, t, y=y)

    y = torch.zeros(8, dtype=torch.long)
    run(diffusion, model, start_noise((8, 1, 1)), sampler, cond_fn=cond_fn, model_kwargs={"y": y})
    expected = sorted(diffusion.timestep_map, reverse=True)
    assert expected[0] > 900 and len(expected) == int(respacing.replace("ddim", ""))
    for seen in (seen_model, seen_cond):
        assert [int(t[0]) for t in seen] == expected
        assert all(t.dtype == torch.long and bool((t == t[0]).all()) for t in seen)


# ------------------------------------------------------------------------------------------------
# Item 1: DDPM and DDIM with the ideal model recover Gaussian data.
SAMPLER_CASES = [
    # (schedule, respacing, sampler, eta, data)
    ("linear", "", "fixed_large", 0.0, GAUSS_2D),
    ("cosine", "", "fixed_small", 0.0, GAUSS_1D),
    ("cosine", "250", "fixed_large", 0.0, GAUSS_2D),
    ("linear", "ddim100", "ddim", 0.0, GAUSS_2D),
    ("cosine", "250", "ddim", 0.0, GAUSS_1D),
    ("linear", "250", "ddim", 1.0, GAUSS_1D),
    ("cosine", "ddim100", "ddim", 1.0, GAUSS_2D),
]
CASE_IDS = [f"{c[0]}-{c[1] or '1000'}-{c[2]}-eta{c[3]:g}-{c[4].dim}d" for c in SAMPLER_CASES]


@pytest.mark.parametrize("schedule,respacing,sampler,eta,data", SAMPLER_CASES, ids=CASE_IDS)
def test_sampler_recovers_gaussian_data(schedule, respacing, sampler, eta, data):
    """Samples match the chain's exact output law within K_SE standard errors, and that law is the data's
    up to the sampler's own error: the prior mismatch (x_T ~ N(0, I), not N(a_T mu, a_T^2 C + s_T^2 I);
    it persists only through deterministic DDIM, up to 0.01 std here) and an O(1 / steps) variance error
    (largest for the posterior variance, i.e. fixed_small and DDIM eta = 1: -5.4% with 100 steps). We bound
    it by 0.03 std for the means and 6% for the covariance. The samples therefore recover the data mean
    and covariance within sampling error plus that closed-form bias, which is also asserted directly."""
    diffusion = make_diffusion(schedule, respacing, sigma_small=(sampler == "fixed_small"))
    n = 8000 if diffusion.num_timesteps == 1000 else 20000
    x_T = start_noise(data.shape(n))
    out = run(diffusion, data.model(diffusion), x_T, "ddim" if sampler == "ddim" else "ddpm", eta)
    samples = flat(out, data.dim).numpy()

    mean, cov = chain_moments(data, reference_steps(diffusion, schedule, sampler, eta))
    assert_moments(samples, mean, cov, what="exact chain law")
    scale = np.sqrt(np.outer(np.diag(data.cov), np.diag(data.cov)))
    assert np.all(np.abs(mean - data.mean) <= 0.03 * np.sqrt(np.diag(data.cov))), (mean, data.mean)
    assert np.all(np.abs(cov - data.cov) <= 0.06 * scale), (cov, data.cov)
    assert_moments(samples, data.mean, data.cov, slack_mean=np.abs(mean - data.mean),
                   slack_cov=np.abs(cov - data.cov), what="data law")


REPLAY_CASES = [
    ("linear", "", "fixed_large", 0.0),
    ("cosine", "100", "fixed_small", 0.0),
    ("cosine", "", "ddim", 0.0),
    ("linear", "ddim50", "ddim", 1.0),
    ("linear", "ddim50", "ddim", 0.5),
]


@pytest.mark.parametrize("schedule,respacing,sampler,eta", REPLAY_CASES)
def test_sampler_steps_match_the_reference_formulas(schedule, respacing, sampler, eta):
    """Sample by sample, the package's chain equals the float64 reference chain driven by the same noise
    draws (recorded through noise_fn; one draw per step, the last included). float64 inputs keep the
    package's own rounding ~1e-12, so any wrong coefficient shows up far above the 1e-8 tolerance."""
    diffusion = make_diffusion(schedule, respacing, sigma_small=(sampler == "fixed_small"))
    data = GAUSS_2D
    x_T = start_noise(data.shape(256), dtype=torch.float64)
    noises = []
    out = run(diffusion, data.model(diffusion), x_T, "ddim" if sampler == "ddim" else "ddpm", eta,
              noise_fn=seeded_noise(5, noises))
    assert out.dtype == torch.float64 and len(noises) == diffusion.num_timesteps
    expected = replay_chain(data, reference_steps(diffusion, schedule, sampler, eta), x_T, noises)
    np.testing.assert_allclose(flat(out, data.dim).numpy(), expected, rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# Item 2: classifier guidance with the ideal noisy classifier of a two-Gaussian mixture.
MIX = Mixture([0.3, 0.7], [[-1.0, -1.0], [1.0, 1.0]], 0.25)  # 5.7 std apart; overlap mass 0.4% and 0.1%
N_MIX = 4000


def requested_labels(q0: float, n: int = N_MIX) -> torch.Tensor:
    """round(q0 n) requests of class 0, the rest of class 1 (fixed, so only the sampler is random)."""
    n0 = int(round(q0 * n))
    return torch.cat([torch.zeros(n0), torch.ones(n - n0)]).long()


@pytest.mark.parametrize("schedule,respacing,sampler,eta", [
    ("linear", "ddim100", "ddim", 0.0),
    ("cosine", "200", "ddim", 1.0),
    ("linear", "", "fixed_large", 0.0),
])
def test_unguided_class_balance_is_the_prior(schedule, respacing, sampler, eta):
    """Without guidance the Bayes-classified balance is pi_0 (1 - e_0) + pi_1 e_1 with e_k the clean
    overlap masses; tolerance K_SE binomial standard errors sqrt(p (1 - p) / N) = 0.007. (The samplers'
    few-% variance error moves the e_k by < 1e-3.)"""
    diffusion = make_diffusion(schedule, respacing, sigma_small=(sampler == "fixed_small"))
    out = run(diffusion, MIX.model(diffusion), start_noise((N_MIX, 2, 1, 1)), "ddim" if sampler == "ddim"
              else "ddpm", eta)
    p0 = sum(MIX.weights[k] * MIX.prob_class0(MIX.means[k], MIX.var * np.eye(2)) for k in (0, 1))
    frac0 = float(np.mean(MIX.classify(out) == 0))
    assert abs(frac0 - p0) <= K_SE * math.sqrt(p0 * (1 - p0) / N_MIX), (frac0, p0)


def check_guided_samples(out, y, laws, slack_balance=0.0, slack_mean=0.0, slack_cov=0.0):
    """``laws[k]`` = (mean, cov) expected for the samples requested as class k.

    Asserts those samples' moments (``assert_moments``), then the Bayes-classified class-0 fraction,
    predicted as (n_0 P_0 + n_1 P_1) / N with P_k = P(rule says 0) under law k, overlap mass included.
    Requests are fixed, so the count is a sum of independent Bernoullis, with
    SE = sqrt(sum_k n_k P_k (1 - P_k)) / N, about 1e-3 here: far tighter than the move from the prior 0.3
    to q_0 that is being tested.
    """
    samples = flat(out, 2).numpy()
    predicted, variance = 0.0, 0.0
    for k, (mean, cov) in enumerate(laws):
        chosen = (y == k).numpy()
        if not chosen.any():
            continue
        assert_moments(samples[chosen], mean, cov, slack_mean, slack_cov, what=f"requested class {k}")
        p_k = MIX.prob_class0(mean, cov)
        predicted += chosen.sum() * p_k / len(y)
        variance += chosen.sum() * p_k * (1 - p_k) / len(y) ** 2
    frac0 = float(np.mean(MIX.classify(out) == 0))
    assert abs(frac0 - predicted) <= K_SE * math.sqrt(variance) + slack_balance, (frac0, predicted)
    return frac0, predicted


@pytest.mark.parametrize("schedule,respacing,eta", [
    ("linear", "ddim100", 0.0),
    ("cosine", "ddim100", 0.0),
    ("linear", "200", 1.0),
])
@pytest.mark.parametrize("q0", [1.0, 0.5, 0.0])
def test_ddim_guidance_hits_the_requested_balance(schedule, respacing, eta, q0):
    """Guided DDIM with the ideal classifier (the package's classifier_cond_fn, scale 1) samples p(x0 | y):
    the samples requested as class k follow the exact Gaussian chain of component k, so both their
    moments and the class balance have exact predictions (no slack)."""
    diffusion = make_diffusion(schedule, respacing)
    y = requested_labels(q0)
    cond_fn = classifier_cond_fn(MIX.classifier(diffusion), scale=1.0)
    out = run(diffusion, MIX.model(diffusion), start_noise((N_MIX, 2, 1, 1)), "ddim", eta, cond_fn=cond_fn,
              model_kwargs={"y": y})
    steps = reference_steps(diffusion, schedule, "ddim", eta)
    laws = [chain_moments(MIX.component(k), steps) for k in (0, 1)]
    _, predicted = check_guided_samples(out, y, laws)
    assert abs(predicted - q0) < 0.005  # the prediction is q0 up to the small overlap mass


@pytest.mark.parametrize("schedule,sigma_small", [("linear", False), ("cosine", True)])
@pytest.mark.parametrize("q0", [1.0, 0.5])
def test_ddpm_guidance_moves_the_balance(schedule, sigma_small, q0):
    """Ancestral guidance shifts the step mean by Sigma_t grad log p(y | x_t), while the exact conditional
    step (the ideal eps of component y) shifts it by beta_t / sqrt(alpha_t) grad log p(y | x_t). So DDPM
    guidance is conditional sampling with the gradient scaled by sqrt(alpha_t) (fixed_large: >= 0.99) or
    also by (1 - abar_{t-1}) / (1 - abar_t) = 1 - O(1 / t) (fixed_small: well below 1 only in the last few
    dozen steps, at noise s_t < 0.2 where p(y | x_t) is saturated except between the components):
    approximate, but close. The prediction is the one of the exact DDPM chain of component y, with
    allowances for that bias of 0.01 in the balance and 0.02 in each mean and covariance entry (4% of the
    component's std, 8% of its variance; measured with 25000 samples per class, the bias is below 0.0005
    in the balance and 0.005 in the moments): far below the moves guidance must make, 0.2 to 0.7 in the
    balance (from the prior 0.3) and 2.8 between the class means."""
    diffusion = make_diffusion(schedule, sigma_small=sigma_small)
    y = requested_labels(q0)
    cond_fn = classifier_cond_fn(MIX.classifier(diffusion), scale=1.0)
    out = run(diffusion, MIX.model(diffusion), start_noise((N_MIX, 2, 1, 1)), "ddpm", cond_fn=cond_fn,
              model_kwargs={"y": y})
    steps = reference_steps(diffusion, schedule, "fixed_small" if sigma_small else "fixed_large")
    laws = [chain_moments(MIX.component(k), steps) for k in (0, 1)]
    frac0, _ = check_guided_samples(out, y, laws, slack_balance=0.01, slack_mean=0.02, slack_cov=0.02)
    assert frac0 - MIX.weights[0] > 0.15  # the right direction, from the prior 0.3


# ------------------------------------------------------------------------------------------------
# Consistency of the guidance plumbing.
def test_classifier_cond_fn_is_the_exact_log_likelihood_gradient():
    """classifier_cond_fn (autograd through log_softmax) equals the closed-form scaled gradient."""
    diffusion = make_diffusion("cosine")
    x = start_noise((64, 2, 1, 1), seed=7) * 1.5
    y = requested_labels(0.5, 64)
    for t_index in (0, 100, 500, 999):
        t = torch.full((64,), t_index, dtype=torch.long)
        got = classifier_cond_fn(MIX.classifier(diffusion), scale=2.5)(x, t, y=y)
        want = MIX.exact_cond_fn(diffusion, scale=2.5)(x, t, y=y)
        assert got.shape == x.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_gradient_guided_denoiser_equals_ddim_cond_fn(eta):
    """The cond_fn as a score shift inside the denoiser gives the same DDIM samples as ADM's cond_fn path."""
    diffusion = make_diffusion("linear", "ddim50")
    y = requested_labels(0.5, 512)
    cond_fn = classifier_cond_fn(MIX.classifier(diffusion), scale=3.0)
    model = MIX.model(diffusion)
    x_T = start_noise((512, 2, 1, 1))
    ref = run(diffusion, model, x_T, "ddim", eta, cond_fn=cond_fn, model_kwargs={"y": y}, seed=9)
    guided = GradientGuidedDenoiser(diffusion.denoiser(model), cond_fn)
    got = sample_ddim(guided, diffusion.trajectory, x_T, eta=eta, clip_denoised=False, model_kwargs={"y": y},
                      noise_fn=seeded_noise(9))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    unguided = run(diffusion, model, x_T, "ddim", eta, seed=9)
    assert (got - unguided).abs().max() > 0.5  # guidance did act


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_generic_samplers_equal_the_adm_loops(variance):
    """sample_ancestral / sample_ddim over diffusion.denoiser and diffusion.trajectory reproduce
    p_sample_loop / ddim_sample_loop draw for draw."""
    diffusion = make_diffusion("cosine", "ddim50", sigma_small=(variance == "fixed_small"))
    model = GAUSS_2D.model(diffusion)
    x_T = start_noise((128, 2, 1, 1))
    denoiser, trajectory = diffusion.denoiser(model), diffusion.trajectory
    got = sample_ancestral(denoiser, trajectory, x_T, variance=variance, clip_denoised=False,
                           noise_fn=seeded_noise(4))
    torch.testing.assert_close(got, run(diffusion, model, x_T, "ddpm", seed=4), rtol=0, atol=0)
    got = sample_ddim(denoiser, trajectory, x_T, eta=1.0, clip_denoised=False, noise_fn=seeded_noise(4))
    torch.testing.assert_close(got, run(diffusion, model, x_T, "ddim", 1.0, seed=4), rtol=0, atol=0)
