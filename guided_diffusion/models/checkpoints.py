"""Loading ADM checkpoints safely, with errors that say which flag is wrong.

Most "Missing key(s) / size mismatch" reports against ADM come from flags that do not match the
checkpoint (``--num_res_blocks 3`` for the 64px model, ``--classifier_depth 4`` for its classifier,
``--learn_sigma``...). Torch's own error lists hundreds of keys and leaves the user to guess, so here the
checkpoint's key names and shapes are read back into the flags that built it and compared with the model.
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..safe_pickle import TORCH_SAFE_GLOBALS
from .unet import DEFAULT_CHANNEL_MULT
from .unet_blocks import AttentionBlock, QKVAttention

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
LIST_LIMIT = 10
# The classifier's flags carry a prefix in script_util; infer_unet_flags reports the UNet names.
CLASSIFIER_FLAG_NAMES = {
    "num_channels": "classifier_width", "num_res_blocks": "classifier_depth", "pool": "classifier_pool",
    "attention_resolutions": "classifier_attention_resolutions", "channel_mult": "classifier_channel_mult",
    "use_scale_shift_norm": "classifier_use_scale_shift_norm", "out_channels": "classifier_num_classes",
    "resblock_updown": "classifier_resblock_updown",
}
StateDict = Dict[str, torch.Tensor]


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes differ from the model's; the message names the likely wrong flags."""

    def __init__(self, message: str, missing: List[str], unexpected: List[str],
                 mismatched: List[Tuple[str, tuple, tuple]], hints: List[str]):
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched, self.hints = missing, unexpected, mismatched, hints


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop the "module." that DistributedDataParallel puts on every key (only when all keys have it)."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return OrderedDict((k[len("module."):], v) for k, v in state_dict.items())
    return state_dict


def read_checkpoint_file(path: Union[str, Path], map_location="cpu", *, flag: Optional[str] = None):
    """The object stored in ``path``, read with ``torch.load(weights_only=True)`` (plus the globals in
    ``TORCH_SAFE_GLOBALS``), so a file can never run code on load; a refusal names the global and the fix.
    ``flag`` names the option the path came from, for the error when the file is missing."""
    path = Path(path)
    how = flag or "--model_path (diffusion model) or --classifier_path (classifier)"
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"checkpoint {str(path)!r} {what}; pass the checkpoint file with {how}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {str(path)!r} is empty (0 bytes): it was never written completely; pass "
                         f"a complete checkpoint with {how}")
    try:
        with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the refused global ("Unsupported global: GLOBAL m.f", "unsupported GLOBAL m.f whose
        # module m is blocked"); any other unpickling failure means the bytes are not a pickle it can read.
        found = re.search(r"[^\n]*unsupported global[^\n]*", str(exc), flags=re.IGNORECASE)
        if found is None:
            detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
            raise _unreadable(path, exc, how, detail and f"unpickling: {detail.group(1).strip()}") from exc
        raise pickle.UnpicklingError(
            f"refusing to load {path}: it stores Python objects other than tensors and plain containers, and "
            f"unpickling them could run code from the file ({found.group(0).strip()}). If it comes from a "
            "source you trust, re-save just its state dict (torch.save(model.state_dict(), ...)) and pass "
            "that file.") from exc
    except (EOFError, KeyError) as exc:  # what torch's legacy reader raises on bytes that are no checkpoint
        raise _unreadable(path, exc, how) from exc
    except RuntimeError as exc:
        if "PytorchStreamReader" not in str(exc):  # not the zip container: a device or storage problem
            raise
        raise _unreadable(path, exc, how) from exc


def _unreadable(path: Path, exc: BaseException, how: str, reason: Optional[str] = None) -> ValueError:
    """A file torch cannot read as a checkpoint at all: truncated, or another format."""
    if reason is None:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0].strip() if str(exc).strip() else '-'}"
    return ValueError(f"checkpoint {str(path)!r} ({path.stat().st_size:,} bytes) is not a readable torch "
                      f"checkpoint: it is truncated or in another format ({reason[:120]}); pass a complete file "
                      f"written by torch.save with {how}")


