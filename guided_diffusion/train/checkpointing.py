"""Checkpoint files named as ADM's, written so that a crash never leaves a half file under a final name.

A run directory holds, for N completed optimizer steps::

    modelNNNNNN.pt           fp32 parameters (a plain state dict, loadable by ADM's scripts)
    ema_RATE_NNNNNN.pt       one per EMA rate, e.g. ema_0.9999_000200.pt
    optNNNNNN.pt             the optimizer's state dict
    train_stateNNNNNN.pt     step, loss scale and timestep-sampler state (what ADM's files leave out)
    flags.json               the flags that built the run
"""

from __future__ import annotations

import glob
import os
import re
from typing import Dict, Optional

from ..files import atomic_save, atomic_write_bytes, write_json  # noqa: F401 (their old home)
from ..flags import read_flags_beside  # noqa: F401 (the one reader of flags.json)


def parse_resume_step_from_filename(filename: str) -> int:
    """``.../model001200.pt`` -> 1200; a name without a step number -> 0 (ADM's rule)."""
    match = re.search(r"model(\d+)\.pt$", os.path.basename(filename))
    return int(match.group(1)) if match else 0


def companion_paths(model_path: str, ema_rates=()) -> Dict[str, str]:
    """The EMA, optimizer and train-state files that belong beside ``modelNNNNNN.pt``."""
    folder, step = os.path.dirname(model_path), parse_resume_step_from_filename(model_path)
    out = {"opt": os.path.join(folder, f"opt{step:06d}.pt"),
           "state": os.path.join(folder, f"train_state{step:06d}.pt")}
    for rate in ema_rates:
        out[f"ema_{rate}"] = os.path.join(folder, f"ema_{rate}_{step:06d}.pt")
    return out


def latest_checkpoint(folder: str) -> Optional[str]:
    """The ``modelNNNNNN.pt`` with the largest step in ``folder``, or None."""
    found = glob.glob(os.path.join(folder, "model[0-9]*.pt"))
    found = [p for p in found if re.fullmatch(r"model\d+\.pt", os.path.basename(p))]
    return max(found, key=parse_resume_step_from_filename) if found else None


def resolve_resume_checkpoint(path: str) -> str:
    """A run folder becomes its latest ``modelNNNNNN.pt``; a file path (or "") is returned unchanged."""
    if path and os.path.isdir(path):
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"--resume_checkpoint {path!r} is a folder with no modelNNNNNN.pt; "
                                    "pass a checkpoint file or a run folder that has one")
        return found
    return path


__all__ = ["resolve_resume_checkpoint", "atomic_save", "atomic_write_bytes", "write_json", "read_flags_beside",
           "parse_resume_step_from_filename", "companion_paths", "latest_checkpoint"]
