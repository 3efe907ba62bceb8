"""Writers for seeded sampling runs: sharded, resumable, never a half-written file.

- :func:`run_seeded_sampling` ends in ADM's ``samples_NxHxWx3.npz`` with a PNG grid beside it. Each rank
  samples batches of the seeds not yet done and writes every batch as a shard
  (``<out>/shards/shard_<first seed>_<count>.npz`` holding its seeds, images and labels) through a temp file.
  A restarted run skips the seeds its shards already hold, whatever the world size or batch size, so it ends
  with the same npz as an uninterrupted run. Rank 0 then assembles the shards in seed order, writes the npz,
  the grid and the flags, and removes the shards.
- :func:`write_seed_pngs` writes one PNG per seed (EDM's ``generate.py`` layout, or any naming such as a
  dataset's ``{idx:06d}.png``); a restarted run makes only the files still missing.

Both take a ``sample_batch(seeds) -> (uint8 NHWC images, labels or None)`` from
:func:`guided_diffusion.sampling.make_batch_sampler`.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import shutil
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import dist_util, logger
from .files import atomic_write_bytes, write_json

BatchFn = Callable[[List[int]], Tuple[np.ndarray, Optional[np.ndarray]]]


def to_uint8(x: torch.Tensor, rounding: str = "adm") -> np.ndarray:
    """[-1, 1] NCHW -> uint8 NHWC: "adm" truncates ((x + 1) * 127.5).clamp(0, 255) as ADM's scripts do, "edm"
    rounds (x * 127.5 + 128).clip(0, 255) as EDM's generate.py does."""
    if rounding not in ("adm", "edm"):
        raise ValueError(f"rounding must be adm or edm, got {rounding!r}")
    x = x.float() * 127.5 + (127.5 if rounding == "adm" else 128.0)
    x = x.clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def image_grid(images: np.ndarray, nrow: Optional[int] = None, pad: int = 2) -> np.ndarray:
    """Tile uint8 NHWC images into one HWC image, ``nrow`` per row (default: a near-square grid)."""
    n, h, w, c = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid


def save_png(image: np.ndarray, path: str, factor: int = 1) -> None:
    """Write an HWC uint8 image as PNG (atomically), enlarged ``factor`` times (nearest neighbour)."""
    pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    if factor > 1:
        pil = pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    atomic_write_bytes(buf.getvalue(), path)


def write_npz(path: str, images: np.ndarray, labels: Optional[np.ndarray] = None) -> None:
    """ADM's layout: positional ``arr_0`` (uint8 NHWC) and, when given, ``arr_1`` (int64 labels)."""
    buf = io.BytesIO()
    arrays = [images] if labels is None else [images, labels.astype(np.int64)]
    np.savez(buf, *arrays)
    atomic_write_bytes(buf.getvalue(), path)


def npz_name(n: int, h: int, w: int) -> str:
    return f"samples_{n}x{h}x{w}x3.npz"


def _done_seeds(shard_dir: str) -> Dict[int, str]:
    done = {}
    for path in sorted(glob.glob(os.path.join(shard_dir, "shard_*.npz"))):
        with np.load(path) as f:
            for s in f["seeds"].tolist():
                done[int(s)] = path
    return done


def _check_identity(shard_dir: str, identity: Dict) -> None:
    """Shards from another configuration must not be mixed in: refuse with the fix. A folder that holds no
    shard yet (a run that failed before its first batch) takes the new configuration."""
    path = os.path.join(shard_dir, "config.json")
    ident = json.loads(json.dumps(identity, sort_keys=True, default=str))
    if os.path.isfile(path) and glob.glob(os.path.join(shard_dir, "shard_*.npz")):
        with open(path) as f:
            old = json.load(f)
        if old != ident:
            diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
            raise ValueError(f"{shard_dir} holds shards of a run with different flags ({', '.join(diff)}); "
                             "rerun with the same flags to resume it, or use another --log_path")
    else:
        write_json(ident, path)


def run_seeded_sampling(sample_batch: BatchFn, *, seeds: Sequence[int], batch_size: int, out_dir: str,
                        image_shape: Tuple[int, int], identity: Dict, flags: Optional[Dict] = None,
                        progress: bool = True, grid_count: int = 64) -> str:
    """Sample every seed (sharded over ranks, resumable) and return the path of the final npz.

    ``sample_batch(seeds)`` returns (uint8 NHWC images, int labels or None) for those seeds; it must
    depend only on the seeds. ``identity`` holds the flags that change the images (model, sampler,
    scale, ...); a folder whose shards were made with other values is refused.
    """
    rank = dist_util.get_rank()
    seeds = _unique_seeds(seeds)
    h, w = image_shape
    final = os.path.join(out_dir, npz_name(len(seeds), h, w))
    shard_dir = os.path.join(out_dir, "shards")
    if os.path.isfile(final):
        logger.log(f"{final} already exists; nothing to sample")
        return final
    if rank == 0:
        os.makedirs(shard_dir, exist_ok=True)
        _check_identity(shard_dir, identity)
    dist_util.barrier()
    if rank != 0:
        _check_identity(shard_dir, identity)

    done = _done_seeds(shard_dir)
    dist_util.barrier()  # everyone has read the same set before anyone adds to it
    todo = [s for s in seeds if s not in done]
    if done and rank == 0:
        logger.log(f"resuming: {len(seeds) - len(todo)} of {len(seeds)} samples found in {shard_dir}")
    for chunk, images, labels in _my_batches(sample_batch, todo, batch_size, progress):
        buf = io.BytesIO()
        extra = {} if labels is None else {"labels": np.asarray(labels, dtype=np.int64)}
        np.savez(buf, seeds=np.asarray(chunk, dtype=np.int64), images=images, **extra)
        atomic_write_bytes(buf.getvalue(), os.path.join(shard_dir, f"shard_{chunk[0]:09d}_{len(chunk)}.npz"))

    if rank == 0:
        _assemble(seeds, shard_dir, final, flags, grid_count)
    dist_util.barrier()
    return final


