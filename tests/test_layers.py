"""The package's layers, read from the import statements: nothing imports upwards, no script imports a script.

A layer lists the package modules it may import (its own included). Models are architectures only; samplers
know denoisers and trajectories, never a model family or guidance; processes never sample; the time and
trajectory core imports nothing above it. Glue (script_util, the family packages, train, sampling, ...) is
free to use every layer. Imports inside functions count too: a late import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "guided_diffusion"

# layer -> the package modules (first component under guided_diffusion) it may import.
ALLOWED: Dict[str, Set[str]] = {
    "timesteps": set(),
    "nn": set(),
    "files": set(),
    "labels": set(),
    "safe_pickle": set(),
    "trajectory": {"timesteps"},
    "denoisers": {"denoisers", "timesteps", "trajectory", "nn"},
    "diffusion": {"diffusion", "denoisers", "timesteps", "trajectory", "nn", "labels"},
    "samplers": {"samplers", "denoisers", "timesteps", "trajectory"},
    "guidance": {"guidance", "denoisers", "timesteps", "trajectory", "nn", "labels"},
    "models": {"models", "nn", "safe_pickle"},
    # The shared loop knows no family: families bring their objectives to it.
    "train": {"train", "dist_util", "logger", "labels", "models", "nn", "files", "flags", "safe_pickle", "timesteps",
              "data"},
}


def module_of(path: Path) -> Tuple[str, ...]:
    """guided_diffusion/samplers/ddim.py -> ("guided_diffusion", "samplers", "ddim")."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(source: str, module: Tuple[str, ...], is_package: bool) -> Iterator[Tuple[int, str]]:
    """(line, absolute dotted name) of every import in ``source``, relative ones resolved."""
    package = module if is_package else module[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = ".".join(base + ((node.module,) if node.module else ()))
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:  # ``from . import dist_util`` imports a module
                yield node.lineno, f"{name}.{alias.name}"


def package_layer(dotted: str) -> Optional[str]:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "guided_diffusion" else None


def upward_edges(source: str, module: Tuple[str, ...], is_package: bool) -> List[str]:
    """The imports of one package file that its layer does not allow."""
    layer = module[1] if len(module) > 1 else None
    if layer not in ALLOWED:
        return []
    bad = []
    for line, name in imported_modules(source, module, is_package):
        target = package_layer(name)
        if target is not None and target not in ALLOWED[layer] and target != layer:
            if (PACKAGE / target).is_dir() or (PACKAGE / f"{target}.py").is_file():
                bad.append(f"{'/'.join(module)}.py:{line} ({layer}) imports {name}")
    return bad


def package_files():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_layer_imports_upwards():
    bad = []
    for path in package_files():
        bad += upward_edges(path.read_text(), module_of(path), path.name == "__init__.py")
    assert not bad, "upward imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer,line", [
    ("models/unet.py", "from ..samplers import sample_ddim"),
    ("models/unet.py", "from ..diffusion.continuous import LogSNRSchedule"),
    ("samplers/ddim.py", "from ..guidance import classifier_guide"),
    ("samplers/common.py", "from ..models.unet import UNetModel"),
    ("diffusion/continuous.py", "from ..samplers import sample_ddim"),
    ("timesteps.py", "from .trajectory import Trajectory"),
    ("samplers/heun.py", "    import guided_diffusion.guidance.cfg"),
    ("train/loop.py", "from ..vdpm import NULL_LABEL"),
])
def test_the_checker_sees_a_deliberate_upward_import(layer, line):
    """Each rule bites: the real file plus one upward import fails the check."""
    path = PACKAGE / layer
    source = path.read_text() + f"\n\ndef _late():\n{line if line.startswith(' ') else '    ' + line}\n"
    assert upward_edges(source, module_of(path), path.name == "__init__.py")


def test_no_script_imports_another_script():
    scripts = {p.stem for p in (REPO / "python_scripts").glob("*.py")}
    bad = []
    for folder in ("python_scripts", "evaluations"):
        for path in sorted((REPO / folder).glob("*.py")):
            for line, name in imported_modules(path.read_text(), module_of(path), False):
                if name.split(".")[0] in scripts or name.startswith("python_scripts"):
                    bad.append(f"{folder}/{path.name}:{line} imports {name}")
            assert "sys.path.insert" not in path.read_text(), f"{path} edits sys.path"
    assert not bad, "scripts import scripts:\n" + "\n".join(bad)
