"""One process group whatever launched us: torchrun, ``mpiexec -n K``, or a plain ``python`` process.

The names (``setup_dist``, ``dev``, ``load_state_dict``, ``sync_params``) are ADM's, so scripts written for
guided-diffusion keep working. What differs: torchrun is detected first, mpi4py is imported only when an
MPI launcher is detected (and only to agree on a rendezvous port), a single process needs no network at
all, and ``--gpus`` picks devices instead of a fixed eight-GPUs-per-node rule.
"""

from __future__ import annotations

import atexit
import os
import re
import socket
from datetime import timedelta
from typing import Iterable, List, Optional, Sequence, Union

import torch
import torch.distributed as dist

# (rank, world size, local rank) variables set by each launcher.
_MPI_ENV = (
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),  # MPICH / Intel MPI (hydra)
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"),  # MVAPICH2
)
_device: Optional[torch.device] = None


def parse_gpus(gpus: Union[str, int, Sequence[Union[str, int]], None]) -> Optional[List[int]]:
    """GPU ids from ``--gpus``: ``"0,2"``, ``"0 2"``, ``["0", "2"]`` (PPAP's ``--gpus 0 2``), ``["0,2"]`` or
    ``[0, 2]`` -> [0, 2]; "", [] or None -> None (every visible GPU, one per local rank)."""
    if gpus is None:
        return None
    items = [gpus] if isinstance(gpus, (str, int)) else list(gpus)
    words = [w for item in items for w in re.split(r"[\s,]+", str(item).strip()) if w != ""]
    try:
        ids = [int(w) for w in words]
    except ValueError:
        raise ValueError(f"--gpus takes GPU ids such as 0,1 or 0 1; got {gpus!r}") from None
    if any(i < 0 for i in ids):
        raise ValueError(f"--gpus takes non-negative GPU ids; got {gpus!r}")
    return ids or None


def launcher() -> str:
    """"torchrun", "mpi" or "single", from the environment the launcher left."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return "torchrun"
    if any(r in os.environ and s in os.environ for r, s, _ in _MPI_ENV):
        return "mpi"
    return "single"


def _mpi_ranks():
    for r, s, local in _MPI_ENV:
        if r in os.environ and s in os.environ:
            return int(os.environ[r]), int(os.environ[s]), os.environ.get(local)
    raise RuntimeError("no MPI rank variables in the environment")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _mpi_rendezvous(rank: int, world: int) -> None:
    """Agree on MASTER_ADDR/PORT through MPI (the only use of mpi4py here)."""
    if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        return
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(
            "launched by mpiexec but mpi4py is not importable; `pip install mpich mpi4py`, or set MASTER_ADDR "
            "and MASTER_PORT yourself, or launch with torchrun --nproc_per_node N") from exc
    comm = MPI.COMM_WORLD
    hosts = comm.allgather(socket.gethostname())
    addr = "127.0.0.1" if len(set(hosts)) == 1 else socket.gethostbyname(hosts[0])
    port = comm.bcast(_free_port() if rank == 0 else None, root=0)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)


def setup_dist(gpus: Union[str, Sequence[int], None] = None, *, timeout_minutes: float = 30.0) -> None:
    """Join (or create) the process group and pick this process's device.

    torchrun's variables win, then MPI's (MPICH, Open MPI, MVAPICH), else a one-process group that needs
    no port. Backend: nccl when CUDA is available, gloo otherwise. With ``gpus`` (``"0,1"``) local rank i
    uses gpus[i]; without it, local rank i uses GPU i modulo the visible count. Safe to call twice.
    """
    global _device
    gpus = parse_gpus(gpus)  # a bad --gpus is an error even when the group already exists
    if dist.is_initialized():
        return
    kind = launcher()
    if kind == "torchrun":
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    elif kind == "mpi":
        rank, world, local = _mpi_ranks()
        local = int(local) if local is not None else rank
    else:
        rank, world, local = 0, 1, 0

    use_cuda = torch.cuda.is_available()
    if use_cuda:
        if gpus is not None:
            if local >= len(gpus):
                raise ValueError(f"--gpus {','.join(map(str, gpus))} names {len(gpus)} GPUs but local rank "
                                 f"{local} needs one; give one id per process")
            index = gpus[local]
        else:
            index = local % torch.cuda.device_count()
        torch.cuda.set_device(index)
        _device = torch.device("cuda", index)
    else:
        _device = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    timeout = timedelta(minutes=timeout_minutes)

    if world == 1 and kind != "torchrun":
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        if kind == "mpi":
            _mpi_rendezvous(rank, world)
        os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world)
        kwargs = {"device_id": _device} if use_cuda else {}
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout,
                                **kwargs)
    atexit.register(cleanup)


def cleanup() -> None:
    """Leave the process group (registered at exit so no launcher reports an unclean shutdown)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # already torn down by an error elsewhere: nothing left to release
            pass


def dev() -> torch.device:
    """The device this process computes on (CPU until setup_dist picks a GPU)."""
    if _device is not None:
        return _device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def set_device(device: Union[str, torch.device]) -> None:
    """Compute on ``device`` instead of the one ``setup_dist`` picked (a single process's --device flag)."""
    global _device
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for but CUDA is not available; use cpu")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)
    _device = device


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def load_state_dict(path, **kwargs):
    """Read a checkpoint safely (tensors only). Every rank reads the file itself (a shared file system is
    assumed, as for the data); ``map_location`` defaults to CPU."""
    from .models.checkpoints import load_checkpoint
    return load_checkpoint(path, kwargs.pop("map_location", "cpu"), **kwargs)


def sync_params(params: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's values into every rank's tensors."""
    if get_world_size() == 1:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p, 0)


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (a one-item list on a single process)."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]


__all__ = ["setup_dist", "cleanup", "dev", "set_device", "get_rank", "get_world_size", "is_main", "barrier",
           "load_state_dict", "sync_params", "all_gather_objects", "broadcast_object", "parse_gpus", "launcher"]