def _assemble(seeds: List[int], shard_dir: str, final: str, flags: Optional[Dict], grid_count: int) -> None:
    by_seed: Dict[int, Tuple[np.ndarray, Optional[int]]] = {}
    for path in sorted(glob.glob(os.path.join(shard_dir, "shard_*.npz"))):
        with np.load(path) as f:
            labels = f["labels"] if "labels" in f.files else None
            for i, s in enumerate(f["seeds"].tolist()):
                by_seed[int(s)] = (f["images"][i], None if labels is None else int(labels[i]))
    missing = [s for s in seeds if s not in by_seed]
    if missing:
        raise RuntimeError(f"{len(missing)} seeds have no shard (first: {missing[:5]}); rerun the same command")
    images = np.stack([by_seed[s][0] for s in seeds])
    has_labels = by_seed[seeds[0]][1] is not None
    labels = np.array([by_seed[s][1] for s in seeds], dtype=np.int64) if has_labels else None
    base = final[:-len(".npz")]
    if flags is not None:
        write_json(flags, base + "_flags.json")
    # Tiny images (digits at 16px) are enlarged so that the grid is readable at a glance.
    save_png(image_grid(images[:grid_count]), base + "_grid.png", factor=max(1, 64 // images.shape[1]))
    write_npz(final, images, labels)  # last: its presence means the run is complete
    shutil.rmtree(shard_dir, ignore_errors=True)
    logger.log(f"saved {final} ({len(seeds)} samples) and {os.path.basename(base)}_grid.png")


def png_bytes(image: np.ndarray) -> bytes:
    """An HWC uint8 image (1 or 3 channels) as PNG bytes ('L' or 'RGB')."""
    buf = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def seed_png_name(seed: int, subdirs: bool = False) -> str:
    """EDM's layout: ``{seed:06d}.png``, or ``{seed - seed % 1000:06d}/{seed:06d}.png`` with ``subdirs``."""
    return f"{seed - seed % 1000:06d}/{seed:06d}.png" if subdirs else f"{seed:06d}.png"


def write_seed_pngs(sample_batch: BatchFn, *, seeds: Sequence[int], batch_size: int, out_dir: str,
                    name: Callable[[int], str] = seed_png_name, progress: bool = True) -> List[str]:
    """One PNG per seed at ``out_dir/name(seed)`` (temp file, then rename); returns the paths in seed order.

    Seeds whose file exists are skipped, so a restarted run makes only the missing ones; rank r takes every
    world-th batch of what is left. Labels are not stored (EDM's layout has none).
    """
    seeds = _unique_seeds(seeds)
    paths = {s: os.path.join(out_dir, name(s)) for s in seeds}
    todo = [s for s in seeds if not os.path.exists(paths[s])]
    dist_util.barrier()  # every rank has listed the folder before anyone writes to it
    if dist_util.is_main() and len(todo) < len(seeds):
        logger.log(f"resuming: {len(seeds) - len(todo)} of {len(seeds)} images already in {out_dir}")
    for chunk, images, _ in _my_batches(sample_batch, todo, batch_size, progress):
        for seed, image in zip(chunk, images):
            atomic_write_bytes(png_bytes(image), paths[seed])
    return [paths[s] for s in seeds]


def _unique_seeds(seeds: Sequence[int]) -> List[int]:
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError("the seed list repeats seeds; every sample needs its own seed")
    return seeds


def _my_batches(sample_batch: BatchFn, todo: List[int], batch_size: int, progress: bool):
    """Yield (seeds, images, labels) of this rank's share of ``todo`` (every world-th batch), with a progress
    bar on rank 0; all ranks meet at a barrier when done."""
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)][rank::world]
    bar = tqdm(total=len(todo), unit="img", disable=not (progress and rank == 0), dynamic_ncols=True,
               desc="sampling")
    for chunk in batches:
        images, labels = sample_batch(chunk)
        yield chunk, images, labels
        bar.update(len(chunk) * world)
    bar.close()
    dist_util.barrier()


__all__ = ["run_seeded_sampling", "write_seed_pngs", "seed_png_name", "png_bytes", "to_uint8", "image_grid",
           "save_png", "write_npz", "npz_name"]
