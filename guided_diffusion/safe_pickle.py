"""The one restricted unpickler: pickles are read with an allow-list of globals, so a file never runs code.

``torch.load(weights_only=True)`` is torch's own restricted unpickler for checkpoints; it also accepts the
globals in :data:`TORCH_SAFE_GLOBALS` (DiT-style checkpoints store their ``args`` as an argparse Namespace, a
plain attribute bag). Everything else pickled (CIFAR-10's batches, network snapshots) goes through
:func:`restricted_load` with the globals its format needs; a file that names any other global is refused
with :class:`ForbiddenGlobal`, naming it.
"""

from __future__ import annotations

import argparse
import importlib
import pickle
from typing import IO, Callable, Dict, Mapping, Tuple

# Globals torch.load(weights_only=True) may build besides tensors and containers.
TORCH_SAFE_GLOBALS = [argparse.Namespace]


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list (its message is ``module.name``)."""


def _numpy_attr(submodule: str, name: str):
    import numpy as np

    if not submodule:
        return getattr(np, name)
    for prefix in ("numpy._core", "numpy.core"):  # NumPy 2 first: its numpy.core warns when touched
        try:
            module = importlib.import_module(f"{prefix}.{submodule}")
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    raise ForbiddenGlobal(f"numpy has no {submodule}.{name}")


# The only globals a pickle of numpy arrays needs (NumPy 1 and 2 module names, Python 2 and 3 writers).
_NUMPY_PRIVATE = (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
NUMPY_ARRAY_GLOBALS: Dict[Tuple[str, str], Callable[[], object]] = {
    **{(f"{pkg}.{sub}", attr): (lambda sub=sub, attr=attr: _numpy_attr(sub, attr))
       for pkg in ("numpy.core", "numpy._core") for sub, attr in _NUMPY_PRIVATE},
    ("numpy", "ndarray"): lambda: _numpy_attr("", "ndarray"),
    ("numpy", "dtype"): lambda: _numpy_attr("", "dtype"),
    ("_codecs", "encode"): lambda: importlib.import_module("_codecs").encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Builds containers, strings, numbers and the allowed globals only (``allowed``: (module, name) -> a
    function returning the object to use); any other global raises :class:`ForbiddenGlobal`."""

    def __init__(self, file: IO[bytes], allowed: Mapping[Tuple[str, str], Callable[[], object]], **kwargs):
        super().__init__(file, **kwargs)
        self.allowed = allowed

    def find_class(self, module: str, name: str):
        make = self.allowed.get((module, name))
        if make is None:
            raise ForbiddenGlobal(f"{module}.{name}")
        return make()


def restricted_load(file: IO[bytes], allowed: Mapping[Tuple[str, str], Callable[[], object]] = NUMPY_ARRAY_GLOBALS,
                    **kwargs):
    """``pickle.load`` through :class:`RestrictedUnpickler` (``kwargs``: e.g. ``encoding="bytes"``)."""
    return RestrictedUnpickler(file, allowed, **kwargs).load()


__all__ = ["ForbiddenGlobal", "RestrictedUnpickler", "restricted_load", "NUMPY_ARRAY_GLOBALS", "TORCH_SAFE_GLOBALS"]
