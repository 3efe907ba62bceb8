"""The original's files (tqch/v-diffusion-torch): its configs as flags, its checkpoints as state dicts, and the
weights of either VDPM architecture loaded with errors that name the wrong flag.

Configs. The original has two formats. The 2024 one (``configs/{cifar10_cond,cifar10_uncond,celeba}.json``) has
sections data/train/model/diffusion/conditional/speedup and is completed from ``configs/defaults.json``
(``--default-config-path``: a value missing or null is taken from it, section by section). The 2023 one
(``configs/{cifar10,celeba}.json``) keeps the network in a ``denoise`` section and was read without defaults (its
command line supplied the rest). This package's configs name their ``arch``; they are complete, and a value they
leave out keeps the script's default. :func:`read_config` reads all three into one flat dict of flag names: ``name``
-> ``dataset``, a config that names no ``arch`` builds the original UNet, a 2023 config that leaves ``num_heads``
out keeps it unset (0), ``in_channels`` / ``out_channels`` / ``resample_with_res`` are checked and dropped, and the
settings this package has no use for are dropped with a note (``speedup``: cuDNN / TF32 / reduced-precision
switches; ``save_rng_state``: every checkpoint here holds the full training state anyway; ``x0eps_coef``: the same
posterior mean in another basis; ``source``). ``allow_rescale`` true (the network fed the rescaled time t') is
refused. The 2024 defaults file spells ``epoch``, which its train.py never reads; that key is dropped too.

Checkpoints. The original saves ``{"model", "optimizer", "ema": {"decay", "shadow", "num_updates"},
"scheduler", "epoch", ...}`` (keys under "module." when trained with DDP); ``--use-ema`` takes ``ema.shadow``.
Both versions use this format and the same UNet parameter names (2024 adds the ``use_xformers`` layout).

Versions. Where the original's 2023 code (b71efc7, the one its README's commands describe) and its 2024 code
(d399a63) differ, this package follows:

- ``legacy`` schedule: 2023 rescaled DDPM's linear-beta log alpha_bar to end at -20 (lambda from 20.0 to -20.0,
  lambda(0.5) = -5.03); 2024 uses DDPM's alpha_bar itself (lambda from 20.72 to -10.12, lambda(0.5) = -2.46).
  ``--logsnr-schedule legacy`` is the 2024 one.
- ``both`` output, training: 2023 compared each head with its own target (x0 head with x0, eps head with eps);
  2024 compares the mixed x0 = sigma^2 x0_head + alpha^2 x0(eps_head) and the eps re-derived from it. Here the
  loss is taken on the mixed prediction (2024). Sampling mixed the heads in both versions, and so does this one.
- Reweighting names: 2023 ``truncated_snr`` / ``alpha2``, 2024 ``snr_trunc`` / ``snr_1plus``; both accepted.
- Label dropout for classifier-free guidance: 2023 before the forward pass, 2024 after it (so it never trained
  the unconditional branch); here before (2023).
- Configs: 2023 ``configs/<dataset>.json`` whose values beat typed flags, no defaults file; 2024 ``--config-path``
  plus ``defaults.json``, typed flags winning. Here typed flags always win; configs/vdpm follow the 2024 files
  and both formats are read (above).
- Script flags: both versions' names are accepted (``--chkpt-*`` and ``--ckpt-*``, ``--root`` and ``--data-root``
  / ``--data_root``, ``--config-dir`` and ``--config-path``); see the scripts' help.
- Unchanged between them and kept: the decoder term of the KL loss (centred on the predicted x0), the guided
  posterior mean (1 + w) cond - w uncond, DDIM with eta 0, the EMA warm-up.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..data import VDPM_DATASET_INFO
from ..flags import load_config, read_config_file, resolve_config_path
from ..models.checkpoints import (CheckpointMismatchError, load_state_dict_checked, read_checkpoint_file,
                                  strip_module_prefix)
from ..models.vdpm_unet import VDiffusionUNet

StateDict = Dict[str, torch.Tensor]
# Keys that describe this machine or a feature with no counterpart here: dropped from a config, with the reason.
DROPPED_KEYS = {
    "cudnn_benchmark": "speed setting", "allow_tf32": "speed setting", "allow_fp16": "speed setting",
    "allow_bf16": "speed setting", "save_rng_state": "checkpoints here always hold the full training state",
    "x0eps_coef": "the same posterior mean written in another basis", "source": "a note", "comment": "a note",
    "epoch": "the original's defaults.json spelling, never read by its train.py",
}
# The original's model name -> the dataset flag; everything else keeps its name.
RENAMED_KEYS = {"name": "dataset"}
# When the data set's config is chosen by --dataset (what the original's 2023 train.py did with
# configs/<dataset>.json): CIFAR-10 has a conditional and an unconditional config, picked by --use-cfg.
DATASET_CONFIGS = {"cifar10": ("cifar10_uncond", "cifar10_cond"), "celeba": ("celeba", "celeba")}


def dataset_config_name(dataset: str, use_cfg: bool) -> Optional[str]:
    """The config the original uses for ``dataset`` (None: it ships none, e.g. for MNIST and the digits)."""
    pair = DATASET_CONFIGS.get(dataset)
    return None if pair is None else pair[bool(use_cfg)]


def _translate(flat: Mapping, source: str, check: bool, notes: List[str]) -> Dict:
    out: Dict = {}
    for key, value in flat.items():
        if key in DROPPED_KEYS:
            if value not in (None, False) and key not in ("source", "comment", "epoch"):
                notes.append(f"{source}: {key}={value} ignored ({DROPPED_KEYS[key]})")
            continue
        if key == "allow_rescale":
            if value:
                raise ValueError(f"{source}: allow_rescale true (the network fed the rescaled time t') is not "
                                 "supported; set it to false")
            continue
        if key == "resample_with_res":
            if value is False:
                raise ValueError(f"{source}: resample_with_res false is not supported (the original's strided "
                                 "downsampling conv has no padding, so that model cannot run)")
            continue
        if key in ("in_channels", "out_channels"):
            if check:
                out["_" + key] = value
            continue
        out[RENAMED_KEYS.get(key, key)] = value
    return out


def read_config(name_or_path: Union[str, Path], config_dir: Optional[Union[str, Path]] = None,
                defaults: Optional[Union[str, Path]] = None, flag: str = "--config") -> Tuple[Dict, List[str]]:
    """A config (the original's 2023 or 2024 format, or this package's) as flat flag values, completed from
    ``defaults`` unless it is a 2023 config; returns (flags, notes about what was dropped or assumed)."""
    path = resolve_config_path(name_or_path, config_dir, flag)
    notes: List[str] = []
    flat = _translate(load_config(path, flag=flag), str(path), True, notes)
    is_2023 = "denoise" in read_config_file(path)  # its sections
    # A config naming its arch is this package's (its gaps keep the script's defaults); the original's
    # 2024 configs are completed from its defaults file.
    if defaults and not is_2023 and "arch" not in flat:
        dpath = resolve_config_path(defaults, None, "--default-config-path")
        for key, value in _translate(load_config(dpath, flag="--default-config-path"), str(dpath), False,
                                     notes).items():
            if flat.get(key) is None:
                flat[key] = value
    flat = {k: v for k, v in flat.items() if v is not None or k in ("head_dim", "num_heads", "embedding_dim")}
    flat.setdefault("arch", "original")
    if flat["arch"] == "original":
        # Unset sizes are the original's None; 2023 configs leave num_heads out (heads of head_dim channels).
        flat["num_heads"] = flat.get("num_heads") or 0
        flat["head_dim"] = flat.get("head_dim") or -1
        flat["embedding_dim"] = flat.get("embedding_dim") or 0
    if isinstance(flat.get("apply_attn"), bool):
        levels = len(flat.get("ch_multipliers") or [])
        if not levels:
            raise ValueError(f"{path}: apply_attn {flat['apply_attn']} (all levels) needs ch_multipliers")
        flat["apply_attn"] = [flat["apply_attn"]] * levels
    _check_channels(flat, str(path))
    return flat, notes


def _check_channels(flat: Dict, source: str) -> None:
    """in_channels / out_channels of a config must fit its data set and output type (then they are dropped)."""
    cin, cout = flat.pop("_in_channels", None), flat.pop("_out_channels", None)
    info = VDPM_DATASET_INFO.get(flat.get("dataset", ""))
    if info is None:
        return
    if cin is not None and cin != info.in_channels:
        raise ValueError(f"{source}: in_channels {cin} does not fit {info.name} ({info.in_channels} channels)")
    both = flat.get("model_out_type") == "both"
    if cout is not None and cout != info.in_channels * (2 if both else 1):
        raise ValueError(f"{source}: out_channels {cout} does not fit model_out_type "
                         f"{flat.get('model_out_type')} on {info.name}")


# ---------------------------------------------------------------------------------------------- checkpoints
def is_original_checkpoint(obj) -> bool:
    """Whether a loaded file has the original's layout (a "model" state dict beside optimizer / EMA entries)."""
    return (isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping)
            and any(k in obj for k in ("ema", "optimizer", "epoch")))


