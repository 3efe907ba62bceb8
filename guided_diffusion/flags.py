"""The one flag and config layer: two spellings, one notion of "what the user typed", one merge order, one config
loader, one reader of the flags.json saved beside checkpoints.

- Spellings. ADM's scripts: ``--snake_case value`` with booleans as words (``--use_fp16 True``, parsed by
  :func:`str2bool`). The v-objective, EDM and DiT scripts: ``--dash-case value`` with booleans as switches
  (``--use-ema`` / ``--no-use-ema``, argparse's BooleanOptionalAction). :func:`add_dict_to_argparser` builds
  either from a dict of defaults; the destinations are snake_case in both.
- Merge order, for every script: defaults < config file < flags.json beside the checkpoint < typed flags
  (:func:`merge_flags`). A value from a file is checked and converted as the command line would have done.
- Config files (:func:`load_config`): JSON or YAML, a path or a name in a config folder; sections (``{"train":
  {...}, "model": {...}}``) merge into one flat dict of flag names, dashes read as underscores.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

SPELLINGS = ("adm", "dash")


def str2bool(v) -> bool:
    """yes/true/t/y/1 and no/false/f/n/0, any case."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (true/false), got {v!r}")


def add_dict_to_argparser(parser: argparse.ArgumentParser, default_dict: Dict, spelling: str = "adm") -> None:
    """Add a flag for every key. "adm": ``--key value`` with bools parsed by str2bool (``--use_fp16 True``) and
    None defaults as str; "dash": ``--key-name value`` and ``--flag/--no-flag`` for bools."""
    if spelling not in SPELLINGS:
        raise ValueError(f"spelling must be one of {', '.join(SPELLINGS)}, got {spelling!r}")
    for k, v in default_dict.items():
        if spelling == "dash":
            name = "--" + k.replace("_", "-")
            if isinstance(v, bool):
                parser.add_argument(name, dest=k, default=v, action=argparse.BooleanOptionalAction)
            else:
                parser.add_argument(name, dest=k, default=v, type=str if v is None else type(v))
            continue
        v_type = str if v is None else (str2bool if isinstance(v, bool) else type(v))
        parser.add_argument(f"--{k}", default=v, type=v_type)


