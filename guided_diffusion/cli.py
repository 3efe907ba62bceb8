"""What every script in ``python_scripts/`` shares: error reporting, run folders with the flags saved in them,
and models loaded from checked checkpoints. (Parsing and merging flags is :mod:`guided_diffusion.flags`.)"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from typing import Callable, Dict, Iterable, Optional, Sequence

import torch

from . import dist_util
from .models.checkpoints import load_checkpoint, load_state_dict_checked

# Errors that mean "the input is wrong": reported as one message and exit status 2, no traceback.
# (UnpicklingError: a checkpoint that would run code when loaded, refused.)
USER_ERRORS = (ValueError, FileNotFoundError, pickle.UnpicklingError)


def run_cli(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None) -> None:
    """Run ``main(argv)``; bad input ends the process with ``error: <message>`` and exit status 2."""
    try:
        main(argv)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        dist_util.cleanup()
        sys.exit(2)
    dist_util.cleanup()


def flags_of(args: argparse.Namespace, drop: Iterable[str] = ()) -> Dict:
    """The flags as a plain dict (for flags.json), without the names in ``drop``."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in set(drop)}


def add_run_flags(parser: argparse.ArgumentParser, name: str) -> None:
    """``--log_path`` (printed at start; default logs/<name>-<time>) and ``--gpus`` (ids, one per rank)."""
    parser.add_argument("--log_path", default="", help=f"output folder (default: logs/{name}-<date>-<time>)")
    # nargs "+": PPAP's command lines write --gpus 0 1 2 3; ADM-style 0,1,2,3 works too (dist_util.parse_gpus).
    parser.add_argument("--gpus", nargs="+", default="",
                        help="GPU ids to use, one per rank: 0,1,2,3 or 0 1 2 3 (default: all)")


def load_model_checked(model: torch.nn.Module, path: str, *, flags: Optional[dict] = None,
                       flag: str = "--model_path", use_fp16: bool = False,
                       flag_names: Optional[dict] = None) -> torch.nn.Module:
    """Load ``path`` into ``model`` with readable errors (in the family's flag names, ``flag_names``), move it
    to this rank's device, set eval mode."""
    load_state_dict_checked(model, load_checkpoint(path, flag=flag), flags=flags, flag_names=flag_names)
    model.to(dist_util.dev())
    if use_fp16:
        if dist_util.dev().type != "cuda":
            raise ValueError(f"{flag}: --use_fp16 True needs a CUDA GPU; sample on CPU with --use_fp16 False")
        model.convert_to_fp16()
    return model.eval()


def open_run_folder(log_path: str, args: argparse.Namespace) -> None:
    """Create the run folder (logging into it) and write ``flags.json`` there; call once inputs are checked."""
    from . import logger
    from .train.checkpointing import write_json
    logger.configure(log_path)
    if dist_util.is_main():
        write_json(flags_of(args, drop=("gpus",)), os.path.join(log_path, "flags.json"))


def resolve_log_path(args: argparse.Namespace, name: str) -> str:
    """The run folder, identical on every rank (rank 0's default timestamp is broadcast)."""
    from .logger import default_log_path
    path = args.log_path or os.environ.get("OPENAI_LOGDIR") or default_log_path(name)
    return dist_util.broadcast_object(path)


__all__ = ["run_cli", "flags_of", "add_run_flags", "resolve_log_path", "open_run_folder", "load_model_checked",
           "USER_ERRORS"]
