"""Guidance classifiers of PPAP's four methods, loaded strictly: ``(x_t, t) -> logits`` modules for
``classifier_cond_fn``.

- ``naive``: the off-the-shelf classifier fed ``imagenet_normalize(x_t)`` (the teacher's input convention),
  t ignored. Its weights are a finetune-layout state dict (e.g. a ``--method clean`` run; a DeiT also in timm's
  own layout), else the library's cached ImageNet weights, else random weights (with a warning).
- ``finetune``: one classifier fine-tuned on noisy images, fed raw x_t.
- ``multi_experts``: one full classifier per timestep range (:class:`FullExpertSet`), fed raw x_t.
- ``ppap``: LoRA experts sharing one frozen student (:class:`LoRAExpertSet`).

The experts are routed by the *original* train index t (what ``classifier_cond_fn`` receives under
respacing; fractional off the experts' schedule's grid), with PPAP's released rule by default
(``expert_routing="original"``: boundary steps go to the lower expert) or the training ranges
(``"training"``); see :mod:`guided_diffusion.ppap.experts`.

PPAP's sampler loaded with ``strict=False``, so a checkpoint of another method, classifier or rank left the
network untouched and it silently guided with the off-the-shelf weights; here every such mismatch is an error
naming the flag to change, raised before any weight is loaded.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..flags import read_flags_beside
from .classifiers import (CheckpointLayoutError, add_lora, build_classifier, canonical_classifier_name,
                          check_state_dict_layout, describe_layout, imagenet_normalize, load_classifier_state_dict,
                          read_state_dict, read_weights_file, resolve_init_weights)
from .experts import ExpertRanges, FullExpertSet, LoRAExpertSet, check_routing
from .lora import merge_lora

METHODS = ("naive", "finetune", "multi_experts", "ppap")
# The training method whose checkpoints each sampling method takes (classifier_train's --method):
# naive guidance uses an ordinary classifier of clean, normalised images.
TRAINED_BY = {"naive": "clean", "finetune": "finetune", "multi_experts": "multi_experts", "ppap": "ppap"}
PAPER_CLASSIFIER_SCALE = 7.5
# {i}_max{n}.ckpt and {i}_iteration{step}_max{n}.ckpt, the names classifier_train writes.
_EXPERT_FILE = re.compile(r"^(\d+)_(?:iteration\d+_)?max(\d+)\.ckpt$")
_KEY_PREFIXES = ("deit.classifier.", "resnet.", "classifier.")


class NaiveGuidance(nn.Module):
    """An off-the-shelf classifier used directly on x_t, with the input normalisation it was trained with."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor, t: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Normalise before ModelWithResize's resize, as the DeiT student does: both are linear.
        return self.classifier(imagenet_normalize(x))


def expert_position(path: str) -> Optional[Tuple[int, int]]:
    """(expert index, number of experts) from a ``{i}_max{n}.ckpt`` file name, or None for other names."""
    match = _EXPERT_FILE.match(os.path.basename(path))
    return (int(match.group(1)), int(match.group(2))) if match else None


def _strip_prefix(key: str) -> str:
    for prefix in _KEY_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _is_lora_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(k.endswith(("lora_A", "lora_B")) or k.startswith(("resnet.", "deit.classifier."))
               for k in state_dict)


