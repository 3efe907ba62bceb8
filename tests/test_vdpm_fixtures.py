"""Parity with the original VDPM code (tqch/v-diffusion-torch) on its golden fixture (float32, CPU).

Schedules and posterior coefficients to 1e-5; the stand-in model's DDIM samples (with and without guidance)
and one ancestral step to 1e-4, for every schedule and output type the fixture holds.
"""

from __future__ import annotations

import pytest
import torch

from conftest import load_fixture
from guided_diffusion.diffusion import (
    SCHEDULES,
    ContinuousDiffusion,
    LogSNRSchedule,
    ddim_from_logsnr,
    posterior_from_logsnr,
)
from guided_diffusion.samplers import ancestral_step
from guided_diffusion.vdpm import sample_vdpm

pytestmark = pytest.mark.fixtures

FIXTURE = "vdpm/vdpm_process.pt"
SAMPLE_SCHEDULES = ("cosine", "legacy")
OUT_TYPES = ("x0", "eps", "v")
WS = (0.0, 0.1, 1.0)
STEPS = 10


@pytest.fixture(scope="module")
def fixture():
    torch.set_num_threads(1)
    return load_fixture(FIXTURE)


class StandIn:
    """The fixture's analytic network out = tanh(a x + b t) + c y (t continuous time, y = 0 the null label).

    Records the batch size of every call, so tests can check that guidance batches both branches.
    """

    def __init__(self, spec: dict):
        self.a, self.b, self.c = float(spec["a"]), float(spec["b"]), float(spec["c"])
        self.batches = []

    def __call__(self, x, t, y=None):
        self.batches.append(x.shape[0])
        shape = (-1,) + (1,) * (x.ndim - 1)
        return torch.tanh(self.a * x + self.b * t.to(x.dtype).reshape(shape)) + self.c * y.to(x.dtype).reshape(shape)


def test_fixture_holds_what_the_tests_cover(fixture):
    # A new entry in the fixture must not go unchecked silently.
    assert set(fixture["stand_in_model"]) >= {"a", "b", "c"}
    ddim = {k for k in fixture if k.startswith("ddim_")}
    steps = {k for k in fixture if k.startswith("step_")}
    assert ddim == {f"ddim_{s}_{o}_w{w}" for s in SAMPLE_SCHEDULES for o in OUT_TYPES for w in WS}
    assert steps == {f"step_{s}_{o}" for s in SAMPLE_SCHEDULES for o in OUT_TYPES}
    assert {k[len("logsnr_"):] for k in fixture if k.startswith("logsnr_")} == set(SCHEDULES)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_matches_the_original(fixture, name):
    logsnr = LogSNRSchedule(name, logsnr_min=-20.0, logsnr_max=20.0)(fixture["t_grid"])
    assert logsnr.dtype == torch.float64
    assert (logsnr - fixture[f"logsnr_{name}"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("kind", ["fixed_small", "fixed_large", "fixed_medium", "ddim"])
def test_posterior_coefficients_match_the_original(fixture, kind):
    pairs = fixture["posterior_pairs"]
    schedule = LogSNRSchedule(pairs["schedule"])
    logsnr_t, logsnr_s = schedule(pairs["t"]), schedule(pairs["s"])
    if kind == "ddim":
        ours = ddim_from_logsnr(logsnr_t, logsnr_s, eta=0.0)
    else:
        ours = posterior_from_logsnr(logsnr_t, logsnr_s, kind, intp_frac=0.3)
    expected = fixture[f"posterior_{kind}"]
    for key in ("coef_xt", "coef_x0"):
        assert (ours[key] - expected[key].double()).abs().max().item() < 1e-5, key
    if kind == "ddim":
        assert torch.isneginf(expected["logvar"]).all() and torch.isneginf(ours["logvar"]).all()
    else:
        assert (ours["logvar"] - expected["logvar"].double()).abs().max().item() < 1e-5


@pytest.mark.parametrize("schedule", SAMPLE_SCHEDULES)
@pytest.mark.parametrize("out_type", OUT_TYPES)
@pytest.mark.parametrize("w", WS)
def test_ddim_samples_match_the_original(fixture, schedule, out_type, w):
    model = StandIn(fixture["stand_in_model"])
    process = ContinuousDiffusion(logsnr_schedule=schedule, model_out_type=out_type, sample_timesteps=STEPS)
    sample = sample_vdpm(process, model, fixture["noise"], fixture["labels"], w_guide=w, use_ddim=True)
    assert (sample - fixture[f"ddim_{schedule}_{out_type}_w{w}"]).abs().max().item() < 1e-4
    # Guidance runs both branches in one forward pass of twice the batch; w = 0 needs no unconditional pass.
    n = fixture["noise"].shape[0]
    assert model.batches == [2 * n if w > 0 else n] * STEPS


def test_the_fixture_pins_the_posterior_mean_convention(fixture):
    """The eps convention with the same strength (s = 1 + w) differs where clipping bites (eps output, w = 1)."""
    process = ContinuousDiffusion(logsnr_schedule="cosine", model_out_type="eps", sample_timesteps=STEPS)
    eps_form = sample_vdpm(process, StandIn(fixture["stand_in_model"]), fixture["noise"], fixture["labels"],
                              w_guide=1.0, use_ddim=True, guidance="eps")
    assert (eps_form - fixture["ddim_cosine_eps_w1.0"]).abs().max().item() > 1e-2


@pytest.mark.parametrize("schedule", SAMPLE_SCHEDULES)
@pytest.mark.parametrize("out_type", OUT_TYPES)
def test_ancestral_step_matches_the_original(fixture, schedule, out_type):
    step = fixture[f"step_{schedule}_{out_type}"]
    process = ContinuousDiffusion(logsnr_schedule=schedule, model_out_type=out_type, model_var_type="fixed_large",
                                  sample_timesteps=STEPS)
    index = torch.full((step["x_t"].shape[0],), int(step["step"]), dtype=torch.long)
    out = ancestral_step(process.denoiser(StandIn(fixture["stand_in_model"])), process.trajectory(), step["x_t"],
                         index, variance="fixed_large", model_kwargs={"y": fixture["labels"]})
    assert (out["mean"] - step["mean"]).abs().max().item() < 1e-4
    assert (out["log_variance"] - step["logvar"]).abs().max().item() < 1e-4
    assert (out["pred_xstart"] - step["pred_x0"]).abs().max().item() < 1e-4
    # Step index 6 of 10 goes from t = 0.7 to s = 0.6: the log-variance is the closed form log((1 - r) sigma_t^2).
    direct = process.posterior(torch.tensor([0.7]), torch.tensor([0.6]), "fixed_large")["logvar"]
    assert out["log_variance"][0, 0, 0, 0].item() == pytest.approx(direct.item(), abs=1e-5)