def read_weights(path: Union[str, Path], use_ema: bool, flag: str = "--ckpt-path") -> Tuple[StateDict, str]:
    """The state dict in ``path``: the original's ``model`` (or ``ema.shadow`` with ``use_ema``), or a plain
    state dict (this package's files; their EMA lives in its own ema_<rate>_NNNNNN.pt, chosen by the caller).
    Returns (state dict, "original" or "plain"). Only tensors and plain containers are read."""
    path = Path(path)
    obj = read_checkpoint_file(path, flag=flag)
    if is_original_checkpoint(obj):
        if use_ema:
            ema = obj.get("ema")
            if not isinstance(ema, Mapping) or not isinstance(ema.get("shadow"), Mapping):
                raise ValueError(f"{path} holds no EMA weights (the run was trained without --use-ema); "
                                 "drop --use-ema")
            sd = ema["shadow"]
        else:
            sd = obj["model"]
        return strip_module_prefix(dict(sd)), "original"
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return strip_module_prefix(dict(obj)), "plain"
    raise ValueError(f"{path} is neither a state dict nor a v-diffusion checkpoint ({{'model', 'ema', ...}})")


def has_label_embedding(state_dict: Mapping) -> bool:
    """Whether the weights are class-conditional (the original infers use_cfg this way)."""
    return any(k.startswith(("class_embed.", "label_emb.")) for k in state_dict)


