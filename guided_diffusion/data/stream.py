"""A deterministic, resumable, sharded stream of batch keys, and ADM's ``load_data`` on top of it.

The stream is a pure function of (seed, rank, world_size, step): epoch e of a rank is a permutation
seeded by (seed, rank, e), epochs are concatenated, and batch k is positions [kB, (k+1)B) of that
sequence. Each position also gets its own augmentation seed. Resuming at step s therefore reproduces,
item for item and flip for flip, what an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from .builtin import build_dataset
from .image_folder import BaseImageDataset, DataError

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # A bijective avalanche on uint64: neighbouring positions get unrelated seeds, cheaply and vectorised.
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class BatchStream:
    """Infinite batches of ``(index, aug_seed)`` keys for one rank; usable as a DataLoader batch_sampler.

    The rank owns ``range(num_items)[rank::world_size]`` (ADM's sharding). ``start_step=s`` begins at
    batch s of the stream that ``start_step=0`` yields, computed directly rather than by skipping.
    With ``shuffle=False`` every epoch is the rank's items in order.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        shuffle: bool = True,
    ):
        num_items = _check_int("num_items", num_items, 0)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}; ranks run 0..{world_size - 1}")
        self.start_step = _check_int("start_step", start_step, 0)
        self.shuffle = shuffle
        self.indices = np.arange(num_items, dtype=np.int64)[self.rank :: self.world_size]
        if len(self.indices) == 0:
            raise DataError(
                f"dataset has {num_items} items, fewer than the {self.world_size} ranks; "
                "use fewer ranks or a larger dataset"
            )
        state = np.random.SeedSequence([self.seed, self.rank]).generate_state(1, dtype=np.uint64)
        self._aug_base = state[0]
        self._epoch_cache: dict[int, np.ndarray] = {}

    @property
    def items_per_epoch(self) -> int:
        return len(self.indices)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The dataset indices of this rank's epoch ``epoch``, in stream order."""
        order = self._epoch_cache.get(epoch)
        if order is None:
            order = self.indices
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.rank, epoch])
                order = order[rng.permutation(len(order))]
            # A batch touches at most a few consecutive epochs, so two cached orders cover the live ones.
            if len(self._epoch_cache) >= 2:
                self._epoch_cache.pop(min(self._epoch_cache))
            self._epoch_cache[epoch] = order
        return order

    def aug_seeds(self, positions: np.ndarray) -> np.ndarray:
        """Non-negative int64 augmentation seeds for positions: a function of (seed, rank, position)."""
        with np.errstate(over="ignore"):
            mixed = _splitmix64(self._aug_base + positions.astype(np.uint64) * _GOLDEN)
        return (mixed >> np.uint64(1)).astype(np.int64)

    def batch(self, step: int) -> list[tuple[int, int]]:
        """The keys of batch ``step`` (0-based, counted from the start of the stream)."""
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, len(self.indices))
        items = np.empty_like(positions)
        for epoch in np.unique(epochs):
            where = epochs == epoch
            items[where] = self.epoch_order(int(epoch))[offsets[where]]
        return list(zip(items.tolist(), self.aug_seeds(positions).tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


def _default_rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if distributed else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if distributed else 1
    return rank, world_size


def _with_cond(loader: DataLoader, class_cond: bool) -> Iterator[Batch]:
    for images, labels in loader:
        yield images, ({"y": labels} if class_cond else {})


def load_data(
    *,
    data_dir: str,
    batch_size: int,
    image_size: int,
    class_cond: bool = False,
    deterministic: bool = False,
    random_crop: bool = False,
    random_flip: bool = True,
    label_from: str = "prefix",
    allow_upscale: bool = False,
    seed: int = 0,
    start_step: int = 0,
    num_workers: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    dataset: BaseImageDataset | None = None,
) -> Iterator[Batch]:
    """ADM's ``load_data``: an endless iterator of ``(float32 NCHW in [-1, 1], {"y": int64} or {})``.

    Unlike ADM, order is reproducible (``seed``) even when shuffled, ``deterministic`` only turns the
    shuffle off, and ``start_step`` resumes the stream exactly. Rank and world size default to the
    initialised torch.distributed group, else 0 and 1. Bad inputs raise DataError at call time, not at
    the first batch. A ``dataset`` already built from the same flags skips building it again.
    """
    dataset = dataset if dataset is not None else build_dataset(
        data_dir,
        image_size,
        label_from=label_from,
        random_crop=random_crop,
        random_flip=random_flip,
        allow_upscale=allow_upscale,
    )
    if class_cond and dataset.labels is None:
        raise DataError(
            f"class_cond is set but '{data_dir}' has no labels; pass --class_cond False, "
            "or store labels as 'arr_1' in the npz"
        )
    rank, world_size = _default_rank_and_world(rank, world_size)
    stream = BatchStream(
        len(dataset),
        batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        start_step=start_step,
        shuffle=not deterministic,
    )
    num_workers = _check_int("num_workers", num_workers, 0)
    loader = DataLoader(dataset, batch_sampler=stream, num_workers=num_workers)
    return _with_cond(loader, class_cond)
