"""The training loop's parts, checked against closed forms in one process."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from guided_diffusion import dist_util, logger
from guided_diffusion.guidance.cfg import drop_labels
from guided_diffusion.train import (LossSecondMomentResampler, MixedPrecisionTrainer, Objective, StepRandom,
                                    Trainer, TrainLoop, UniformSampler, atomic_save, companion_paths,
                                    latest_checkpoint, linear_warmup_schedule, parse_ema_rates,
                                    parse_resume_step_from_filename, step_seed)
from guided_diffusion.train.checkpointing import checkpoint_sets, prune_checkpoints
from guided_diffusion.files import atomic_write_bytes
from script_runs import TINY_TRAIN, import_script


class LeastSquares(Objective):
    """A deterministic least-squares problem: no noise, so any two runs must agree to rounding."""

    def loss(self, model, batch, cond, draws):
        return ((model(batch) - cond["target"]) ** 2).mean()


class NoisyLeastSquares(Objective):
    """Least squares on inputs perturbed by the step's draws: noise from the global torch RNG (as the ADM
    objectives draw theirs) and per-example weights from the step's numpy generator."""

    def draw(self, batch, cond, rng):
        weights = torch.from_numpy(rng.numpy.uniform(0.5, 1.5, size=batch.shape[0])).float()
        return {"noise": torch.randn_like(batch), "weights": weights}

    def loss(self, model, batch, cond, draws):
        err = ((model(batch + draws["noise"]) - cond["target"]) ** 2).mean(dim=1)
        return (err * draws["weights"]).mean()


class DrawsPerMicroBatch(NoisyLeastSquares):
    """The same loss with its randomness drawn anew for every micro-batch (what a loop must not do)."""

    def __init__(self):
        self.rng = None

    def draw(self, batch, cond, rng):
        self.rng = rng
        return {}

    def loss(self, model, batch, cond, draws):
        return super().loss(model, batch, cond, super().draw(batch, cond, self.rng))


class Recording(NoisyLeastSquares):
    """Records every draw and the slice of the draws (and of the batch) each micro-batch's loss sees."""

    def __init__(self):
        self.draws, self.seen = [], []

    def draw(self, batch, cond, rng):
        out = super().draw(batch, cond, rng)
        out["index"] = torch.arange(batch.shape[0])
        self.draws.append({"batch": batch.clone(), **{k: v.clone() for k, v in out.items()}})
        return out

    def loss(self, model, batch, cond, draws):
        self.seen.append({"batch": batch.clone(), **{k: v.clone() for k, v in draws.items()}})
        return super().loss(model, batch, cond, draws)


def fixed_data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)
    while True:
        yield x, {"target": y}


def make(objective=None, **kw) -> Trainer:
    """A Trainer on the least-squares problem; tests that save pass their own save_dir."""
    torch.manual_seed(0)
    args = dict(model=nn.Linear(3, 2), objective=objective or LeastSquares(), data=fixed_data(), batch_size=8,
                lr=0.1, log_interval=1000, save_interval=1000, progress=False, save_dir="never-written")
    return Trainer(**{**args, **kw})


