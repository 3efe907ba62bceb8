"""What every script in ``python_scripts/`` shares: error reporting, flags saved beside outputs, and
flags read back from the ``flags.json`` beside a checkpoint so users need not retype them."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from . import dist_util
from .train.checkpointing import read_flags_beside

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


def explicit_flags(argv: Optional[Sequence[str]]) -> set:
    """The ``--name`` flags written on the command line (``--name value`` or ``--name=value``)."""
    argv = sys.argv[1:] if argv is None else argv
    return {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}


def fill_flags_from_checkpoint(args: argparse.Namespace, checkpoint: str, keys: Iterable[str],
                               argv: Optional[Sequence[str]]) -> List[str]:
    """Set each of ``keys`` not given on the command line from the ``flags.json`` beside ``checkpoint``.

    Returns the names that were filled in. Flags typed by the user always win.
    """
    saved = read_flags_beside(checkpoint) if checkpoint else None
    if not saved:
        return []
    given = explicit_flags(argv)
    filled = []
    for k in keys:
        if k in saved and k not in given and getattr(args, k, None) != saved[k]:
            setattr(args, k, saved[k])
            filled.append(k)
    return filled


def flags_of(args: argparse.Namespace, drop: Iterable[str] = ()) -> Dict:
    """The flags as a plain dict (for flags.json), without the names in ``drop``."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in set(drop)}


def add_run_flags(parser: argparse.ArgumentParser, name: str) -> None:
    """``--log_path`` (printed at start; default logs/<name>-<time>) and ``--gpus`` (ids, one per rank)."""
    parser.add_argument("--log_path", default="", help=f"output folder (default: logs/{name}-<date>-<time>)")
    parser.add_argument("--gpus", default="", help="GPU ids to use, one per rank, e.g. 0,1 (default: all)")


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


__all__ = ["run_cli", "explicit_flags", "fill_flags_from_checkpoint", "flags_of", "add_run_flags",
           "resolve_log_path", "open_run_folder", "USER_ERRORS"]
