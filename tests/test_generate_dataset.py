"""generate_dataset.py: exactly N PNGs named by index, the same on any rank count, resumable, loadable."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from guided_diffusion.data import build_dataset
from script_runs import run_script, save_tiny_adm

pytestmark = pytest.mark.slow


def test_generated_dataset_is_rank_independent_resumable_and_loadable(tmp_path):
    save_tiny_adm(tmp_path / "ckpt", seed=2)
    common = ["--model_path", tmp_path / "ckpt" / "model000000.pt", "--num_samples", 7,
              "--timestep_respacing", 5, "--progress", "False"]
    run_script("generate_dataset.py", common + ["--batch_size", 4, "--log_path", tmp_path / "one"])
    run_script("generate_dataset.py", common + ["--batch_size", 2, "--log_path", tmp_path / "two"],
               kind="torchrun", nproc=2)
    names = [f"{i:06d}.png" for i in range(7)]
    for folder in ("one", "two"):
        assert sorted(n for n in os.listdir(tmp_path / folder) if not n.startswith(".")) == names
    for n in names:
        a = np.asarray(Image.open(tmp_path / "one" / n))
        np.testing.assert_array_equal(a, np.asarray(Image.open(tmp_path / "two" / n)))
        assert a.shape == (8, 8, 3)
    before = {n: (tmp_path / "one" / n).read_bytes() for n in names}
    os.remove(tmp_path / "one" / names[2])
    os.remove(tmp_path / "one" / names[6])
    os.utime(tmp_path / "one" / names[0], (1, 1))
    run_script("generate_dataset.py", common + ["--batch_size", 3, "--log_path", tmp_path / "one"])
    assert {n: (tmp_path / "one" / n).read_bytes() for n in names} == before
    assert os.stat(tmp_path / "one" / names[0]).st_mtime == 1  # existing files were not rewritten
    data = build_dataset(str(tmp_path / "one"), 8)  # the run's logs are hidden: a clean image folder
    assert len(data) == 7 and (tmp_path / "one" / ".run" / "flags.json").is_file()
