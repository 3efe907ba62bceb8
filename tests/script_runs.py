"""Helpers for tests that run the scripts in python_scripts/ (in-process or as launched processes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "python_scripts"
# A UNet small enough for a CPU step in a few milliseconds, on the 8x8 built-in digits.
TINY_MODEL = ["--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1,2",
              "--attention_resolutions", "4", "--num_head_channels", "16", "--diffusion_steps", "100"]
TINY_TRAIN = TINY_MODEL + ["--data_dir", "builtin:digits", "--batch_size", "4", "--random_flip", "False",
                           "--progress", "False"]


def env() -> dict:
    """One thread per process: two ranks on two cores must not oversubscribe them."""
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS), str(REPO), e.get("PYTHONPATH", "")])
    return e


def launcher_cmd(kind: str, nproc: int) -> list:
    """The command prefix that starts ``nproc`` ranks with ``kind`` ("python", "torchrun" or "mpiexec")."""
    if kind == "python":
        return [sys.executable]
    if kind == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    mpiexec = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec not found; `pip install mpich mpi4py` provides it")
    return [mpiexec, "-n", str(nproc), sys.executable]


def run_script(script: str, args, *, kind: str = "python", nproc: int = 1, timeout: float = 300,
               check: bool = True) -> subprocess.CompletedProcess:
    cmd = launcher_cmd(kind, nproc) + [str(SCRIPTS / script)] + [str(a) for a in args]
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def start_script(script: str, args) -> subprocess.Popen:
    cmd = [sys.executable, str(SCRIPTS / script)] + [str(a) for a in args]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def import_script(name: str):
    """Import a script from python_scripts/ as a module (its main(argv) runs in this process)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return __import__(name)


def tiny_flags(**overrides) -> dict:
    """The ADM flag dict of TINY_MODEL (what flags.json beside a tiny checkpoint holds)."""
    from guided_diffusion.script_util import model_and_diffusion_defaults
    flags = model_and_diffusion_defaults()
    it = iter(TINY_MODEL)
    for k, v in zip(it, it):
        key = k[2:]
        flags[key] = v == "True" if isinstance(flags[key], bool) else type(flags[key])(v)
    flags.update(overrides)
    return flags


def save_tiny_adm(folder: Path, seed: int = 3, **overrides) -> Path:
    """A random tiny ADM saved as a run folder holds it (model000000.pt + flags.json); returns the path."""
    import torch

    from guided_diffusion.script_util import create_model_and_diffusion
    from guided_diffusion.train import write_json
    flags = tiny_flags(**overrides)
    torch.manual_seed(seed)
    model, _ = create_model_and_diffusion(**flags)
    with torch.no_grad():  # the zero-initialised output layer would make every sample identical
        for p in model.out.parameters():
            p.normal_(0, 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model000000.pt")
    write_json(flags, str(folder / "flags.json"))
    return folder / "model000000.pt"