def test_microbatching_does_not_change_the_update():
    full, micro = make(microbatch=-1), make(microbatch=3)  # 3 + 3 + 2: unequal pieces
    for _ in range(3):
        full.run_step(*next(full.data))
        micro.run_step(*next(micro.data))
    for a, b in zip(full.model.parameters(), micro.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_draws_are_made_once_per_step_and_sliced_to_each_micro_batch():
    rec = Recording()
    t = make(rec, microbatch=3, seed=11)
    for _ in range(2):
        t.run_step(*next(t.data))
    assert len(rec.draws) == 2
    assert [s["index"].tolist() for s in rec.seen] == [[0, 1, 2], [3, 4, 5], [6, 7]] * 2
    for step, drawn in enumerate(rec.draws):
        pieces = rec.seen[3 * step:3 * step + 3]
        for key, full in drawn.items():
            torch.testing.assert_close(torch.cat([p[key] for p in pieces]), full, rtol=0, atol=0)
        # The step's streams come from step_seed(seed, step, rank): numpy directly, torch via the global seed.
        rng = StepRandom.from_seed(step_seed(11, step, 0))
        expected = torch.from_numpy(rng.numpy.uniform(0.5, 1.5, size=8)).float()
        torch.testing.assert_close(drawn["weights"], expected, rtol=0, atol=0)
        torch.manual_seed(step_seed(11, step, 0))
        torch.testing.assert_close(drawn["noise"], torch.randn(8, 3), rtol=0, atol=0)


def test_micro_batches_make_the_update_of_one_batch_with_random_draws():
    full, micro = make(NoisyLeastSquares()), make(NoisyLeastSquares(), microbatch=3)
    per_micro = make(DrawsPerMicroBatch(), microbatch=3)
    for _ in range(3):
        for t in (full, micro, per_micro):
            t.run_step(*next(t.data))
    for a, b in zip(full.model.parameters(), micro.model.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    # The check has teeth: drawing per micro-batch changes the update.
    gap = max(float((a - b).detach().abs().max())
              for a, b in zip(full.model.parameters(), per_micro.model.parameters()))
    assert gap > 1e-3


def test_diffusion_objective_accumulates_the_gradient_of_one_batch():
    """ADM's loss (t, weights and noise drawn for the whole batch) on a tiny UNet: 3 + 3 + 2 = 8."""
    from guided_diffusion.script_util import create_model_and_diffusion
    from script_runs import tiny_flags
    grads = []
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for microbatch in (-1, 3):
        torch.manual_seed(0)
        model, diffusion = create_model_and_diffusion(**tiny_flags(learn_sigma=True))
        with torch.no_grad():  # the zero-initialised layers would stop the gradient of everything before them
            for p in model.parameters():
                if not p.any():
                    p.normal_(0, 0.05)
        loop = TrainLoop(model=model, diffusion=diffusion, data=iter([]), batch_size=8, microbatch=microbatch,
                         lr=1e-3, ema_rate="", log_interval=1, save_interval=1000, resume_checkpoint="",
                         save_dir="never-written", progress=False)
        torch.manual_seed(5)
        loop.forward_backward(x, {}, StepRandom.from_seed(5))
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-4)


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


def test_lr_at_follows_the_warm_up_and_anneal_closed_forms_and_betas_reach_adamw():
    warm = make(lr_schedule=linear_warmup_schedule(0.1, 4), betas=(0.5, 0.75))
    assert [warm.lr_at(k) for k in range(6)] == pytest.approx([0.1 * min((k + 1) / 4, 1) for k in range(6)])
    assert warm.opt.param_groups[0]["betas"] == (0.5, 0.75)
    anneal = make(lr_anneal_steps=5)
    assert [anneal.lr_at(k) for k in range(5)] == pytest.approx([0.1 * (1 - k / 5) for k in range(5)])
    assert make().lr_at(0) == make().lr_at(10 ** 6) == 0.1
    custom = make(lr_schedule=lambda k: 0.5 ** k, lr_anneal_steps=3)  # schedule sets lr, anneal ends the run
    lrs = []
    while not custom._finished():
        custom.run_step(*next(custom.data))
        lrs.append(custom.opt.param_groups[0]["lr"])
    assert lrs == [1.0, 0.5, 0.25]
    for k in range(3):
        warm.run_step(*next(warm.data))
        assert warm.opt.param_groups[0]["lr"] == warm.lr_at(k)


class LabelledLinear(nn.Module):
    """x -> lin(x) + emb(y); records the labels of every forward pass."""

    def __init__(self):
        super().__init__()
        self.lin, self.emb, self.labels = nn.Linear(3, 1), nn.Embedding(11, 1), []

    def forward(self, x, y):
        self.labels.append(y.clone())
        return self.lin(x) + self.emb(y)


class LabelProbe(Objective):
    def __init__(self):
        self.drawn_labels = []

    def draw(self, batch, cond, rng):
        self.drawn_labels.append(cond["y"].clone())
        return {}

    def loss(self, model, batch, cond, draws):
        return (model(batch, cond["y"]) ** 2).mean()


def test_label_dropout_happens_before_the_forward_pass_with_the_rate_and_null_label():
    n, p, null = 4000, 0.3, 10
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, generator=g), torch.randint(0, 10, (n,), generator=g)
    probe, model = LabelProbe(), LabelledLinear()
    t = make(probe, model=model, batch_size=n, microbatch=1000, p_uncond=p, null_label=null, seed=2)
    t.run_step(x, {"y": y})
    seen = torch.cat(model.labels)
    torch.testing.assert_close(seen, probe.drawn_labels[0], rtol=0, atol=0)  # dropped before the draws, too
    dropped = seen == null
    assert abs(float(dropped.float().mean()) - p) < 0.04  # 4 standard deviations of the binomial rate
    assert torch.equal(seen[~dropped], y[~dropped])
    expected = drop_labels(y, p, null, StepRandom.from_seed(step_seed(2, 0, 0)).torch)
    assert torch.equal(seen, expected)
    assert float(t.model.emb.weight.grad[null].abs()) > 0  # the null label was trained
    plain = make(LabelProbe(), model=LabelledLinear(), batch_size=n, p_uncond=0.0)
    plain.run_step(x, {"y": y})
    assert torch.equal(plain.model.labels[0], y)
    unlabelled = make(p_uncond=0.1)
    with pytest.raises(ValueError, match="needs labels"):
        unlabelled.run_step(*next(unlabelled.data))
    with pytest.raises(ValueError, match="p_uncond"):
        make(p_uncond=1.5)


