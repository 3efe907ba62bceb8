"""VDPM training and generation: gradient accumulation (one process and two torchrun ranks), SIGKILL + resume,
the seed's EMA warm-up, per-seed reproducible generation, the network wrapper and bad input."""

from __future__ import annotations

import csv
import json
import signal
import time

import numpy as np
import pytest
import torch

from guided_diffusion.cli import run_cli
from guided_diffusion.diffusion import ContinuousDiffusion
from guided_diffusion.models.unet import UNetModel
from guided_diffusion.models.vdpm import create_vdpm_model
from guided_diffusion.train import StepRandom
from guided_diffusion.vdpm.training import VDPMTrainLoop
from guided_diffusion.flags import load_config
from guided_diffusion.train.checkpointing import checkpoint_sets
from guided_diffusion.vdpm import DEFAULT_CONFIG_DIR, model_from_flags, tags_to_int
from script_runs import import_script, run_script, start_script
from test_vdpm_datasets import _celeba
from test_vdpm_original_unet import MANIFEST

TINY = ["--dataset", "digits", "--image-size", 8, "--hid-channels", 32, "--ch-multipliers", "1,2",
        "--num-res-blocks", 1, "--apply-attn", "0,0", "--drop-rate", 0, "--sample-timesteps", 6,
        "--no-progress", "--num-save-images", 4, "--log-intv", 1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_model(seed=0, hid=32, **kw):
    torch.manual_seed(seed)
    model = create_vdpm_model(image_size=8, in_channels=3, model_out_type=kw.pop("out", "v"), hid_channels=hid,
                              ch_multipliers="1,2", num_res_blocks=1, apply_attn="0,1", **kw)
    with torch.no_grad():  # zero-initialised layers (the head, each block's last conv) would block gradients
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return model


def _fixed_batches(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    y = torch.randint(1, 11, (n,), generator=g)
    while True:
        yield x, {"y": y}


def _trainer(microbatch=-1, hid=32, **kw):
    args = dict(model=_tiny_model(num_classes=10, hid=hid), diffusion=ContinuousDiffusion(model_out_type="v"),
                p_uncond=0.5, data=_fixed_batches(), batch_size=8, microbatch=microbatch, lr=1e-2, log_interval=1000,
                save_interval=1000, progress=False, seed=5)
    args.update(kw)
    return VDPMTrainLoop(**args)


@pytest.mark.parametrize("grad_norm", [0.0, 0.5])
def test_accumulated_micro_batches_give_the_update_of_one_batch(grad_norm):
    """4 micro-batches of 2 (with label dropout, times and noise drawn per step) = one batch of 8: the same gradient
    (unclipped, so a wrong scale shows; and clipped) and the same step. Adam's first step, lr * g / (|g| + eps), is
    not smooth in g near 0: with eps = 1e-8 a gradient that cancels to ~1e-8 turns its rounding into a sizeable part
    of lr. So eps = 1e-4 here (|d update / d g| <= lr / eps), and 64 channels (with 32, GroupNorm has one channel
    per group and the conv biases before it have a true gradient of 0)."""
    full, accum = _trainer(grad_norm=grad_norm, hid=64), _trainer(microbatch=2, grad_norm=grad_norm, hid=64)
    for t in (full, accum):
        t.opt.param_groups[0]["eps"] = 1e-4
    before = [p.detach().clone() for p in full.model.parameters()]
    for t in (full, accum):
        t.forward_backward(*next(t.data), StepRandom.from_seed(0))
    grads = [(a.grad, b.grad) for a, b in zip(full.model.parameters(), accum.model.parameters())]
    assert all(a is not None and float(a.abs().max()) > 0 for a, _ in grads), "every weight must get gradient"
    norm = float(torch.linalg.vector_norm(torch.cat([a.flatten() for a, _ in grads])))
    assert norm == pytest.approx(grad_norm, rel=1e-3) if grad_norm else norm > 2 * 0.5  # 0.5 does clip
    for a, b in grads:  # float32 sums in another order: a few ulps of the partial sums (~1e-2) apart
        torch.testing.assert_close(b, a, atol=2e-7, rtol=1e-5)
    for t in (full, accum):
        t.mp_trainer.zero_grad()
        t.run_step(*next(t.data))
    moved = max(float((a.detach() - b).abs().max()) for a, b in zip(full.model.parameters(), before))
    assert moved > 5e-3
    for a, b in zip(full.model.parameters(), accum.model.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def test_ema_follows_the_seeds_warm_up_in_closed_form():
    """Update n uses d_n = min(rate, (1 + n) / (10 + n)); after N steps
    ema = prod_j d_j * p_0 + sum_j (1 - d_j) prod_{i > j} d_i * p_j (p_j: the weights after step j)."""
    rate, steps = 0.25, 4
    t = _trainer(ema_rate=str(rate))
    snapshots = [[p.detach().clone() for p in t.model.parameters()]]
    for _ in range(steps):
        t.run_step(*next(t.data))
        snapshots.append([p.detach().clone() for p in t.model.parameters()])
    d = [None] + [min(rate, (1 + n) / (10 + n)) for n in range(1, steps + 1)]
    assert d[1] == pytest.approx(2 / 11) and d[2] == d[3] == rate  # both branches of the min are used
    weights = [float(np.prod(d[1:]))] + [(1 - d[j]) * float(np.prod(d[j + 1:])) for j in range(1, steps + 1)]
    assert sum(weights) == pytest.approx(1.0)
    for k, ema in enumerate(t.ema_params[0]):
        expected = sum(w * snap[k] for w, snap in zip(weights, snapshots))
        torch.testing.assert_close(ema, expected, atol=1e-6, rtol=1e-6)
    plain = _trainer(ema_rate=str(rate), ema_warmup=False)
    plain.run_step(*next(plain.data))
    first = next(iter(plain.model.parameters())).detach()
    torch.testing.assert_close(plain.ema_params[0][0], rate * snapshots[0][0] + (1 - rate) * first)


def test_lr_warms_up_linearly_and_epochs_end_on_their_last_step():
    calls = []
    t = _trainer(warmup=4, steps_per_epoch=2, on_epoch=calls.append)
    lrs = []
    for _ in range(5):
        t.run_step(*next(t.data))
        lrs.append(t.opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1e-2 * f for f in (0.25, 0.5, 0.75, 1.0, 1.0)])  # min((k + 1) / warmup, 1)
    assert calls == [1, 2] and t.epoch == 2.5
    assert t.opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_network_embeds_1000_t_and_reserves_the_null_label():
    model = _tiny_model(num_classes=10).eval()
    assert model.label_emb.num_embeddings == 11  # null 0, class k -> k + 1
    x, t, y = torch.randn(3, 3, 8, 8), torch.tensor([0.0, 0.25, 1.0]), torch.tensor([0, 1, 10])
    torch.testing.assert_close(model(x, t, y), UNetModel.forward(model, x, 1000 * t, y))
    assert model(x, t, y).shape == (3, 3, 8, 8)
    assert _tiny_model(out="both").out[-1].out_channels == 6
    tags = _tiny_model(num_classes=40, multitags=True).eval()
    on = torch.zeros(2, 40)
    on[0, [0, 5]] = 1.0
    out = tags(x[:2], t[:2], on)
    assert not torch.allclose(out[0], tags(x[:1], t[:1], torch.zeros(1, 40))[0])  # tags change the output
    assert tags_to_int(on).tolist() == [1 + 2 ** 5, 0]
    with pytest.raises(ValueError, match="integers"):
        model(x, t, y.float())


def test_published_configs_load_and_typed_flags_win(tmp_path):
    train = import_script("vdpm_train")
    parser = train.create_argparser()
    argv = ["--config", "cifar10_cond", "--lr", "1e-3", "--no-use-cfg", "--ckpt-dir", str(tmp_path)]
    args = parser.parse_args(argv)
    train.merge_run_flags(parser, args, argv)
    assert (args.lr, args.use_cfg, args.model_out_type, args.model_var_type) == (1e-3, False, "v", "fixed_medium")
    assert (args.intp_frac, args.reweight_type, args.logsnr_schedule, args.train_timesteps) == (
        0.3, "truncated_snr", "cosine", 0)
    assert (args.w_guide, args.p_uncond, args.hid_channels, args.apply_attn) == (0.1, 0.1, 256, "0,1,1")
    celeba = load_config("celeba", DEFAULT_CONFIG_DIR)
    assert celeba["dataset"] == "celeba" and celeba["use_cfg"] and celeba["model_out_type"] == "both"
    uncond = load_config("cifar10_uncond", DEFAULT_CONFIG_DIR)
    assert not uncond["use_cfg"] and uncond["model_out_type"] == "x0"
    flags = {**vars(parser.parse_args([])), **TINY_FLAGS, "dataset": "celeba", "use_cfg": True, "image_size": 8}
    net = model_from_flags(flags)
    assert net.multitags and net.label_emb.proj.in_features == 40


TINY_FLAGS = {"hid_channels": 32, "ch_multipliers": "1,2", "num_res_blocks": 1, "apply_attn": "0,0"}


def _read_progress(path):
    with open(path, newline="") as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def test_sigkill_after_a_checkpoint_then_resume_continues_exactly(tmp_path):
    common = TINY + ["--batch-size", 8, "--num-accum", 2, "--use-cfg", "--p-uncond", 0.5, "--use-ema",
                     "--ema-decay", 0.99, "--warmup", 3, "--lr", 1e-3, "--save-steps", 4, "--image-intv", 0]
    run_script("vdpm_train.py", common + ["--max-steps", 8, "--ckpt-dir", tmp_path / "ref"])
    ref, run = tmp_path / "ref" / "vdpm_digits", tmp_path / "killed" / "vdpm_digits"
    proc = start_script("vdpm_train.py", common + ["--max-steps", 100000, "--ckpt-dir", tmp_path / "killed"])
    deadline = time.time() + 120
    try:
        while not (run / "model000004.pt").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for name in ("model000004.pt", "ema_0.99_000004.pt", "opt000004.pt", "train_state000004.pt"):
        torch.load(run / name, weights_only=True)  # complete files under final names
    for p in run.glob("model*.pt"):
        if p.name != "model000004.pt":
            p.unlink()  # resume from step 4 exactly, whatever the killed run reached
    out = run_script("vdpm_train.py", ["--resume", "--max-steps", 8, "--ckpt-dir", tmp_path / "killed",
                                       "--dataset", "digits", "--no-progress"])
    assert "resuming from model000004.pt" in out.stdout
    expected, resumed = _read_progress(ref / "progress.csv"), _read_progress(run / "progress.csv")
    for step in range(5, 9):
        assert float(resumed[step]["loss"]) == pytest.approx(float(expected[step]["loss"]), abs=1e-5), step
        assert float(resumed[step]["lr"]) == pytest.approx(float(expected[step]["lr"]))
    for name in ("model000008.pt", "ema_0.99_000008.pt"):
        a, b = torch.load(ref / name, weights_only=True), torch.load(run / name, weights_only=True)
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=f"{name}:{k}")
    opt_a = torch.load(ref / "opt000008.pt", weights_only=True)
    opt_b = torch.load(run / "opt000008.pt", weights_only=True)
    assert opt_a["param_groups"][0]["betas"] == opt_b["param_groups"][0]["betas"]
    torch.testing.assert_close(opt_b["state"][0]["exp_avg"], opt_a["state"][0]["exp_avg"], atol=1e-6, rtol=1e-4)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 3-step class-conditional run with EMA and --eval (tiny feature net)."""
    folder = tmp_path_factory.mktemp("vdpm")
    torch.set_num_threads(1)
    run_cli(import_script("vdpm_train").main,
            TINY + ["--batch-size", 8, "--use-cfg", "--use-ema", "--ema-decay", 0.5, "--lr", 1e-2, "--max-steps", 3,
                    "--ckpt-dir", folder, "--eval", "--feature-net", "tiny-random", "--eval-total-size", 12])
    return folder / "vdpm_digits"


def _generate(run, out, *extra):
    run_cli(import_script("vdpm_generate").main,
            [str(a) for a in ["--ckpt-path", run, "--use-ema", "--sample-timesteps", 5, "--w-guide", 1.0,
                              "--no-progress", "--save-dir", out, *extra]])


def test_training_writes_grids_metrics_and_flags(trained_run):
    assert sorted(p.name for p in (trained_run / "images").iterdir()) == ["final000003.png"]
    metrics = json.loads(next(trained_run.glob("eval_000003/metrics.json")).read_text())
    assert np.isfinite(metrics["fid"]) and 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert metrics["num_samples"] == 12 and metrics["num_reference_images"] == 1797
    flags = json.loads((trained_run / "flags.json").read_text())
    assert flags["use_cfg"] is True and flags["hid_channels"] == 32


def test_generated_images_depend_on_the_seed_only(trained_run, tmp_path):
    _generate(trained_run, tmp_path / "b1", "--total-size", 5, "--batch-size", 1)
    _generate(trained_run, tmp_path / "b3", "--total-size", 5, "--batch-size", 3)
    _generate(trained_run, tmp_path / "shift", "--total-size", 3, "--batch-size", 3, "--seed", 2)
    one, three = np.load(tmp_path / "b1" / "samples_5x8x8x3.npz"), np.load(tmp_path / "b3" / "samples_5x8x8x3.npz")
    shifted = np.load(tmp_path / "shift" / "samples_3x8x8x3.npz")
    assert one["arr_0"].dtype == np.uint8 and one["arr_0"].shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(one["arr_0"], three["arr_0"])
    np.testing.assert_array_equal(one["arr_1"], three["arr_1"])
    np.testing.assert_array_equal(one["arr_0"][2:], shifted["arr_0"])
    assert len({one["arr_0"][i].tobytes() for i in range(5)}) == 5
    assert one["arr_1"].min() >= 0 and one["arr_1"].max() <= 9
    assert (tmp_path / "b1" / "samples_5x8x8x3_grid.png").is_file()
    record = json.loads((tmp_path / "b1" / "samples_5x8x8x3_flags.json").read_text())
    assert record["w_guide"] == 1.0 and record["checkpoint"].endswith("ema_0.5_000003.pt")
    _generate(trained_run, tmp_path / "fixed", "--total-size", 5, "--batch-size", 5, "--labels", "7")
    fixed = np.load(tmp_path / "fixed" / "samples_5x8x8x3.npz")
    assert fixed["arr_1"].tolist() == [7] * 5
    assert not np.array_equal(fixed["arr_0"], one["arr_0"])  # the label reaches the model


def test_celeba_tags_train_with_epoch_grids_and_generate_bit_masks(tmp_path):
    """Four fake CelebA faces (one step per epoch at batch 4): multi-tag conditioning end to end."""
    files, tags = _celeba(tmp_path)
    run_cli(import_script("vdpm_train").main,
            TINY[2:] + ["--dataset", "celeba", "--root", tmp_path, "--batch-size", 4, "--use-cfg", "--use-ema",
                        "--epochs", 2, "--image-intv", 1, "--ckpt-dir", tmp_path / "runs"])
    run = tmp_path / "runs" / "vdpm_celeba"
    assert sorted(p.name for p in (run / "images").iterdir()) == ["epoch00001.png", "epoch00002.png",
                                                                  "final000002.png"]
    _generate(run, tmp_path / "gen", "--total-size", 6, "--batch-size", 4, "--root", tmp_path)
    out = np.load(tmp_path / "gen" / "samples_6x8x8x3.npz")
    masks = {int(sum(int(v) << j for j, v in enumerate(row))) for row in tags}
    assert set(out["arr_1"].tolist()) <= masks and len(set(out["arr_1"].tolist())) > 1


def _exit_code(main, argv, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(main, [str(a) for a in argv])
    return info.value.code, capsys.readouterr().err


def test_bad_input_exits_2_with_the_fix_and_writes_nothing(tmp_path, capsys, trained_run):
    train = import_script("vdpm_train").main
    ckpt = tmp_path / "ck"
    code, err = _exit_code(train, ["--dataset", "cifar10", "--root", tmp_path / "nope", "--ckpt-dir", ckpt], capsys)
    assert code == 2 and "cifar-10-batches-py" in err and str(tmp_path / "nope") in err and "error:" in err
    assert not ckpt.exists()
    code, err = _exit_code(train, TINY + ["--model-out-type", "x1", "--ckpt-dir", ckpt], capsys)
    assert code == 2 and "invalid choice" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {"lr": 1e-3, "learning_rate": 1}}))
    code, err = _exit_code(train, TINY + ["--config", bad, "--ckpt-dir", ckpt], capsys)
    assert code == 2 and "learning_rate" in err
    bad.write_text(json.dumps({"diffusion": {"model_out_type": "x1"}}))
    code, err = _exit_code(train, TINY + ["--config", bad, "--ckpt-dir", ckpt], capsys)
    assert code == 2 and "--model-out-type" in err
    code, err = _exit_code(train, TINY + ["--batch-size", 6, "--num-accum", 4, "--ckpt-dir", ckpt], capsys)
    assert code == 2 and "--num-accum" in err
    code, err = _exit_code(train, TINY + ["--resume", "--ckpt-dir", ckpt], capsys)
    assert code == 2 and "--resume" in err
    assert not ckpt.exists()
    code, err = _exit_code(train, TINY + ["--ckpt-dir", trained_run.parent], capsys)
    assert code == 2 and "--resume" in err  # an existing run is never overwritten
    generate = import_script("vdpm_generate").main
    code, err = _exit_code(generate, ["--ckpt-path", tmp_path / "none.pt", "--save-dir", tmp_path / "g"], capsys)
    assert code == 2 and "does not exist" in err and not (tmp_path / "g").exists()
    code, err = _exit_code(generate, ["--ckpt-path", trained_run, "--labels", "12", "--save-dir", tmp_path / "g"],
                           capsys)
    assert code == 2 and "0..9" in err and not (tmp_path / "g").exists()


# ------------------------------------------------------------------------------------------------------------
# The original's flags, defaults and files
def test_the_data_sets_config_is_in_force_and_says_so(tmp_path, capsys):
    """No --config: the data set's config, as the original's README commands had it (configs/<dataset>.json),
    with the values of the original's published file; the script prints it and the typed flags that override it.
    The digits have no config of the original: the built-in defaults stay, and the script says so."""
    train = import_script("vdpm_train")
    parser = train.create_argparser()
    for argv, name in ((["--dataset", "cifar10"], "cifar10_uncond"),
                       (["--dataset", "cifar10", "--use-cfg", "--lr", "1e-3", "--epochs", "600"], "cifar10_cond"),
                       (["--dataset", "celeba"], "celeba")):
        args = parser.parse_args(argv + ["--ckpt-dir", str(tmp_path)])
        _, _, lines = train.merge_run_flags(parser, args, argv)
        theirs = MANIFEST["config_files"][f"2024/{name}"]
        assert args.config.endswith(f"{name}.json") and lines[0].startswith(f"config in force: {args.config}")
        assert args.arch == "original" and args.warmup == theirs["train"]["warmup"]
        assert args.weight_decay == theirs["train"].get("weight_decay", 0.0)
        assert args.max_ckpts_kept == theirs["train"].get("max_ckpts_kept", 1)  # 1: the original's defaults.json
        assert args.model_out_type.replace("x_0", "x0") == theirs["diffusion"]["model_out_type"]
        assert args.use_cfg == theirs["conditional"]["use_cfg"] and args.hid_channels == theirs["model"]["hid_channels"]
        typed_over = "--epochs, --lr" if "--lr" in argv else "none"
        assert lines[1] == f"typed flags overriding it: {typed_over}"
        if "--lr" in argv:
            assert (args.lr, args.epochs) == (1e-3, 600)  # typed flags win over the config
    for argv, expect in ((["--dataset", "digits"], "the seed ships no config for digits"),
                         (["--dataset", "cifar10", "--config", "none"], "--config none")):
        args = parser.parse_args(argv)
        _, _, lines = train.merge_run_flags(parser, args, argv)
        assert len(lines) == 1 and lines[0].startswith("config in force: none (") and expect in lines[0]
        assert (args.arch, args.warmup, args.weight_decay, args.hid_channels) == ("adm", 0, 0.0, 64)


def test_the_config_in_force_is_printed_at_the_start(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(import_script("vdpm_train").main,
                [str(a) for a in ["--dataset", "cifar10", "--use-cfg", "--lr", 1e-3, "--root", tmp_path / "nope",
                                  "--ckpt-dir", tmp_path / "ck"]])
    captured = capsys.readouterr()
    assert info.value.code == 2 and "cifar-10-batches-py" in captured.err  # the data set is missing, but first:
    assert "config in force: " in captured.out and "cifar10_cond.json" in captured.out
    assert "typed flags overriding it: --lr" in captured.out


def test_max_ckpts_kept_keeps_the_newest_sets(tmp_path, capsys):
    train = import_script("vdpm_train").main
    run_cli(train, TINY + ["--batch-size", 4, "--use-ema", "--max-steps", 4, "--save-steps", 1, "--image-intv", 0,
                           "--max-ckpts-kept", 2, "--ckpt-dir", tmp_path])
    sets = checkpoint_sets(str(tmp_path / "vdpm_digits"))
    assert sorted(sets) == [3, 4] and all(len(files) == 4 for files in sets.values())
    code, err = _exit_code(train, TINY + ["--max-ckpts-kept", 0, "--ckpt-dir", tmp_path / "other"], capsys)
    assert code == 2 and "--max-ckpts-kept" in err and "-1" in err and not (tmp_path / "other").exists()


# The original scripts' flags (tqch/v-diffusion-torch generate.py and train.py, 2024 and 2023 versions).
GENERATE_2024 = ["--data-root", "R", "--batch-size", "128", "--total-size", "50000", "--default-config-path", "D",
                 "--config-path", "C", "--ckpt-path", "P", "--save-dir", "S", "--device", "cpu", "--use-ema",
                 "--use-ddim", "--sample-timesteps", "1024", "--uncond", "--w-guide", "0.1"]
GENERATE_2023 = ["--root", "R", "--dataset", "cifar10", "--batch-size", "128", "--total-size", "50000",
                 "--config-dir", "C", "--chkpt-dir", "K", "--chkpt-path", "P", "--save-dir", "S", "--device", "cpu",
                 "--use-ema", "--use-ddim", "--sample-timesteps", "1024", "--uncond", "--w-guide", "0.1",
                 "--suffix", "_x"]
TRAIN_2024 = ["--data_root", "R", "--epochs", "1", "--lr", "1e-4", "--beta1", "0.9", "--beta2", "0.99",
              "--weight-decay", "0", "--batch-size", "8", "--num-accum", "1", "--train-timesteps", "0",
              "--sample-timesteps", "8", "--logsnr-schedule", "cosine", "--logsnr-max", "20", "--logsnr-min", "-20",
              "--model-out-type", "x_0", "--model-var-type", "fixed_medium", "--reweight-type", "snr_trunc",
              "--loss-type", "mse", "--intp-frac", "0.3", "--w-guide", "0.1", "--p-uncond", "0.1",
              "--num-workers", "0", "--train-device", "cpu", "--eval-device", "cpu", "--image-intv", "1",
              "--num-save-images", "4", "--use-ddim", "--config-path", "C", "--default-config-path", "D",
              "--ckpt-intv", "1", "--seed", "1", "--resume", "--eval", "--eval-intv", "1", "--ema-decay", "0.9",
              "--distributed", "--use-xformers", "--max-ckpts-kept", "2", "--use-cfg", "--use-ema"]
TRAIN_2023 = ["--dataset", "cifar10", "--root", "R", "--image-dir", "I", "--sample-bsz", "4", "--config-dir", "C",
              "--chkpt-dir", "K", "--chkpt-name", "N", "--chkpt-intv", "1", "--ckpt-dir", "K", "--ckpt-name", "N",
              "--ckpt-intv", "1", "--reweight-type", "truncated_snr"]


def test_the_original_scripts_flags_parse_with_their_defaults():
    generate = import_script("vdpm_generate").create_argparser()
    for argv in (GENERATE_2024, GENERATE_2023):
        generate.parse_args(argv)
    defaults = generate.parse_args([])
    assert (defaults.total_size, defaults.batch_size, defaults.sample_timesteps) == (50000, 128, 1024)
    a = generate.parse_args(GENERATE_2023)
    assert (a.root, a.ckpt_dir, a.ckpt_path, a.suffix) == ("R", "K", "P", "_x")
    assert generate.parse_args(GENERATE_2024).root == "R"
    train = import_script("vdpm_train").create_argparser()
    for argv in (TRAIN_2024, TRAIN_2023):
        train.parse_args(argv)
    a = train.parse_args(TRAIN_2024)
    assert (a.root, a.config, a.default_config_path, a.max_ckpts_kept, a.use_xformers) == ("R", "C", "D", 2, True)


def test_generate_writes_the_originals_png_folder_beside_the_npz(trained_run, tmp_path):
    """--format both: the npz and one {seed:06d}.png per sample (what the original's eval.py reads) with the same
    pixels; --format png alone makes the same files; without --ckpt-path the run folder <--chkpt-dir>/vdpm_<dataset>
    is used; --suffix ends the folder's name."""
    _generate(trained_run, tmp_path / "both", "--total-size", 3, "--batch-size", 2, "--format", "both")
    npz = np.load(tmp_path / "both" / "samples_3x8x8x3.npz")["arr_0"]
    from PIL import Image
    pngs = sorted((tmp_path / "both" / "images").iterdir())
    assert [p.name for p in pngs] == ["000000.png", "000001.png", "000002.png"]
    for p, image in zip(pngs, npz):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), image)
    run_cli(import_script("vdpm_generate").main,
            [str(a) for a in ["--chkpt-dir", trained_run.parent, "--dataset", "digits", "--use-ema",
                              "--sample-timesteps", 5, "--w-guide", 1.0, "--no-progress", "--total-size", 3,
                              "--batch-size", 3, "--format", "png", "--save-dir", tmp_path / "png",
                              "--suffix", "_a"]])
    alone = sorted((tmp_path / "png_a" / "images").iterdir())
    assert [p.name for p in alone] == [p.name for p in pngs]
    for a, b in zip(alone, pngs):
        np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert not list((tmp_path / "png_a").glob("*.npz"))