def guess_classifier_name(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Which supported classifier a state dict (any released layout) belongs to, or None if unclear.

    ResNets differ in block type (BasicBlock: no conv3) and in how many blocks layer3 has.
    """
    keys = [_strip_prefix(k) for k in state_dict]
    if any(k.startswith("blocks.") for k in keys):
        return "DEIT"
    layer3 = {k.split(".")[1] for k in keys if k.startswith("layer3.")}
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in keys)
    return {(False, 2): "ResNet18", (True, 6): "ResNet50", (True, 36): "ResNet152"}.get(
        (bottleneck, len(layer3)))


def checkpoint_num_classes(state_dict: Mapping[str, torch.Tensor]) -> Optional[int]:
    """The number of classes of a classifier state dict (rows of the ResNet fc / DeiT head)."""
    for key, value in state_dict.items():
        if _strip_prefix(key) in ("fc.weight", "head.weight") and value.ndim == 2:
            return int(value.shape[0])
    return None


def _check_flags(path: str, flags: Dict, method: str, expected: Dict[str, object]) -> None:
    """The run's flags.json must agree with how the guidance is built (flags typed against it lose)."""
    trained = flags.get("method")
    if trained is not None and trained != TRAINED_BY[method]:
        # classifier_sample's --method adm takes classifier_train's ADM (EncoderUNet) classifiers.
        use = dict({v: k for k, v in TRAINED_BY.items()}, adm="adm").get(trained)
        fix = f"use --method {use}" if use else "it is not a guidance classifier"
        raise ValueError(f"{path} was trained with --method {trained} but is loaded for --method {method} "
                         f"(which takes --method {TRAINED_BY[method]} checkpoints); {fix}")
    for key, ours in expected.items():
        theirs = flags.get(key)
        if theirs is None or ours is None:
            continue
        if key == "classifier_name":
            same = canonical_classifier_name(theirs) == ours
        else:
            same = float(theirs) == float(ours) if isinstance(ours, (int, float)) else theirs == ours
        if same:
            continue
        if key in ("diffusion_steps", "noise_schedule"):
            # The experts' t indexes the classifier's training diffusion: another one means other noise.
            raise ValueError(f"{key} mismatch: {path} was trained on noise of a diffusion with "
                             f"{key}={theirs!r} but the sampling diffusion has {key}={ours!r}")
        if key == "n_experts":
            raise ValueError(f"n_experts mismatch: {path} is one of {theirs} experts (its flags.json) but "
                             f"{ours} are loaded; pass all {theirs} expert checkpoints in order")
        raise ValueError(f"{key} mismatch: {path} was trained with {key}={theirs!r} (its flags.json) "
                         f"but the guidance is built with {key}={ours!r}; drop --{key} to use the "
                         "saved value")


def _check_checkpoint(path: str, state_dict: Mapping[str, torch.Tensor], method: str, name: str,
                      num_classes: int) -> None:
    """Method, classifier and class count of one checkpoint, told in flag terms before the strict load."""
    lora = _is_lora_checkpoint(state_dict)
    if lora and method != "ppap":
        raise CheckpointLayoutError(
            f"{path} is a PPAP LoRA expert ({describe_layout(state_dict)}) but --method is {method}, which "
            "takes full classifiers; use --method ppap")
    if not lora and method == "ppap":
        raise CheckpointLayoutError(
            f"{path} is a full classifier ({describe_layout(state_dict)}), not a PPAP LoRA expert; "
            "use --method finetune (one path) or --method multi_experts (one path per expert)")
    guess = guess_classifier_name(state_dict)
    if guess is not None and guess != name:
        raise CheckpointLayoutError(f"{path} holds a {guess} but --classifier_name is {name}; "
                                    f"use --classifier_name {guess}")
    classes = checkpoint_num_classes(state_dict)
    if classes is not None and classes != num_classes:
        raise CheckpointLayoutError(f"{path} classifies {classes} classes but the guidance is built for "
                                    f"{num_classes}; use --classifier_num_classes {classes}")


def _check_expert_files(paths: Sequence[str], method: str, n_experts: int) -> None:
    """Names written by classifier_train say which expert of how many a file is: order and count must fit."""
    for i, path in enumerate(paths):
        position = expert_position(path)
        if position is None:
            continue
        index, total = position
        if total != n_experts:
            what = "one classifier" if method == "finetune" else f"{n_experts} experts"
            raise ValueError(f"{path} is expert {index} of {total} (its name) but --method {method} loads "
                             f"{what}; pass all {total} files {{0..{total - 1}}}_max{total}.ckpt in order"
                             + (" with --method multi_experts" if method == "finetune" else ""))
        if index != i:
            raise ValueError(f"{path} is expert {index} but was given in position {i}: pass the expert "
                             f"files in order 0_max{total}.ckpt ... {total - 1}_max{total}.ckpt")


def _expert_count(method: str, paths: Sequence[str], n_experts: Optional[int]) -> int:
    if method in ("naive", "finetune"):
        if n_experts not in (None, 1):
            raise ValueError(f"--method {method} uses one classifier, got n_experts={n_experts}")
        limit = "at most one" if method == "naive" else "exactly one"
        if len(paths) > 1 or (method == "finetune" and not paths):
            raise ValueError(f"--method {method} takes {limit} --classifier_path, got {len(paths)}")
        return 1
    if not paths:
        raise ValueError(f"--method {method} needs one --classifier_path per expert, got none")
    n = len(paths) if n_experts is None else int(n_experts)
    if n != len(paths):
        raise ValueError(f"--method {method} with {n} experts needs {n} checkpoints (one per expert, "
                         f"in order), but {len(paths)} --classifier_path were given")
    return n


def _strict(load: Callable[[], None], name: str, num_classes: int) -> None:
    # The layout checks report keys; add how the model was built so the flag to change is visible.
    try:
        load()
    except CheckpointLayoutError as exc:
        raise CheckpointLayoutError(f"{exc} (built as --classifier_name {name} with {num_classes} classes)"
                                    ) from exc


def load_guidance_classifier(method: str, paths: Sequence[str], *, classifier_name: str,
                             n_experts: Optional[int] = None, gamma: int = 16, lora_alpha: float = 8,
                             num_classes: int = 1000, scale_convention: Optional[str] = None,
                             total_steps: int = 1000, noise_schedule: Optional[str] = None,
                             expert_routing: str = "original",
                             device: Union[str, torch.device] = "cpu") -> nn.Module:
    """A frozen eval-mode module ``(x, t) -> logits`` guiding with ``method`` from the checkpoints ``paths``.

    ``t`` must be the original train index of a ``total_steps``-step diffusion (the experts' ranges split
    it). ``scale_convention`` (ppap): None takes ``lora_scale_convention`` from the flags.json beside the
    first path, else "released" (published checkpoints). ``expert_routing`` ("original" or "training", see
    :class:`~guided_diffusion.ppap.experts.ExpertRanges`) picks the expert of each step. Every flags.json beside
    a path is checked against the arguments (method, classifier, classes, rank, alpha, convention, experts,
    diffusion), and every state dict against the model, before anything is loaded.
    """
    if method not in METHODS:
        raise ValueError(f"unknown guidance method {method!r}; choose one of {METHODS}")
    check_routing(expert_routing)
    paths = [str(p) for p in paths]
    name = canonical_classifier_name(classifier_name)
    n = _expert_count(method, paths, n_experts)
    if method != "naive":
        ExpertRanges(n, total_steps, expert_routing)  # fail on an impossible split before reading anything
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"classifier checkpoint(s) not found: {', '.join(missing)}")
    all_flags = [read_flags_beside(p) for p in paths]  # released checkpoints come without one
    if method == "ppap" and scale_convention is None:
        saved = all_flags[0].get("lora_scale_convention") if all_flags[0] else None
        scale_convention = saved or "released"
    expected: Dict[str, object] = {"classifier_name": name, "classifier_num_classes": num_classes}
    if method != "naive":  # naive's classifier never saw noise: its run's diffusion is irrelevant
        expected.update(diffusion_steps=total_steps, noise_schedule=noise_schedule)
    if method in ("multi_experts", "ppap"):
        expected["n_experts"] = n
    if method == "ppap":
        expected.update(gamma=gamma, lora_alpha=lora_alpha, lora_scale_convention=scale_convention)
    for path, flags in zip(paths, all_flags):
        if flags is not None:
            _check_flags(path, flags, method, expected)
    if method != "naive":
        _check_expert_files(paths, method, n)
    # naive takes off-the-shelf weight files too (safetensors, DeiT's {"model": ...} release).
    state_dicts = [(read_weights_file if method == "naive" else read_state_dict)(p) for p in paths]
    for path, sd in zip(paths, state_dicts):
        _check_checkpoint(path, sd, method, name, num_classes)
    module = _build(method, paths, state_dicts, name, n, gamma, lora_alpha, num_classes, scale_convention,
                    total_steps, expert_routing)
    module.to(device).eval()
    # Only the gradient with respect to x_t is needed: no parameter gradients are computed or stored.
    for p in module.parameters():
        p.requires_grad_(False)
    if method == "ppap":
        # Safe with expert switching: LoRAExpertSet.select unmerges, re-points the LoRA factors and merges
        # the new expert, so the merged weight always folds in the active expert's delta. A switch happens
        # about n times per batch (t sweeps T..0 once) and every guided step then skips forming B @ A per
        # conv; the cost is one extra copy of each adapted weight (the exact unmerged one, kept to restore).
        merge_lora(module.backbone)
    return module