class Counting(LeastSquares):
    """An objective with state: the number of losses computed (stored for exact resume)."""

    def __init__(self):
        self.calls = 0

    def loss(self, model, batch, cond, draws):
        self.calls += 1
        return super().loss(model, batch, cond, draws)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state.get("calls", 0)


def test_checkpoints_land_in_save_dir_not_in_the_logger_folder(tmp_path):
    logger.configure(str(tmp_path / "log"), format_strs=["log"])
    t = make(Counting(), save_dir=str(tmp_path / "ckpt"), ema_rate="0.9", max_steps=2, save_interval=1)
    t.run_loop()
    assert sorted(os.listdir(tmp_path / "ckpt")) == [
        "ema_0.9_000001.pt", "ema_0.9_000002.pt", "model000001.pt", "model000002.pt", "opt000001.pt",
        "opt000002.pt", "train_state000001.pt", "train_state000002.pt"]
    assert sorted(os.listdir(tmp_path / "log")) == ["log.txt"]
    state = torch.load(tmp_path / "ckpt" / "train_state000002.pt", weights_only=True)
    assert state["step"] == 2 and state["calls"] == 2
    resumed = make(Counting(), save_dir=str(tmp_path / "ckpt"), resume_checkpoint=str(tmp_path / "ckpt"))
    assert resumed.total_steps == 2 and resumed.objective.calls == 2
    with pytest.raises(ValueError, match="save_dir"):
        make(save_dir="")
    logger.configure(str(tmp_path / "other"), format_strs=[])  # detach from tmp_path


def _set(folder, step, rates=("0.9",), model=True):
    names = ([f"model{step:06d}.pt"] if model else []) + [f"opt{step:06d}.pt", f"train_state{step:06d}.pt"]
    for name in names + [f"ema_{r}_{step:06d}.pt" for r in rates]:
        (folder / name).write_bytes(b"x")


