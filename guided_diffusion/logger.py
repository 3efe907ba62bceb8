"""ADM-style key/value logging into an explicit directory: ``log.txt``, ``progress.csv`` and stdout.

Scripts call ``configure(log_path)`` once (it prints where everything goes), then ``logkv`` /
``logkv_mean`` during an interval and ``dumpkvs`` at its end: values logged with ``logkv_mean`` are averaged
over the interval. Rank 0 writes stdout, ``log.txt`` and ``progress.csv``; other ranks write only
``log-rankNNN.txt``. Before ``configure`` (or when nothing is configured) output goes to stdout alone, so
importing code never creates directories as a side effect.
"""

from __future__ import annotations

import csv
import datetime
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence


class _Stdout:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def writekvs(self, kvs: Dict[str, object]) -> None:
        rows = [(str(k)[:40], _fmt(v)[:40]) for k, v in sorted(kvs.items())]
        if not rows:
            return
        kw, vw = max(len(k) for k, _ in rows), max(len(v) for _, v in rows)
        bar = "-" * (kw + vw + 7)
        lines = [bar] + [f"| {k:<{kw}} | {v:<{vw}} |" for k, v in rows] + [bar]
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    def writetext(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class _TextFile(_Stdout):
    def __init__(self, path: str):
        super().__init__(open(path, "a"))

    def close(self) -> None:
        self.stream.close()


class _Csv:
    """progress.csv; when new keys appear the file is rewritten with the wider header (ADM's behaviour)."""

    def __init__(self, path: str):
        self.path, self.keys = path, []
        if os.path.exists(path):  # a resumed run appends under the existing header
            with open(path, newline="") as f:
                self.keys = next(csv.reader(f), [])

    def writekvs(self, kvs: Dict[str, object]) -> None:
        new = [k for k in kvs if k not in self.keys]
        if new:
            rows = []
            if os.path.exists(self.path):
                with open(self.path, newline="") as f:
                    rows = list(csv.reader(f))[1:]
            self.keys += sorted(new)
            with open(self.path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(self.keys)
                w.writerows(r + [""] * (len(self.keys) - len(r)) for r in rows)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_exact(kvs[k]) if k in kvs else "" for k in self.keys])

    def writetext(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _exact(v) -> str:
    """Full precision for the csv (the stdout table rounds to 3 digits)."""
    if hasattr(v, "item"):
        v = v.item()
    return repr(v) if isinstance(v, float) else str(v)


def _fmt(v) -> str:
    if hasattr(v, "item"):
        v = v.item()
    return f"{v:<8.3g}".strip() if isinstance(v, float) else str(v)


class Logger:
    def __init__(self, dir: Optional[str], outputs: Sequence):
        self.dir, self.outputs = dir, list(outputs)
        self.kvs: Dict[str, object] = {}
        self.sums: Dict[str, float] = defaultdict(float)
        self.counts: Dict[str, int] = defaultdict(int)

    def logkv(self, key: str, val) -> None:
        self.kvs[key] = val

    def logkv_mean(self, key: str, val) -> None:
        self.sums[key] += float(val)
        self.counts[key] += 1

    def dumpkvs(self) -> Dict[str, object]:
        out = dict(self.kvs)
        out.update({k: self.sums[k] / self.counts[k] for k in self.sums})
        for o in self.outputs:
            o.writekvs(out)
        self.kvs.clear()
        self.sums.clear()
        self.counts.clear()
        return out

    def log(self, *args) -> None:
        text = " ".join(map(str, args))
        for o in self.outputs:
            o.writetext(text)

    def close(self) -> None:
        for o in self.outputs:
            o.close()


_current = Logger(None, [_Stdout()])


def _rank_from_env() -> int:
    for var in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def default_log_path(name: str = "run") -> str:
    """``logs/<name>-YYYYmmdd-HHMMSS`` under the working directory (never a hidden temp folder)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("logs", f"{name}-{stamp}")


def configure(dir: Optional[str] = None, format_strs: Optional[List[str]] = None, log_suffix: str = "",
              rank: Optional[int] = None) -> Logger:
    """Log into ``dir`` (else $OPENAI_LOGDIR, else ``default_log_path()``), created if needed, and print it.

    ``format_strs`` picks among "stdout", "log" (log.txt) and "csv" (progress.csv); default all three on
    rank 0 and "log" on other ranks, whose file names get ``-rankNNN`` ($OPENAI_LOG_FORMAT and
    $OPENAI_LOG_FORMAT_MPI override these defaults, as in ADM).
    """
    global _current
    dir = dir or os.environ.get("OPENAI_LOGDIR") or default_log_path()
    dir = os.path.abspath(os.path.expanduser(dir))
    rank = _rank_from_env() if rank is None else rank
    if rank > 0:
        log_suffix = log_suffix + f"-rank{rank:03d}"
    if format_strs is None:
        env = os.environ.get("OPENAI_LOG_FORMAT" if rank == 0 else "OPENAI_LOG_FORMAT_MPI")
        format_strs = env.split(",") if env is not None else (["stdout", "log", "csv"] if rank == 0 else ["log"])
        format_strs = [f for f in format_strs if f]
    os.makedirs(dir, exist_ok=True)
    outputs = []
    for f in format_strs:
        if f == "stdout":
            outputs.append(_Stdout())
        elif f == "log":
            outputs.append(_TextFile(os.path.join(dir, f"log{log_suffix}.txt")))
        elif f == "csv":
            outputs.append(_Csv(os.path.join(dir, f"progress{log_suffix}.csv")))
        else:
            raise ValueError(f"unknown log format {f!r}; use stdout, log or csv")
    _current.close()
    _current = Logger(dir, outputs)
    if rank == 0:
        print(f"Logging to {dir}", flush=True)
    return _current


def get_current() -> Logger:
    return _current


def get_dir() -> Optional[str]:
    """The configured directory, or None before ``configure``."""
    return _current.dir


def logkv(key: str, val) -> None:
    _current.logkv(key, val)


def logkv_mean(key: str, val) -> None:
    _current.logkv_mean(key, val)


def logkvs(d: Dict[str, object]) -> None:
    for k, v in d.items():
        logkv(k, v)


def dumpkvs() -> Dict[str, object]:
    return _current.dumpkvs()


def log(*args) -> None:
    _current.log(*args)


__all__ = ["configure", "default_log_path", "get_current", "get_dir", "logkv", "logkv_mean", "logkvs", "dumpkvs",
           "log", "Logger"]
