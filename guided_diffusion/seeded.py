"""Per-sample random streams: sample i of a batch draws all its randomness from its own seed.

Then the image for seed s is the same on 1 or 8 ranks and at any batch size (the models are per-sample
functions), which is what makes sampling runs shardable, resumable and comparable across machines.
Numbers are drawn on the CPU and moved to the device, so a seed also gives the same noise on CPU and CUDA.
"""

from __future__ import annotations

import re
from typing import List, Sequence

import torch


def parse_seeds(text) -> List[int]:
    """``"0-3,10"`` -> [0, 1, 2, 3, 10] (EDM's notation); an int n -> [n]."""
    if isinstance(text, int):
        return [text]
    seeds: List[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ValueError(f"seed range {part!r} ends before it starts")
            seeds.extend(range(lo, hi + 1))
        elif part.isdigit():
            seeds.append(int(part))
        else:
            raise ValueError(f"cannot read seeds from {text!r}; write e.g. 0-49999 or 0,5,7")
    return seeds


class StackedRandomGenerator:
    """One ``torch.Generator`` per sample; row i of every draw comes from generator i."""

    def __init__(self, device, seeds: Sequence[int]):
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s % (1 << 64)) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def _check(self, size) -> None:
        if size[0] != len(self.generators):
            raise ValueError(f"first dimension {size[0]} must equal the number of seeds ({len(self.generators)})")

    def randn(self, size, dtype=torch.float32) -> torch.Tensor:
        size = tuple(size)
        self._check(size)
        rows = [torch.randn(size[1:], generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(rows).to(self.device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape, dtype=x.dtype).to(x.device)

    def randint(self, high: int, size=None) -> torch.Tensor:
        """One integer in [0, high) per sample (or ``size`` = (N, ...) of them)."""
        size = (len(self.generators),) if size is None else tuple(size)
        self._check(size)
        rows = [torch.randint(high, size[1:], generator=g) for g in self.generators]
        return torch.stack(rows).to(self.device)


__all__ = ["parse_seeds", "StackedRandomGenerator"]
