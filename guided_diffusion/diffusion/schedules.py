"""Discrete noise schedules and timestep respacing (ADM's conventions, exactly)."""

from __future__ import annotations

import math
from typing import Callable, Iterable, List, Set, Union

import numpy as np

BETA_SCHEDULES = ("linear", "cosine")


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """float64 betas of a named schedule.

    linear: linspace(1e-4, 0.02) scaled by 1000/T so any T spans the same noise range.
    cosine: improved DDPM's alpha_bar(t) = cos^2(((t + 0.008) / 1.008) * pi / 2), betas capped at 0.999.
    """
    if schedule_name == "linear":
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(
            num_diffusion_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        )
    raise ValueError(
        f"unknown noise schedule {schedule_name!r}: --noise_schedule takes one of {', '.join(BETA_SCHEDULES)}"
    )


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar: Callable[[float], float],
                        max_beta: float = 0.999) -> np.ndarray:
    """Discretise a continuous alpha_bar(t), t in [0, 1]: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)."""
    betas = []
    for i in range(num_diffusion_timesteps):
        t1, t2 = i / num_diffusion_timesteps, (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: Union[str, Iterable[int]]) -> Set[int]:
    """The original timesteps kept by a respacing.

    - "ddimN": the range(0, T, stride) with exactly N elements for the smallest such integer stride
      (ddim25 of 1000 keeps 0, 40, ..., 960).
    - "N" or "a,b,c" (or a list of ints): split T into equal contiguous sections (the remainder goes to the
      first ones) and take the given count from each at an evenly rounded fractional stride, both ends
      included ("25" of 1000 keeps 0, 42, ..., 999).
    """
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            try:
                desired = int(text[len("ddim"):])
            except ValueError:
                raise ValueError(
                    f"unknown timestep respacing {section_counts!r}: write ddimN, e.g. ddim25") from None
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(
                f"cannot take exactly {desired} DDIM steps with an integer stride from {num_timesteps} steps; "
                f"choose a count whose stride divides evenly, or use plain {desired!r} respacing"
            )
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(
                f"unknown timestep respacing {section_counts!r}: use 'N' (e.g. '250'), 'ddimN' (e.g. 'ddim25') "
                "or comma-separated section counts (e.g. '10,15,20')"
            ) from None
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 0 for c in counts):
        raise ValueError(f"respacing counts must be non-negative integers, got {section_counts!r}")

    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    kept: List[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"respacing {section_counts!r}: section {i} has {size} steps and cannot yield {count}"
            )
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0  # accumulated, not multiplied, so rounding matches the reference tables
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return set(kept)