def _build(method: str, paths: List[str], state_dicts: List[Dict[str, torch.Tensor]], name: str, n: int,
           gamma: int, lora_alpha: float, num_classes: int, scale_convention: Optional[str],
           total_steps: int, routing: str) -> nn.Module:
    if method == "naive":
        if paths:
            classifier = build_classifier(name, num_classes=num_classes)
            _strict(lambda: _load_full(classifier, paths[0], state_dicts[0]), name, num_classes)
            return NaiveGuidance(classifier)
        cached, source = resolve_init_weights(name, "", num_classes)
        if cached is None:
            warnings.warn(f"naive guidance without --classifier_path: the {name} is randomly initialised "
                          f"({source}), so its gradient is noise (pass its weights to guide)", stacklevel=3)
        else:
            print(f"naive guidance with {source}")
        return NaiveGuidance(build_classifier(name, cached, num_classes=num_classes))
    if method in ("finetune", "multi_experts"):
        experts = FullExpertSet([build_classifier(name, num_classes=num_classes) for _ in range(n)],
                                total_steps, routing)
        for model, path, sd in zip(experts.experts, paths, state_dicts):
            _strict(lambda m=model, p=path, s=sd: _load_full(m, p, s), name, num_classes)
        return experts
    student = add_lora(build_classifier(name, num_classes=num_classes), name, r=int(gamma),
                       lora_alpha=float(lora_alpha), scale_convention=scale_convention, inplace=True)
    experts = LoRAExpertSet(student, name, n_experts=n, total_steps=total_steps, routing=routing)
    for path, sd in zip(paths, state_dicts):
        # Rank mismatches surface here as a ValueError naming both ranks (check_lora_ranks).
        _strict(lambda s=sd, p=path: check_state_dict_layout(student, s, what=f"checkpoint {p}"), name,
                num_classes)
    experts.load_expert_state_dicts(state_dicts)
    return experts


def _load_full(model: nn.Module, path: str, state_dict: Mapping[str, torch.Tensor]) -> None:
    load_classifier_state_dict(model, state_dict, what=f"checkpoint {path}")


__all__ = ["METHODS", "PAPER_CLASSIFIER_SCALE", "NaiveGuidance", "checkpoint_num_classes", "expert_position",
           "guess_classifier_name", "load_guidance_classifier"]
