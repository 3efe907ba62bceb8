"""Named flag presets for ADM's public checkpoints (``configs/adm/<name>.json`` in the repository).

Wrong flags are the usual reason an ADM checkpoint fails to load (or, for ``use_new_attention_order``, loads
and produces noise), so the published flag sets live in files instead of in people's shell history.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import List, Union

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
    path = Path(name_or_path)
    if not path.is_file():
        name = path.name[:-5] if path.name.endswith(".json") else path.name
        path = PRESET_DIR / f"{name}.json"
        if not path.is_file():
            names = available_presets()
            close = difflib.get_close_matches(name, names, n=1)
            raise FileNotFoundError(
                f"no preset {str(name_or_path)!r}: not a file, and not in {PRESET_DIR}. "
                + (f"Did you mean {close[0]!r}? " if close else "")
                + (f"Available presets: {', '.join(names)}" if names else
                   "That folder is missing (presets ship with the repository, not with an installed wheel)"))
    with open(path) as f:
        flags = json.load(f)
    if not isinstance(flags, dict):
        raise ValueError(f"{path} must hold a JSON object of flags, not a {type(flags).__name__}")
    return flags


__all__ = ["PRESET_DIR", "available_presets", "load_preset"]