def test_prune_keeps_the_newest_sets_whole_and_never_the_current_or_a_later_run(tmp_path, monkeypatch):
    for step in (1, 2, 3, 4):
        _set(tmp_path, step, rates=("0.9", "0.99") if step == 1 else ("0.9",))
    _set(tmp_path, 9)  # a later step than this run's: another run's, left alone
    _set(tmp_path, 0, model=False)  # companions whose model file an interrupted prune removed
    (tmp_path / "flags.json").write_text("{}")
    (tmp_path / ".model000001.pt.abc.tmp").write_bytes(b"")  # a temp file is nobody's checkpoint
    assert prune_checkpoints(str(tmp_path), 0, current=4) == []
    order = []
    real_remove = os.remove
    monkeypatch.setattr(os, "remove", lambda p: (order.append(os.path.basename(p)), real_remove(p)))
    removed = prune_checkpoints(str(tmp_path), 2, current=4)
    assert sorted(checkpoint_sets(str(tmp_path))) == [3, 4, 9]
    assert all(len(files) == 4 for files in checkpoint_sets(str(tmp_path)).values())  # whole sets kept
    assert len(removed) == 3 + 5 + 4  # step 0's leftovers, step 1 (two EMA rates), step 2
    assert order.index("model000001.pt") < order.index("opt000001.pt")  # a set loses its model file first
    assert order.index("model000002.pt") < order.index("ema_0.9_000002.pt")
    assert {"flags.json", ".model000001.pt.abc.tmp"} <= set(os.listdir(tmp_path))
    # At step 3 with step 4 protected (and later anyway), keep 1 removes nothing; at step 4 it removes step 3.
    prune_checkpoints(str(tmp_path), 1, current=3, protect=[4])
    assert sorted(checkpoint_sets(str(tmp_path))) == [3, 4, 9]
    prune_checkpoints(str(tmp_path), 1, current=4)
    assert sorted(checkpoint_sets(str(tmp_path))) == [4, 9]
    with pytest.raises(ValueError, match="keep"):
        prune_checkpoints(str(tmp_path), -1, current=4)


def test_prune_that_cannot_remove_a_model_file_keeps_its_companions(tmp_path, monkeypatch):
    _set(tmp_path, 1)
    _set(tmp_path, 2)
    real_remove = os.remove

    def locked(path):  # a reader holding the file open where the system forbids deleting it
        if os.path.basename(path) == "model000001.pt":
            raise PermissionError("in use")
        real_remove(path)

    monkeypatch.setattr(os, "remove", locked)
    assert prune_checkpoints(str(tmp_path), 1, current=2) == []
    assert sorted(checkpoint_sets(str(tmp_path))) == [1, 2] and len(checkpoint_sets(str(tmp_path))[1]) == 4
    monkeypatch.setattr(os, "remove", real_remove)
    prune_checkpoints(str(tmp_path), 1, current=2)  # retried at the next save
    assert sorted(checkpoint_sets(str(tmp_path))) == [2]


def test_trainer_keeps_checkpoints_and_a_resumed_run_prunes_after_every_rank_read_its_start(tmp_path):
    logger.configure(str(tmp_path / "log"), format_strs=["log"])
    folder = tmp_path / "ckpt"
    t = make(Counting(), save_dir=str(folder), ema_rate="0.9", max_steps=5, save_interval=1, keep_checkpoints=2)
    t.run_loop()
    assert sorted(checkpoint_sets(str(folder))) == [4, 5]
    assert sorted(os.listdir(folder)) == ["ema_0.9_000004.pt", "ema_0.9_000005.pt", "model000004.pt",
                                          "model000005.pt", "opt000004.pt", "opt000005.pt",
                                          "train_state000004.pt", "train_state000005.pt"]
    # Resume from step 5 with keep 1: the resumed set is read at start, and goes once a newer one is saved.
    resumed = make(Counting(), save_dir=str(folder), ema_rate="0.9", max_steps=7, save_interval=1,
                   keep_checkpoints=1, resume_checkpoint=str(folder))
    assert resumed.total_steps == 5 and resumed.objective.calls == 5
    resumed.run_loop()
    assert sorted(checkpoint_sets(str(folder))) == [7]
    assert len(os.listdir(folder)) == 4
    with pytest.raises(ValueError, match="keep_checkpoints"):
        make(keep_checkpoints=-1)
    logger.configure(str(tmp_path / "other"), format_strs=[])  # detach from tmp_path


