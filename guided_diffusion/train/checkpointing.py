"""Checkpoint files named as ADM's, written so that a crash never leaves a half file under a final name.

A run directory holds, for N completed optimizer steps::

    modelNNNNNN.pt           fp32 parameters (a plain state dict, loadable by ADM's scripts)
    ema_RATE_NNNNNN.pt       one per EMA rate, e.g. ema_0.9999_000200.pt
    optNNNNNN.pt             the optimizer's state dict
    train_stateNNNNNN.pt     step, loss scale and timestep-sampler state (what ADM's files leave out)
    flags.json               the flags that built the run

These four make one checkpoint set. :func:`prune_checkpoints` keeps the newest N sets of a folder (the
Trainer's ``keep_checkpoints``; ADM's ``--keep_checkpoints``, VDPM's ``--max-ckpts-kept``).
"""

from __future__ import annotations

import glob
import os
import re
from typing import Dict, Iterable, List, Optional

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


# Every file of a checkpoint set, with the step in group "step" (model, optimizer, train state, any EMA rate).
_SET_FILE = re.compile(r"(?:model|opt|train_state|ema_[0-9.]+_)(?P<step>\d+)\.pt")


def checkpoint_sets(folder: str) -> Dict[int, List[str]]:
    """step -> the files of that checkpoint set in ``folder`` (model, ema_*, opt, train_state; any present)."""
    sets: Dict[int, List[str]] = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        match = _SET_FILE.fullmatch(name)
        if match:
            sets.setdefault(int(match.group("step")), []).append(os.path.join(folder, name))
    return sets


def prune_checkpoints(folder: str, keep: int, current: int, protect: Iterable[int] = ()) -> List[str]:
    """Delete the oldest checkpoint sets of ``folder`` so that the newest ``keep`` up to step ``current`` remain
    (``keep`` 0: delete nothing); returns the paths removed. Steps order the sets (file times do not survive
    copies).

    Never deleted: the set of step ``current`` (the one just saved), the steps in ``protect`` (e.g. a set still
    being read; kept on top of the ``keep`` newest), and sets of later steps than ``current`` (another run's, left
    alone). Leftover EMA / optimizer / state files whose model file is gone count as sets of their own and go too
    when old enough. Within a set the model file goes first: a set without it is no checkpoint to
    :func:`latest_checkpoint`, so a crash in the middle never leaves a model file whose companions are missing. A
    file that cannot be removed (another process holding it open on a system that forbids that) stays, and the next
    prune retries it.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0 (0 keeps every checkpoint), got {keep}")
    if keep == 0:
        return []
    sets = checkpoint_sets(folder)
    steps = sorted((s for s in sets if s <= current), reverse=True)
    kept = set(steps[:keep]) | {current} | set(protect)
    removed = []
    for step in sorted(s for s in steps if s not in kept):
        files = sorted(sets[step], key=lambda p: not os.path.basename(p).startswith("model"))
        for path in files:
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass  # removed meanwhile: the goal is reached
            except OSError:
                break  # keep the rest of this set (its model file first failed, or a companion): retried later
    return removed


def resolve_resume_checkpoint(path: str) -> str:
    """A run folder becomes its latest ``modelNNNNNN.pt``; a file path (or "") is returned unchanged."""
    if path and os.path.isdir(path):
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"--resume_checkpoint {path!r} is a folder with no modelNNNNNN.pt; "
                                    "pass a checkpoint file or a run folder that has one")
        return found
    return path


__all__ = ["resolve_resume_checkpoint", "prune_checkpoints", "checkpoint_sets", "atomic_save", "atomic_write_bytes",
           "write_json", "read_flags_beside", "parse_resume_step_from_filename", "companion_paths",
           "latest_checkpoint"]