def load_checkpoint(path: Union[str, Path], map_location="cpu", *, flag: Optional[str] = None,
                    select: Optional[str] = None, prefix: Optional[str] = None) -> StateDict:
    """Read a state dict with :func:`read_checkpoint_file`, so a file can never run code on load.

    Wrapped files (``{"state_dict": ...}``, ``{"model": ...}``, or one tensor dict beside metadata) are
    unwrapped and a DDP "module." prefix is stripped. ``select`` names the entry to take from a file holding
    several (``"ema"`` of DiT's {model, ema, opt, args}; dots go deeper: ``"ema.shadow"``); ``prefix`` keeps
    the keys under it, stripped (``"model.diffusion_model."`` of a Stable Diffusion file). ``flag`` names the
    option the path came from, for the error when the file is missing.
    """
    path = Path(path)
    obj = read_checkpoint_file(path, map_location, flag=flag)
    if select is not None:
        inner = obj
        for part in select.split("."):
            inner = inner.get(part) if isinstance(inner, Mapping) else None
        if not _is_state_dict(inner):
            entries = [k for k, v in obj.items() if _is_state_dict(v)] if isinstance(obj, Mapping) else []
            raise ValueError(f"{path} has no state dict under {select!r}"
                             + (f"; it has {', '.join(map(str, entries))}" if entries else ""))
        obj = inner
    elif isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = [k for k in WRAPPER_KEYS if _is_state_dict(obj.get(k))]
        inner = inner or [k for k, v in obj.items() if _is_state_dict(v)]
        if len(inner) > 1 and inner[0] not in WRAPPER_KEYS:
            raise ValueError(f"{path} holds several tensor dicts ({', '.join(map(str, inner))}); "
                             "choose one with select=")
        if not inner:
            raise ValueError(f"{path} holds no state dict (top-level keys: {', '.join(map(str, obj))[:300]})")
        obj = obj[inner[0]]
    if not _is_state_dict(obj):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    obj = strip_module_prefix(obj)
    if prefix is not None:
        kept = OrderedDict((k[len(prefix):], v) for k, v in obj.items() if k.startswith(prefix))
        if not kept:
            heads = sorted({k.split(".")[0] + "." for k in obj})
            raise ValueError(f"{path} has no keys under {prefix!r}; its keys start with {', '.join(heads[:8])}")
        obj = kept
    return obj


# ------------------------------------------------------------------------------------- flag inference

def _count(sd: Mapping, name: str) -> int:
    ids = [int(m.group(1)) for k in sd for m in [re.match(rf"{name}\.(\d+)\.", k)] if m]
    return max(ids) + 1 if ids else 0


def _kinds(sd: Mapping, block: str) -> List[str]:
    """Layer kinds of one TimestepEmbedSequential, in order: res, attn, down/up (conv resamplers), conv."""
    kinds = []
    for j in range(8):
        hit = [kind for suffix, kind in (("in_layers.2.weight", "res"), ("qkv.weight", "attn"),
                                         ("op.weight", "down"), ("conv.weight", "up"), ("weight", "conv"))
               if f"{block}.{j}.{suffix}" in sd]
        if not hit:
            break
        kinds.append(hit[0])
    return kinds


def _encoder_layout_ok(sd: Mapping, n_in: int, levels: int, n_res: int) -> bool:
    """Whether the input blocks fit `levels` levels of `n_res` ResBlocks, each level but the last ending in
    a down-ResBlock: channels change only at a level's first block, attention is all-or-none per level."""
    if n_res < 1 or levels * (n_res + 1) != n_in:
        return False
    for level in range(levels):
        first, last = 1 + level * (n_res + 1), (level + 1) * (n_res + 1) - (level == levels - 1)
        kinds = [_kinds(sd, f"input_blocks.{i}") for i in range(first, last + 1)]
        if any(k[:1] != ["res"] for k in kinds) or len({"attn" in k for k in kinds[:n_res]}) != 1:
            return False
        if level < levels - 1 and kinds[-1] != ["res"]:
            return False
        if any(f"input_blocks.{i}.0.skip_connection.weight" in sd for i in range(first + 1, last + 1)):
            return False
    return True


def format_channel_mult(mult) -> str:
    """A channel_mult tuple as the flag string ADM parses ("1,1,2,2,4,4"; 0.5 stays fractional)."""
    return ",".join(str(int(m)) if float(m).is_integer() else str(m) for m in mult)


