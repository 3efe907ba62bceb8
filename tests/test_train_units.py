"""The training loop's parts, checked against closed forms in one process."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from guided_diffusion import dist_util, logger
from guided_diffusion.train import (LossSecondMomentResampler, MixedPrecisionTrainer, Trainer, UniformSampler,
                                    atomic_save, companion_paths, latest_checkpoint, parse_ema_rates,
                                    parse_resume_step_from_filename)


class Linear(Trainer):
    """A deterministic least-squares problem: no noise, so any two runs must agree to rounding."""

    def compute_loss(self, batch, cond):
        return ((self.ddp_model(batch) - cond["target"]) ** 2).mean()


def fixed_data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)
    while True:
        yield x, {"target": y}


def make(**kw) -> Linear:
    torch.manual_seed(0)
    args = dict(model=nn.Linear(3, 2), data=fixed_data(), batch_size=8, lr=0.1, log_interval=1000,
                save_interval=1000, progress=False)
    return Linear(**{**args, **kw})


def test_microbatching_does_not_change_the_update():
    full, micro = make(microbatch=-1), make(microbatch=3)  # 3 + 3 + 2: unequal pieces
    for _ in range(3):
        full.run_step(*next(full.data))
        micro.run_step(*next(micro.data))
    for a, b in zip(full.model.parameters(), micro.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_ema_follows_its_update_rule():
    t = make(ema_rate="0.9,0.5")
    before = [p.detach().clone() for p in t.model.parameters()]
    t.run_step(*next(t.data))
    after = list(t.model.parameters())
    for rate, ema in zip([0.9, 0.5], t.ema_params):
        for e, b, a in zip(ema, before, after):
            torch.testing.assert_close(e, rate * b + (1 - rate) * a.detach())


def test_lr_anneals_linearly_and_stops_there():
    t = make(lr_anneal_steps=4)
    lrs = []
    while not t._finished():
        t.run_step(*next(t.data))
        lrs.append(t.opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.075, 0.05, 0.025])
    assert t.total_steps == 4


def test_ema_rates_parse_and_reject_nonsense():
    assert parse_ema_rates("0.9999,0.999") == [0.9999, 0.999]
    assert parse_ema_rates("") == []
    with pytest.raises(ValueError, match="ema_rate"):
        parse_ema_rates("1.5")


def test_checkpoint_names():
    assert parse_resume_step_from_filename("/x/model001200.pt") == 1200
    assert parse_resume_step_from_filename("/x/weights.pt") == 0
    paths = companion_paths("/r/model000040.pt", [0.9999])
    assert paths == {"opt": "/r/opt000040.pt", "state": "/r/train_state000040.pt",
                     "ema_0.9999": "/r/ema_0.9999_000040.pt"}


def test_latest_checkpoint_ignores_other_files(tmp_path):
    for name in ["model000010.pt", "model000200.pt", "model000030.pt", ".model000300.pt.x.tmp", "modelfoo.pt"]:
        (tmp_path / name).write_bytes(b"")
    assert os.path.basename(latest_checkpoint(str(tmp_path))) == "model000200.pt"


def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "model000001.pt"
    atomic_save({"w": torch.ones(3)}, str(path))
    real_save = torch.save

    def crash(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"w": torch.zeros(3)}, str(path))
    with pytest.raises(OSError):
        atomic_save({"w": torch.zeros(3)}, str(tmp_path / "model000002.pt"))
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == ["model000001.pt"]  # no temp files, no new name
    torch.testing.assert_close(torch.load(path, weights_only=True)["w"], torch.ones(3))  # old file intact


class _Diffusion:
    num_timesteps = 4


def test_loss_second_moment_sampler_weights_and_state():
    s = LossSecondMomentResampler(_Diffusion(), history_per_term=2, uniform_prob=0.2)
    np.testing.assert_array_equal(s.weights(), np.ones(4))  # uniform until warmed up
    s.update_with_all_losses([0, 0, 1, 1, 2, 2, 3], [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0])
    np.testing.assert_array_equal(s.weights(), np.ones(4))  # t=3 has one loss only
    s.update_with_all_losses([3, 0], [4.0, 3.0])  # t=0 history becomes [1, 3]
    rms = np.sqrt([5.0, 4.0, 9.0, 16.0])
    expected = 0.8 * rms / rms.sum() + 0.2 / 4
    np.testing.assert_allclose(s.weights(), expected)
    idx, w = s.sample(1000, "cpu", generator=np.random.default_rng(0))
    np.testing.assert_allclose(w.numpy(), 1 / (4 * expected[idx.numpy()]), rtol=1e-6)
    copy = LossSecondMomentResampler(_Diffusion(), history_per_term=2, uniform_prob=0.2)
    copy.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(copy.weights(), s.weights())
    assert UniformSampler(_Diffusion()).sample(3, "cpu")[1].tolist() == [1.0, 1.0, 1.0]


class HalfLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1, bias=False)

    def convert_to_fp16(self):
        self.lin.half()

    def forward(self, x):
        return self.lin(x.to(self.lin.weight.dtype)).float()


def test_fp16_loss_scaling_unscales_steps_and_backs_off_on_overflow():
    torch.manual_seed(0)
    model = HalfLinear()
    w0 = model.lin.weight.detach().clone()
    mp = MixedPrecisionTrainer(model=model, use_fp16=True, initial_lg_loss_scale=8.0, fp16_scale_growth=0.5)
    opt = torch.optim.SGD(mp.master_params, lr=0.1)
    x = torch.ones(2, 4)
    mp.zero_grad()
    mp.backward(model(x).sum())
    assert mp.optimize(opt)
    # d/dw sum(w.x) over 2 rows of ones = 2 per weight, unscaled from 2^8 before the step.
    torch.testing.assert_close(mp.master_params[0], w0 - 0.1 * 2, atol=1e-3, rtol=0)
    assert model.lin.weight.dtype == torch.float16
    torch.testing.assert_close(model.lin.weight.float(), mp.master_params[0].detach(), atol=1e-3, rtol=0)
    assert mp.lg_loss_scale == 8.5
    kept = mp.master_params[0].detach().clone()
    mp.zero_grad()
    mp.backward(model(x).sum() * 1e30)  # overflows fp16 gradients
    assert not mp.optimize(opt)
    assert mp.lg_loss_scale == 7.5
    torch.testing.assert_close(mp.master_params[0].detach(), kept)
    sd = mp.master_params_to_state_dict(mp.master_params)
    assert sd["lin.weight"].dtype == torch.float32


def test_logger_means_and_widening_csv(tmp_path):
    logger.configure(str(tmp_path), format_strs=["csv", "log"])
    logger.logkv("step", 1)
    logger.logkv_mean("loss", 1.0)
    logger.logkv_mean("loss", 2.0)
    assert logger.dumpkvs() == {"step": 1, "loss": 1.5}
    logger.logkv("step", 2)
    logger.logkv_mean("acc", 0.123456789)
    logger.dumpkvs()
    logger.log("free text")
    with open(tmp_path / "progress.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["loss", "step", "acc"]
    assert rows[1] == ["1.5", "1", ""] and rows[2] == ["", "2", "0.123456789"]
    assert "free text" in (tmp_path / "log.txt").read_text()
    logger.configure(str(tmp_path / "other"), format_strs=[])  # detach from tmp_path


def test_launcher_detection(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert dist_util.launcher() == "single"
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("PMI_SIZE", "2")
    assert dist_util.launcher() == "mpi"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist_util.launcher() == "torchrun"
    assert dist_util.parse_gpus("0, 3") == [0, 3] and dist_util.parse_gpus("") is None
    with pytest.raises(ValueError, match="--gpus"):
        dist_util.parse_gpus("first")


def test_bf16_autocast_runs_the_forward_in_bfloat16_and_keeps_fp32_weights():
    seen = []

    class Probe(Linear):
        def compute_loss(self, batch, cond):
            out = self.ddp_model(batch)
            seen.append(out.dtype)
            return ((out.float() - cond["target"]) ** 2).mean()

    torch.manual_seed(0)
    t = Probe(model=nn.Linear(3, 2), data=fixed_data(), batch_size=8, lr=0.1, use_bf16=True, progress=False)
    fp32 = make()
    for _ in range(3):
        t.run_step(*next(t.data))
        fp32.run_step(*next(fp32.data))
    assert seen == [torch.bfloat16] * 3
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    for a, b in zip(t.model.parameters(), fp32.model.parameters()):  # bf16 keeps ~3 significant digits
        torch.testing.assert_close(a, b, atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match="not both"):
        MixedPrecisionTrainer(model=nn.Linear(1, 1), use_fp16=True, use_bf16=True)