def infer_original_flags(sd: Mapping[str, torch.Tensor]) -> Dict:
    """The flags that the key names and shapes of an original-layout state dict determine."""
    out: Dict = {}
    if "in_conv.weight" in sd:
        out["hid_channels"] = sd["in_conv.weight"].shape[0]
    if "time_embed.0.weight" in sd:
        out["embedding_dim"] = sd["time_embed.0.weight"].shape[0]
    levels = sorted({int(m.group(1)) for k in sd for m in [re.match(r"downsamples\.level_(\d+)\.", k)] if m})
    if levels and "hid_channels" in out:
        widths = [sd[f"upsamples.level_{i}.0.0.conv1.weight" if f"upsamples.level_{i}.0.0.conv1.weight" in sd
                     else f"upsamples.level_{i}.0.conv1.weight"].shape[0] for i in levels]
        out["ch_multipliers"] = ",".join(str(w // out["hid_channels"]) for w in widths)
        out["apply_attn"] = ",".join(str(int(any(k.startswith(f"downsamples.level_{i}.0.1.") for k in sd)))
                                     for i in levels)
        blocks = {int(m.group(1)) for k in sd for m in [re.match(r"downsamples\.level_0\.(\d+)\.", k)] if m}
        out["num_res_blocks"] = len(blocks) - (len(levels) > 1)
    out["use_cfg"] = any(k.startswith("class_embed.") for k in sd)
    out["use_xformers"] = any(".to_q." in k for k in sd)
    if "out_conv.2.weight" in sd:
        out["out_channels"] = sd["out_conv.2.weight"].shape[0]
    return out


def load_network(model: torch.nn.Module, state_dict: StateDict, flags: Optional[Dict] = None,
                 flag_names: Optional[Dict] = None, where: str = "the checkpoint") -> torch.nn.Module:
    """Load ``state_dict`` strictly into a VDPM network of either architecture; a mismatch raises an error
    naming the flags that differ (``--arch`` when the layouts differ)."""
    original_model = isinstance(model, VDiffusionUNet)
    original_weights = "in_conv.weight" in state_dict or any(k.startswith("downsamples.") for k in state_dict)
    adm_weights = any(k.startswith("input_blocks.") for k in state_dict)
    if original_model and adm_weights or (not original_model and original_weights):
        want = "original" if original_weights else "adm"
        raise CheckpointMismatchError(
            f"{where} holds the {want} UNet's weights but the model was built with --arch "
            f"{'original' if original_model else 'adm'}; pass --arch {want}", [], [], [], [f"--arch {want}"])
    if not original_model:
        load_state_dict_checked(model, state_dict, flags=flags, flag_names=flag_names)
        return model
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        found, mine = infer_original_flags(state_dict), infer_original_flags(expected)
        hints = [f"--{k.replace('_', '-')}: {where} has {v}, the model {mine.get(k)}"
                 for k, v in found.items() if mine.get(k) != v]
        lines = [f"{where} does not match the original UNet built from the flags: {len(missing)} missing, "
                 f"{len(unexpected)} unexpected keys, {len(mismatched)} shape mismatches."]
        lines += ["Probably wrong flags:"] + [f"  {h}" for h in hints] if hints else []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
            if keys:
                more = f" ... ({len(keys)} in all)" if len(keys) > 8 else ""
                lines.append(f"{title}: {', '.join(keys[:8])}{more}")
        raise CheckpointMismatchError("\n".join(lines), missing, unexpected,
                                      [(k, tuple(state_dict[k].shape), tuple(expected[k].shape)) for k in mismatched],
                                      hints)
    model.load_state_dict(state_dict, strict=True)
    return model


__all__ = ["read_config", "dataset_config_name", "read_weights", "is_original_checkpoint", "has_label_embedding",
           "infer_original_flags", "load_network", "DATASET_CONFIGS", "DROPPED_KEYS"]
