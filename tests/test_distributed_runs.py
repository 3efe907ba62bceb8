"""Launched runs: 2-rank training under mpiexec and torchrun, SIGKILL + resume, seed-reproducible sampling."""

from __future__ import annotations

import csv
import json
import os
import signal
import time

import numpy as np
import pytest
import torch

from guided_diffusion.script_util import create_model_and_diffusion
from guided_diffusion.train import param_digest
from script_runs import TINY_TRAIN, run_script, save_tiny_adm, start_script, tiny_flags

pytestmark = pytest.mark.slow

FINAL_NAME_PREFIXES = ("model", "ema_", "opt", "train_state")


def read_progress(path) -> dict:
    """step -> row of progress.csv; a step logged twice (killed, then resumed) keeps its last row."""
    with open(path, newline="") as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def test_two_ranks_end_with_identical_parameters_under_mpiexec_and_torchrun(tmp_path):
    steps, digests = 4, {}
    for kind in ("mpiexec", "torchrun"):
        out = run_script("image_train.py", TINY_TRAIN + ["--max_steps", steps, "--save_interval", steps,
                                                         "--log_path", tmp_path / kind], kind=kind, nproc=2)
        for bad in ("Traceback", "abort", "destroy_process_group", "Warning"):
            assert bad not in out.stderr, out.stderr[-2000:]
        state = torch.load(tmp_path / kind / f"train_state{steps:06d}.pt", weights_only=True)
        assert state["world_size"] == 2 and state["step"] == steps
        rank0, rank1 = state["param_digests"]
        assert rank0 == rank1, f"{kind}: ranks diverged"
        saved = torch.load(tmp_path / kind / f"model{steps:06d}.pt", weights_only=True)
        assert param_digest(list(saved.values())) == rank0
        digests[kind] = rank0
    torch.manual_seed(0)
    init, _ = create_model_and_diffusion(**tiny_flags())
    assert param_digest(init.parameters()) != digests["mpiexec"], "training did not change the weights"
    # Same seed, same world size: the launcher makes no difference.
    assert digests["mpiexec"] == digests["torchrun"]


def _check_final_files(folder, seen: set) -> None:
    """Every checkpoint under its final name must load completely (a partial file would not)."""
    for name in os.listdir(folder):
        if name.endswith(".pt") and name.startswith(FINAL_NAME_PREFIXES) and name not in seen:
            torch.load(folder / name, weights_only=True)
            seen.add(name)


def test_sigkill_after_first_checkpoint_then_resume_continues_exactly(tmp_path):
    common = TINY_TRAIN + ["--save_interval", 4, "--log_interval", 1, "--ema_rate", "0.9,0.99",
                           "--schedule_sampler", "loss-second-moment"]
    ref = tmp_path / "reference"
    run_script("image_train.py", common + ["--max_steps", 12, "--log_path", ref])

    run = tmp_path / "killed"
    proc = start_script("image_train.py", common + ["--max_steps", 100000, "--log_path", run])
    seen: set = set()
    deadline = time.time() + 120
    try:
        while not (run / "model000004.pt").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "no checkpoint within 120 s"
            if run.exists():
                _check_final_files(run, seen)
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    _check_final_files(run, seen)
    assert "model000004.pt" in seen

    run_script("image_train.py", common + ["--max_steps", 12, "--log_path", run,
                                           "--resume_checkpoint", run / "model000004.pt"])
    _check_final_files(run, seen)
    expected, resumed = read_progress(ref / "progress.csv"), read_progress(run / "progress.csv")
    for step in range(5, 13):
        assert float(resumed[step]["loss"]) == pytest.approx(float(expected[step]["loss"]), abs=1e-5), step
    for name in ["model000012.pt", "ema_0.9_000012.pt", "ema_0.99_000012.pt"]:
        a = torch.load(ref / name, weights_only=True)
        b = torch.load(run / name, weights_only=True)
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=f"{name}:{k}")
    opt_a = torch.load(ref / "opt000012.pt", weights_only=True)["state"]
    opt_b = torch.load(run / "opt000012.pt", weights_only=True)["state"]
    assert opt_a[0]["step"] == opt_b[0]["step"] == 12
    torch.testing.assert_close(opt_b[0]["exp_avg_sq"], opt_a[0]["exp_avg_sq"], atol=1e-8, rtol=1e-4)
    state = torch.load(run / "train_state000012.pt", weights_only=True)
    assert state["step"] == 12
    assert state["schedule_sampler"]["loss_counts"].sum() == 12 * 4  # the sampler's history carried over


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random class-conditional tiny model with its flags.json."""
    return save_tiny_adm(tmp_path_factory.mktemp("ckpt"), class_cond=True, num_classes=10)


def test_samples_depend_on_seed_not_on_world_size_or_batch_size(tmp_path, tiny_checkpoint):
    common = ["--model_path", tiny_checkpoint, "--num_samples", 8, "--seed", 0, "--timestep_respacing", 10,
              "--progress", "False"]
    run_script("image_sample.py", common + ["--batch_size", 8, "--log_path", tmp_path / "one"])
    run_script("image_sample.py", common + ["--batch_size", 3, "--log_path", tmp_path / "two"],
               kind="torchrun", nproc=2)
    one = np.load(tmp_path / "one" / "samples_8x8x8x3.npz")
    two = np.load(tmp_path / "two" / "samples_8x8x8x3.npz")
    assert one["arr_0"].shape == (8, 8, 8, 3) and one["arr_0"].dtype == np.uint8
    assert one["arr_1"].dtype == np.int64 and one["arr_1"].shape == (8,)
    np.testing.assert_array_equal(one["arr_0"], two["arr_0"])
    np.testing.assert_array_equal(one["arr_1"], two["arr_1"])
    assert len({one["arr_0"][i].tobytes() for i in range(8)}) == 8, "different seeds must give different images"
    assert (tmp_path / "one" / "samples_8x8x8x3_grid.png").is_file()
    flags = json.loads((tmp_path / "two" / "samples_8x8x8x3_flags.json").read_text())
    assert flags["class_cond"] is True and flags["num_classes"] == 10  # read from the checkpoint's flags.json
    assert not (tmp_path / "two" / "shards").exists()


def test_sampling_seed_range_shifts_images(tmp_path, tiny_checkpoint):
    """Seeds 4-7 of a run from seed 4 are seeds 4-7 of a run from seed 0."""
    common = ["--model_path", tiny_checkpoint, "--timestep_respacing", 10, "--progress", "False",
              "--batch_size", 4]
    run_script("image_sample.py", common + ["--num_samples", 8, "--log_path", tmp_path / "a"])
    run_script("image_sample.py", common + ["--num_samples", 4, "--seed", 4, "--log_path", tmp_path / "b"])
    a = np.load(tmp_path / "a" / "samples_8x8x8x3.npz")
    b = np.load(tmp_path / "b" / "samples_4x8x8x3.npz")
    np.testing.assert_array_equal(a["arr_0"][4:], b["arr_0"])


def test_no_partial_output_under_mpiexec_failure(tmp_path):
    """A bad data dir fails on every rank with the message, exit status non-zero, and no run folder."""
    out = run_script("image_train.py", TINY_TRAIN + ["--data_dir", tmp_path / "nope", "--log_path",
                                                     tmp_path / "run"], kind="mpiexec", nproc=2, check=False)
    assert out.returncode != 0
    assert "does not exist" in out.stderr
    assert not (tmp_path / "run").exists()