def typed_dests(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> set:
    """The destinations of the options written in ``argv`` (``--x v``, ``--x=v``, ``--no-x``): what the user
    typed, in either spelling, which every file-borne value must yield to."""
    words = {str(a).split("=", 1)[0] for a in (argv or []) if str(a).startswith("--")}
    return {action.dest for action in parser._actions if words & set(action.option_strings)}


def _coerce(action: argparse.Action, value, source: str):
    """A file's value checked (and converted) as the command line would have checked it."""
    name = action.option_strings[0]
    if value is None:
        return None
    if isinstance(action, argparse.BooleanOptionalAction) or isinstance(action.default, bool):
        if isinstance(value, str) and action.type is str2bool:
            return str2bool(value)
        if not isinstance(value, bool):
            raise ValueError(f"{source}: {name} must be true or false, got {value!r}")
        return value
    if isinstance(value, (list, tuple)) and action.nargs in ("+", "*"):
        return [action.type(v) if action.type is not None else v for v in value]
    if isinstance(value, (list, tuple)):
        value = ",".join(str(int(v) if isinstance(v, bool) else v) for v in value)
    if isinstance(value, bool) or (action.type is int and isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{source}: {name} cannot take {value!r}")
    if action.type is not None and action.type is not str2bool:
        try:
            value = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise ValueError(f"{source}: {name} cannot take {value!r}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{source}: {name} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def apply_flag_values(parser: argparse.ArgumentParser, args: argparse.Namespace, values: Mapping, typed: set,
                      source: str, *, keys: Optional[Iterable[str]] = None, ignore: Sequence[str] = ()) -> List[str]:
    """Set every flag in ``values`` that was not typed; returns the names whose value changed.

    ``keys``: only these names are taken and the others in ``values`` are skipped (a flags.json written by
    another script holds that script's flags too); without ``keys`` a name the parser does not know is an
    error naming the known ones.
    """
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    wanted = None if keys is None else set(keys)
    if wanted is None:
        unknown = sorted(k for k in values if k not in actions and k not in ignore)
        if unknown:
            raise ValueError(f"{source} sets unknown flags {', '.join(unknown)}; known: {', '.join(sorted(actions))}")
    changed = []
    for key, value in values.items():
        if key in typed or key in ignore or key not in actions or (wanted is not None and key not in wanted):
            continue
        value = _coerce(actions[key], value, source)
        if getattr(args, key, None) != value:
            setattr(args, key, value)
            changed.append(key)
    return changed


def read_flags_beside(path: Union[str, Path]) -> Optional[Dict]:
    """The ``flags.json`` in the folder of ``path`` (a checkpoint), or None when there is none."""
    f = os.path.join(os.path.dirname(os.path.abspath(path)), "flags.json")
    if not os.path.isfile(f):
        return None
    return read_config_file(f, hint="; fix or remove it")


def merge_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Optional[Sequence[str]], *,
                config: Optional[Mapping] = None, config_source: str = "the config",
                beside: Optional[Union[str, Path]] = None, keys: Optional[Iterable[str]] = None,
                ignore: Sequence[str] = ()) -> Dict[str, List[str]]:
    """defaults < ``config`` (a flat dict from :func:`load_config`; unknown names are an error) < the flags.json
    beside the checkpoint ``beside`` < what ``argv`` typed. From the flags.json only ``keys`` are taken when
    given (it may hold another script's flags: a sampler reads a training run's), else all of it, and then a
    name this parser does not know is an error; ``ignore`` names are never taken.

    Returns {"config": names set from the config, "beside": names set from the flags.json}.
    """
    typed = typed_dests(parser, argv)
    done = {"config": [], "beside": []}
    if config:
        done["config"] = apply_flag_values(parser, args, config, typed, config_source, ignore=ignore)
    saved = read_flags_beside(beside) if beside else None
    if saved:
        source = os.path.join(os.path.dirname(os.path.abspath(beside)), "flags.json")
        saved = {k: v for k, v in saved.items() if k not in ignore}
        done["beside"] = apply_flag_values(parser, args, saved, typed, source, keys=keys)
    return done


def resolve_config_path(name_or_path: Union[str, Path], config_dir: Optional[Union[str, Path]] = None,
                        flag: str = "--config") -> Path:
    """A file path, or a bare name looked up as ``<config_dir>/<name>.json`` (or .yaml / .yml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    folder = Path(config_dir) if config_dir else None
    stem = path.name[:-len(path.suffix)] if path.suffix in (".json", ".yaml", ".yml") else path.name
    if folder is not None:
        for suffix in (".json", ".yaml", ".yml"):
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    names = sorted(p.stem for p in folder.iterdir() if p.suffix in (".json", ".yaml", ".yml")) \
        if folder is not None and folder.is_dir() else []
    close = difflib.get_close_matches(stem, names, n=1)
    where = f"not a file, and not in {folder}" if folder is not None else "not a file"
    raise FileNotFoundError(f"{flag} {str(name_or_path)!r}: {where}. "
                            + (f"Did you mean {close[0]!r}? " if close else "")
                            + (f"Available: {', '.join(names)}" if names else ""))


def read_config_file(path: Union[str, Path], hint: str = "") -> Dict:
    """A JSON or YAML file of flags (a config, a flags.json) as its top-level object, sections kept; bad
    syntax is an error that names the file (``hint`` is appended to it)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml  # only YAML configs need it

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}{hint}") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}{hint}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold an object of flags, not a {type(raw).__name__}{hint}")
    return raw


def load_config(name_or_path: Union[str, Path], config_dir: Optional[Union[str, Path]] = None,
                flag: str = "--config") -> Dict:
    """A config file as a flat dict of flag names (dashes read as underscores): its sections merge, a name
    set twice is an error, a top-level "comment" is dropped."""
    path = resolve_config_path(name_or_path, config_dir, flag)
    raw = read_config_file(path)
    flat: Dict = {}
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            k = k.replace("-", "_")
            if k in flat:
                raise ValueError(f"config {path} sets {k!r} twice")
            flat[k] = v
    flat.pop("comment", None)
    return flat


__all__ = ["str2bool", "add_dict_to_argparser", "typed_dests", "apply_flag_values", "read_flags_beside",
           "merge_flags", "resolve_config_path", "read_config_file", "load_config", "SPELLINGS"]
