"""Named flag presets for ADM's public checkpoints (``configs/adm/<name>.json`` in the repository).

Wrong flags are the usual reason an ADM checkpoint fails to load (or, for ``use_new_attention_order``, loads
and produces noise), so the published flag sets live in files instead of in people's shell history. They are
read by the package's one config loader, :func:`guided_diffusion.flags.load_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Union

from .flags import load_config

# Package-relative: the presets sit beside the package in the repository; a wheel does not ship them.
PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "adm"


def available_presets() -> List[str]:
    """Names of the presets found in ``configs/adm`` (empty when the folder is absent)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json")) if PRESET_DIR.is_dir() else []


def load_preset(name_or_path: Union[str, Path]) -> dict:
    """The flag dict of a preset name (e.g. "256x256_diffusion_uncond") or of a JSON file path.

    Model presets hold the keys of ``model_and_diffusion_defaults()``, classifier presets those of
    ``classifier_and_diffusion_defaults()``, so ``create_model_and_diffusion(**load_preset(name))`` works.
    """
    if not PRESET_DIR.is_dir() and not Path(name_or_path).is_file():
        raise FileNotFoundError(f"no preset {str(name_or_path)!r}: {PRESET_DIR} is missing (presets ship with the "
                                "repository, not with an installed wheel)")
    return load_config(name_or_path, PRESET_DIR, flag="preset")


__all__ = ["PRESET_DIR", "available_presets", "load_preset"]
