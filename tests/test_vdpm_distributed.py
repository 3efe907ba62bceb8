"""VDPM training on two torchrun ranks: gradient accumulation (DDP no_sync on all but the last micro-batch) makes
the update of the whole batch, and the ranks stay identical."""

from __future__ import annotations

import json

import pytest
import torch

from guided_diffusion.vdpm import model_from_flags
from script_runs import run_script
from test_vdpm_train import TINY

pytestmark = pytest.mark.slow


def test_two_ranks_with_and_without_accumulation_make_the_same_update(tmp_path):
    """Two steps of a global batch of 8 (4 per rank), without and with 2 micro-batches per rank. Adam's
    g / (sqrt(v) + 1e-8) magnifies the gradients' rounding where they are ~1e-9 (64 channels avoid true zeros,
    but of 1.5M weights some are that small), so lr 1e-3: the update is ~1e-3 and the rounding stays ~1e-6."""
    common = TINY + ["--hid-channels", 64, "--batch-size", 8, "--use-cfg", "--lr", 1e-3, "--max-steps", 2,
                     "--image-intv", 0, "--distributed"]
    states, flags = {}, None
    for accum in (1, 2):
        folder = tmp_path / f"accum{accum}"
        out = run_script("vdpm_train.py", common + ["--num-accum", accum, "--ckpt-dir", folder], kind="torchrun",
                         nproc=2)
        assert "Traceback" not in out.stderr, out.stderr[-2000:]
        state = torch.load(folder / "vdpm_digits" / "train_state000002.pt", weights_only=True)
        assert state["world_size"] == 2 and len(set(state["param_digests"])) == 1, "the ranks diverged"
        states[accum] = torch.load(folder / "vdpm_digits" / "model000002.pt", weights_only=True)
        flags = json.loads((folder / "vdpm_digits" / "flags.json").read_text())
    for k in states[1]:
        torch.testing.assert_close(states[2][k], states[1][k], atol=1e-5, rtol=0, msg=k)
    torch.manual_seed(flags["seed"])  # the initial weights, as the script draws them
    init = model_from_flags(flags).state_dict()
    assert max(float((states[1][k] - init[k]).abs().max()) for k in init) > 5e-4, "training did not move the weights"