def test_image_train_keep_checkpoints(tmp_path):
    """ADM's script: --keep_checkpoints N keeps the newest N sets (default 0: all, as ADM)."""
    image_train = import_script("image_train")
    parser = image_train.create_argparser()
    assert parser.parse_args([]).keep_checkpoints == 0
    image_train.main(TINY_TRAIN + ["--log_path", str(tmp_path / "run"), "--max_steps", "3", "--save_interval", "1",
                                   "--keep_checkpoints", "1", "--ema_rate", "0.99"])
    assert sorted(checkpoint_sets(str(tmp_path / "run"))) == [3]
    assert len(checkpoint_sets(str(tmp_path / "run"))[3]) == 4
    logger.configure(str(tmp_path / "other"), format_strs=[])


def test_grad_clipping_clips_the_global_norm_after_accumulation():
    x, cond = next(fixed_data())
    ref = make()
    ref.forward_backward(x, cond, StepRandom.from_seed(0))
    full = [p.grad.clone() for p in ref.model.parameters()]
    norm = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in full])))
    for max_norm in (0.25 * norm, 4 * norm):  # clipped, and left alone
        t = make(microbatch=3, max_grad_norm=max_norm)
        logger.dumpkvs()
        t.forward_backward(x, cond, StepRandom.from_seed(0))
        assert logger.dumpkvs()["grad_norm_unclipped"] == pytest.approx(norm, rel=1e-6)
        for g, p in zip(full, t.model.parameters()):
            torch.testing.assert_close(p.grad, g * min(1.0, max_norm / norm), atol=1e-6, rtol=1e-5)
    # Clipping each micro-batch's gradient instead would give another direction, so this test can tell.
    pieces = []
    for i in range(0, 8, 3):
        piece = make(batch_size=len(x[i:i + 3]))
        piece.forward_backward(x[i:i + 3], {"target": cond["target"][i:i + 3]}, StepRandom.from_seed(0))
        grads = [p.grad * len(x[i:i + 3]) / 8 for p in piece.model.parameters()]
        piece_norm = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
        pieces.append([g * min(1.0, 0.25 * norm / piece_norm) for g in grads])
    per_piece = [sum(gs) for gs in zip(*pieces)]
    assert max(float((a - b * 0.25).abs().max()) for a, b in zip(per_piece, full)) > 1e-3
    # fp16: the gradients carry the loss scale 2^lg; the norm is measured, clipped and logged without it.
    t = make(max_grad_norm=0.25 * norm)
    t.mp_trainer.use_fp16, t.mp_trainer.lg_loss_scale = True, 3.0
    for p, g in zip(t.model.parameters(), full):
        p.grad = g * 8
    logger.dumpkvs()
    t.clip_grad_norm()
    assert logger.dumpkvs()["grad_norm_unclipped"] == pytest.approx(norm, rel=1e-6)
    for p, g in zip(t.model.parameters(), full):
        torch.testing.assert_close(p.grad, g * 8 * 0.25, atol=1e-6, rtol=1e-5)


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


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask_as_open_does(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_save({"w": torch.ones(1)}, str(tmp_path / "model.pt"))
        atomic_write_bytes(b"x", str(tmp_path / "grid.png"))
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"model.pt": mode, "grid.png": mode, "plain.txt": mode}


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

    class Probe(Objective):
        def loss(self, model, batch, cond, draws):
            out = model(batch)
            seen.append(out.dtype)
            return ((out.float() - cond["target"]) ** 2).mean()

    t = make(Probe(), use_bf16=True)
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