def infer_unet_flags(state_dict: Mapping[str, torch.Tensor], image_size: Optional[int] = None) -> dict:
    """The ADM flags that the key names and shapes of a UNet or noisy-classifier state dict determine.

    Returns UNet flag names (CLASSIFIER_FLAG_NAMES maps them to the classifier's): ``model_type`` ("unet" or
    "classifier"), num_channels, in_channels, out_channels, use_scale_shift_norm; for UNets learn_sigma
    (6 output channels, RGB assumed), class_cond and num_classes; for classifiers ``pool``. When the block
    layout is unambiguous, also num_res_blocks, channel_mult (as the flag string), ``attention_ds`` (the
    downsample rates with attention) and resblock_updown (needs two levels or more). attention_resolutions
    needs the image size: a classifier's attention pool gives it, otherwise pass ``image_size``.

    Never returned, because the keys do not determine them: num_heads / num_head_channels (they only split
    channels into heads), use_new_attention_order (both orders have identical shapes; a wrong one loads
    and gives garbage), dropout, use_fp16, use_checkpoint, and a UNet's image_size.
    """
    sd = strip_module_prefix(state_dict)
    if "time_embed.0.weight" not in sd or "input_blocks.0.0.weight" not in sd:
        raise ValueError("not an ADM UNet/classifier state dict (it lacks time_embed.0.weight or "
                         "input_blocks.0.0.weight)")
    mc = sd["time_embed.0.weight"].shape[1]
    unet = _count(sd, "output_blocks") > 0
    flags: dict = dict(model_type="unet" if unet else "classifier", num_channels=mc,
                       in_channels=sd["input_blocks.0.0.weight"].shape[1])
    if "middle_block.0.emb_layers.1.weight" in sd:
        flags["use_scale_shift_norm"] = (sd["middle_block.0.emb_layers.1.weight"].shape[0]
                                         == 2 * sd["middle_block.0.out_layers.3.weight"].shape[0])
    pool_side = None
    if unet:
        if "out.2.weight" in sd:
            flags["out_channels"] = sd["out.2.weight"].shape[0]
            flags["learn_sigma"] = flags["out_channels"] == 6
        flags["class_cond"] = "label_emb.weight" in sd
        if flags["class_cond"]:
            flags["num_classes"] = sd["label_emb.weight"].shape[0]
    else:
        if "out.2.positional_embedding" in sd:
            flags["pool"], head = "attention", "out.2.c_proj.weight"
            pool_side = round((sd["out.2.positional_embedding"].shape[1] - 1) ** 0.5)
        elif "out.0.weight" in sd and sd["out.0.weight"].ndim == 1:
            flags["pool"], head = "adaptive", "out.3.weight"
        elif "out.1.weight" in sd and sd["out.1.weight"].ndim == 1:
            flags["pool"], head = "spatial_v2", "out.3.weight"
        else:
            flags["pool"], head = "spatial", "out.2.weight"
        if head in sd:
            flags["out_channels"] = sd[head].shape[0]

    layout = None  # (levels, num_res_blocks, resblock_updown or None)
    if unet:  # up-resamplers end an output block after its ResBlock (and attention): unambiguous
        n_out = _count(sd, "output_blocks")
        ups = [k for k in range(n_out) if _kinds(sd, f"output_blocks.{k}")[1:][-1:] in (["res"], ["up"])]
        levels = len(ups) + 1
        n_res = n_out // levels - 1
        if n_out % levels == 0 and n_res >= 1 and ups == [(n_res + 1) * j + n_res for j in range(levels - 1)]:
            updown = {_kinds(sd, f"output_blocks.{k}")[-1] for k in ups}
            layout = (levels, n_res, (updown == {"res"}) if len(updown) == 1 else None)
    else:  # encoder: conv downsamplers are unambiguous; down-ResBlocks look like ordinary ResBlocks
        n_in = _count(sd, "input_blocks")
        downs = [i for i in range(1, n_in) if _kinds(sd, f"input_blocks.{i}") == ["down"]]
        if downs:
            levels, n_res = len(downs) + 1, downs[0] - 1
            if downs == [(n_res + 1) * (j + 1) for j in range(levels - 1)] and levels * (n_res + 1) == n_in:
                layout = (levels, n_res, False)
        else:
            fits = [(lv, n_in // lv - 1) for lv in range(1, n_in + 1)
                    if n_in % lv == 0 and _encoder_layout_ok(sd, n_in, lv, n_in // lv - 1)]
            if len(fits) > 1 and pool_side and image_size:
                fits = [f for f in fits if pool_side * 2 ** (f[0] - 1) == image_size]
            if len(fits) == 1:
                layout = (fits[0][0], fits[0][1], True if fits[0][0] > 1 else None)
    if layout is None:
        return flags
    levels, n_res, updown = layout
    firsts = [1 + level * (n_res + 1) for level in range(levels)]
    flags["num_res_blocks"] = n_res
    flags["channel_mult"] = format_channel_mult(
        sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0] / mc for i in firsts)
    flags["attention_ds"] = tuple(2 ** lv for lv, i in enumerate(firsts)
                                  if "attn" in _kinds(sd, f"input_blocks.{i}"))
    if updown is not None:
        flags["resblock_updown"] = updown
    if pool_side:
        flags["image_size"] = image_size = pool_side * 2 ** (levels - 1)
    if image_size:
        flags["attention_resolutions"] = ",".join(str(image_size // ds) for ds in flags["attention_ds"])
    return flags


# ---------------------------------------------------------------------------------------- checked load

def _listing(title: str, keys: List[str], detail: Optional[Dict[str, str]] = None) -> List[str]:
    """Up to LIST_LIMIT lines; a ``.bias`` whose ``.weight`` is listed too is folded into that line."""
    present, detail = set(keys), detail or {}
    lines = [k + detail.get(k, "") + (" (+ .bias)" if k[:-6] + "bias" in present else "")
             for k in keys if not (k.endswith(".bias") and k[:-4] + "weight" in present)]
    more = [f"    ... and {len(lines) - LIST_LIMIT} more"] if len(lines) > LIST_LIMIT else []
    return [f"{title} ({len(keys)}):"] + [f"    {s}" for s in lines[:LIST_LIMIT]] + more if keys else []


def _flag_hints(model: nn.Module, ck_sd: Mapping, model_sd: Mapping, flags: Optional[dict],
                flag_names: Optional[Mapping[str, Optional[str]]] = None) -> List[str]:
    """Compare what the checkpoint's keys imply with what the model's keys imply, flag by flag, in the flag
    names of the model's family (``flag_names``: ADM name -> the family's flag, None where it has none)."""
    try:
        md = infer_unet_flags(model_sd)
    except ValueError:
        return []  # not an ADM UNet or classifier: its family explains its own checkpoints
    try:
        ck = infer_unet_flags(ck_sd)
    except ValueError:
        return [f"the checkpoint does not look like an ADM UNet or classifier (first keys: "
                f"{', '.join(list(ck_sd)[:4])}); it may be another model family's format"]
    flags = flags or {}
    if ck["model_type"] != md["model_type"]:
        return ["the checkpoint is a noisy classifier (no output_blocks): pass it with --classifier_path"
                if ck["model_type"] == "classifier" else
                "the checkpoint is a diffusion UNet (it has output_blocks): pass it with --model_path"]
    is_clf = md["model_type"] == "classifier"
    size = md.get("image_size") or getattr(model, "image_size", None) or flags.get("image_size")

    def name(flag: str) -> Optional[str]:
        if flag_names is not None:
            return flag_names.get(flag, flag)
        return CLASSIFIER_FLAG_NAMES.get(flag, flag) if is_clf else flag

    def spelled(flag: str, value) -> str:
        """``--flag value``; a dash-spelled boolean is a switch, ``--flag`` or ``--no-flag``."""
        if "-" in flag and isinstance(value, bool):
            return f"--{flag}" if value else f"--no-{flag}"
        return f"--{flag} {value}"

    def differ(flag: str, why: str, value=None, mine=None) -> Optional[str]:
        """'--flag: <why>, so it looks like --flag V; the model has W' (W as passed, when flags are given)."""
        family = name(flag)
        if family is None:
            return None
        inferred = md.get(flag) if mine is None else mine
        mine = flags.get(family.replace("-", "_"), inferred)
        mine = f"'' (= {inferred})" if mine == "" else mine
        value = ck[flag] if value is None else value
        return f"--{family}: {why}, so it looks like {spelled(family, value)}; the model has {mine}"

    def changed(flag: str) -> bool:
        return flag in ck and flag in md and ck[flag] != md[flag]

    hints = []
    if changed("class_cond"):
        why = f"has label_emb.weight ({ck.get('num_classes')} classes)"
        why = why if ck["class_cond"] else "has no label_emb"
        hints.append(differ("class_cond", "the checkpoint " + why))
    elif ck.get("num_classes") != md.get("num_classes"):
        hints.append(differ("num_classes", "label_emb.weight has that many rows"))
    if changed("out_channels"):
        hints.append(differ("out_channels", "the checkpoint's head has that many classes") if is_clf else
                     differ("learn_sigma", f"out.2.weight has {ck['out_channels']} output channels in the "
                            "checkpoint (6 = learned variance)"))
    if changed("num_channels"):
        shape = tuple(ck_sd["time_embed.0.weight"].shape)
        hints.append(differ("num_channels", f"time_embed.0.weight is {shape}, i.e. (4 * mc, mc)"))
    if changed("num_res_blocks"):
        hints.append(differ("num_res_blocks", f"the checkpoint has {_count(ck_sd, 'input_blocks')} input "
                            f"blocks (the model {_count(model_sd, 'input_blocks')})"))
    ck_size = ck.get("image_size") or size
    if changed("channel_mult"):
        sizes = [s for s, m in DEFAULT_CHANNEL_MULT.items() if format_channel_mult(m) == ck["channel_mult"]]
        why = "the checkpoint's levels have those channel multiples"
        if sizes and not flags.get(name("channel_mult")) and sizes[0] != size:
            why += f" (the default for --image_size {sizes[0]})"
            ck_size = ck.get("image_size") or sizes[0]  # judge attention at the likely image size
        hints.append(differ("channel_mult", why))
    if changed("resblock_updown"):
        how = "ResBlocks" if ck["resblock_updown"] else "convolutions (op.weight / conv.weight)"
        hints.append(differ("resblock_updown", f"the checkpoint resamples with {how}"))
    if changed("use_scale_shift_norm"):
        width = "2x" if ck["use_scale_shift_norm"] else "1x"
        hints.append(differ("use_scale_shift_norm", f"emb_layers.1 outputs {width} the block's channels"))
    if changed("pool"):
        hints.append(differ("pool", "the checkpoint's head (out.*) has that layout"))
    if changed("image_size"):
        shape = tuple(ck_sd["out.2.positional_embedding"].shape)
        hints.append(differ("image_size", f"out.2.positional_embedding is {shape} (attention-pool grid)"))
    if changed("attention_ds"):
        ck_res = ",".join(str(ck_size // ds) for ds in ck["attention_ds"]) or "''" if ck_size else "?"
        md_res = ",".join(str(size // ds) for ds in md["attention_ds"]) or "''" if size else None
        if ck_res != md_res:  # equal strings: only the image size differs, hinted above
            why = (f"the checkpoint has attention (qkv keys) at downsample rates {ck['attention_ds']}, the "
                   f"model at {md['attention_ds']}" + (f" (image_size {ck_size})" if ck_size else ""))
            hints.append(differ("attention_resolutions", why, ck_res, md_res))
    hints = [h for h in hints if h]
    return hints or ["no flag difference could be read from the keys: the checkpoint may come from another "
                     "code base (e.g. improved-diffusion) or a modified model"]


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                            flags: Optional[dict] = None, strict: bool = True,
                            flag_names: Optional[Mapping[str, Optional[str]]] = None):
    """``model.load_state_dict`` with key and shape checks first, so a mismatch gives one readable
    CheckpointMismatchError (missing / unexpected keys, shape mismatches, the flags that are probably
    wrong) instead of torch's wall of keys. ``strict=False`` tolerates missing and unexpected keys, never
    a shape mismatch. ``flags`` (the dict the model was built from) only improves the wording.
    ``flag_names`` spells the hints in the model family's flags (ADM name -> e.g. "hid-channels", None to
    leave a flag out); ADM's (or the classifier's) names by default.
    Returns what ``model.load_state_dict`` returns.
    """
    if not _is_state_dict(state_dict):
        raise TypeError(f"expected a dict of tensors, got {type(state_dict).__name__}; use load_checkpoint()")
    state_dict = strip_module_prefix(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [(k, tuple(state_dict[k].shape), tuple(v.shape)) for k, v in expected.items()
                  if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if not mismatched and not (strict and (missing or unexpected)):
        return model.load_state_dict(state_dict, strict=strict)
    hints = _flag_hints(model, state_dict, expected, flags, flag_names)
    lines = [f"checkpoint does not match the {type(model).__name__}: {len(missing)} missing keys, "
             f"{len(unexpected)} unexpected keys, {len(mismatched)} shape mismatches.",
             "Probably wrong flags:"]
    lines += [f"  {h}" for h in hints]
    lines += _listing("Missing keys (in the model, not in the checkpoint)", missing)
    lines += _listing("Unexpected keys (in the checkpoint, not in the model)", unexpected)
    lines += _listing("Shape mismatches (checkpoint vs model)", [k for k, _, _ in mismatched],
                      {k: f": {c} vs {m}" for k, c, m in mismatched})
    attn = next((m for m in model.modules() if isinstance(m, AttentionBlock)), None)
    if attn is not None and "output_blocks.0.0.in_layers.2.weight" in expected and flag_names is None:
        new_order = isinstance(attn.attention, QKVAttention)
        lines.append(f"Note: use_new_attention_order (the model has {new_order}) cannot be checked from "
                     "keys; ADM's 64x64_diffusion.pt needs True, the others False.")
    raise CheckpointMismatchError("\n".join(lines), missing, unexpected, mismatched, hints)


__all__ = ["CheckpointMismatchError", "read_checkpoint_file", "load_checkpoint", "load_state_dict_checked",
           "infer_unet_flags", "strip_module_prefix", "format_channel_mult", "CLASSIFIER_FLAG_NAMES"]
