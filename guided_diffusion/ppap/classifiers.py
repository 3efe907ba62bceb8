"""Off-the-shelf ImageNet classifiers and their PPAP students, in the layouts of the released checkpoints.

Layouts (see ``shared/fixtures/ppap/ppap_key_manifest.json``):

- finetune / multi_experts: the plain torchvision state dict (ResNets), or the :class:`ModelWithResize`
  state dict, i.e. timm keys under ``classifier.`` (DeiT).
- PPAP (:func:`add_lora`): ResNets under ``resnet.`` with :class:`LoRAConv2d` on the stem conv1 and on conv1
  and conv2 of every block; DeiT under ``deit.classifier.`` with :class:`LoRALinear` on attn.qkv and
  attn.proj.

A DeiT state dict in timm's own layout (``cls_token``, ``blocks.*``: what ``timm.create_model(...).state_dict()``
gives) is read as the finetune layout, i.e. under ``classifier.``.

Input conventions follow the released training code: finetune and multi-experts nets and the ResNet students
see raw x_t in [-1, 1]; the DeiT student ImageNet-normalises internally; only the PPAP teacher is fed
``imagenet_normalize(x0)`` by the caller. No weights are ever downloaded: pretrained weights come from a
local ``init_path``, or from the file torchvision / timm keep in their local cache (:func:`find_library_weights`).
"""

from __future__ import annotations

import copy
import os
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .lora import LoRAConv2d, LoRALinear, check_lora_ranks, lora_layers

CLASSIFIER_NAMES = ("ResNet18", "ResNet50", "ResNet152", "DEIT")
RESNET_NAMES = ("ResNet18", "ResNet50", "ResNet152")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# "released": what the published PPAP checkpoints need, i.e. alpha/r on convs and 1 on linears (see lora.py).
ADD_LORA_CONVENTIONS = ("released", "alpha_over_r", "unit")
# The ImageNet weights PPAP's create_pretrained_classifier downloads, by library and version.
LIBRARY_WEIGHTS = {
    "ResNet18": "torchvision ResNet18_Weights.IMAGENET1K_V1",
    "ResNet50": "torchvision ResNet50_Weights.IMAGENET1K_V2",
    "ResNet152": "torchvision ResNet152_Weights.IMAGENET1K_V2",
    "DEIT": "timm deit_small_patch16_224 (pretrained=True, the fb_in1k weights)",
}
# The file names those weights have in torchvision's cache (<torch hub dir>/checkpoints/) ...
_HUB_FILES = {"ResNet18": "resnet18-f37072fd.pth", "ResNet50": "resnet50-11ad3fa6.pth",
              "ResNet152": "resnet152-f82ba261.pth", "DEIT": "deit_small_patch16_224-cd65a155.pth"}
# ... and, for timm >= 0.9, in the Hugging Face hub cache.
_HF_DEIT = ("timm/deit_small_patch16_224.fb_in1k", ("model.safetensors", "pytorch_model.bin"))


def canonical_classifier_name(name: str) -> str:
    """The canonical spelling of a classifier name (case-insensitive, surrounding spaces ignored)."""
    lookup = {n.lower(): n for n in CLASSIFIER_NAMES}
    key = str(name).strip().lower()
    if key not in lookup:
        raise ValueError(f"unknown classifier {name!r}; valid names: {', '.join(CLASSIFIER_NAMES)}")
    return lookup[key]


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of images in [-1, 1] (NCHW, RGB): normalize((x + 1) / 2)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


class ModelWithResize(nn.Module):
    """A classifier fed a bilinear resize of its input (DeiT-S needs 224 x 224; ADM samples are 256)."""

    def __init__(self, classifier: nn.Module, size: int = 224):
        super().__init__()
        self.classifier = classifier
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # antialias=False: torchvision 0.14's tensor Resize, which trained the released DeiT checkpoints,
        # did not antialias.
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                          antialias=False)
        return self.classifier(x)


def _build_bare(name: str, num_classes: int) -> nn.Module:
    if name in RESNET_NAMES:
        import torchvision

        return getattr(torchvision.models, name.lower())(weights=None, num_classes=num_classes)
    import timm

    return ModelWithResize(timm.create_model("deit_small_patch16_224", pretrained=False,
                                             num_classes=num_classes))


def build_classifier(name: str, init_path: Optional[str] = None, num_classes: int = 1000) -> nn.Module:
    """An off-the-shelf classifier ("ResNet18", "ResNet50", "ResNet152" or "DEIT"), randomly initialised or
    loaded strictly from a local weights file (:func:`read_weights_file`) in the finetune layout (torchvision
    keys; DeiT under ``classifier.`` or in timm's own layout). ``num_classes`` other than ImageNet's 1000 serves
    small benchmarks (e.g. the 10 digits)."""
    name = canonical_classifier_name(name)
    model = _build_bare(name, num_classes)
    if init_path:
        load_classifier_state_dict(model, read_weights_file(init_path), what=f"{name} init_path {init_path}")
    return model


def _hf_cache_folder() -> Optional[str]:
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub client installed: only torch's cache can hold the weights
        return None
    return os.path.join(constants.HF_HUB_CACHE, "models--" + _HF_DEIT[0].replace("/", "--"))


def library_weight_places(name: str) -> List[str]:
    """Where torchvision / timm keep ``LIBRARY_WEIGHTS[name]`` locally: ``<torch hub dir>/checkpoints/<file>``
    (``$TORCH_HOME``), and for DeiT also timm's (>= 0.9) Hugging Face hub cache folder (``$HF_HUB_CACHE``)."""
    name = canonical_classifier_name(name)
    places = [os.path.join(torch.hub.get_dir(), "checkpoints", _HUB_FILES[name])]
    if name == "DEIT" and _hf_cache_folder():
        places.append(_hf_cache_folder())
    return places


def find_library_weights(name: str) -> Optional[str]:
    """The cached file of the library's ImageNet weights for ``name``, or None; never downloads."""
    name = canonical_classifier_name(name)
    hub_file = library_weight_places(name)[0]
    if os.path.isfile(hub_file):
        return hub_file
    folder = _hf_cache_folder() if name == "DEIT" else None
    ref = os.path.join(folder, "refs", "main") if folder else ""
    if ref and os.path.isfile(ref):
        with open(ref) as fh:
            snapshot = os.path.join(folder, "snapshots", fh.read().strip())
        return next((os.path.join(snapshot, f) for f in _HF_DEIT[1] if os.path.isfile(os.path.join(snapshot, f))),
                    None)
    return None


def resolve_init_weights(name: str, init_path: str = "", num_classes: int = 1000) -> Tuple[Optional[str], str]:
    """(weights file, where it comes from) for an off-the-shelf classifier: ``init_path`` when given (it must
    exist), else the library's cached ImageNet weights (1000 classes only), else (None, why not)."""
    name = canonical_classifier_name(name)
    if init_path:
        if not os.path.isfile(init_path):
            raise FileNotFoundError(f"--classifier_init {init_path!r} does not exist; pass the off-the-shelf "
                                    "classifier's weights (a state dict)")
        return init_path, f"--classifier_init {init_path}"
    if num_classes != 1000:
        return None, (f"no --classifier_init, and the library's ImageNet weights have 1000 classes, not "
                      f"{num_classes}")
    found = find_library_weights(name)
    if found:
        return found, f"{LIBRARY_WEIGHTS[name]} from the local cache ({found})"
    return None, (f"no --classifier_init, and {LIBRARY_WEIGHTS[name]} is not in the local cache "
                  f"({' or '.join(library_weight_places(name))})")


def read_weights_file(path: str) -> Dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a weights-only torch file; a file holding one ``model`` or
    ``state_dict`` entry (DeiT's own release, Lightning) is unwrapped."""
    if path.endswith(".safetensors"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        from safetensors.torch import load_file
        return dict(load_file(path, device="cpu"))
    state = read_state_dict(path)
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            return dict(state[key])
    return state


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A state dict read with ``weights_only=True``, with errors that say which file and why."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or pickled-object files
        raise RuntimeError(f"could not read {path!r} as a weights-only state dict: {exc}") from exc
    if not isinstance(state, Mapping):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict")
    return dict(state)


class ResNetPPAPStudent(nn.Module):
    """A LoRA-adapted ResNet (attribute ``resnet``) fed raw x_t, as the released students were trained."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.resnet = resnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnet(x)


class DeiTPPAPStudent(nn.Module):
    """A LoRA-adapted :class:`ModelWithResize` DeiT (attribute ``deit``) that normalises its own input."""

    def __init__(self, deit: ModelWithResize):
        super().__init__()
        self.deit = deit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise before the resize, in the released order; both are linear so only rounding differs.
        return self.deit(imagenet_normalize(x))


def _layer_conventions(scale_convention: str) -> Dict[str, str]:
    if scale_convention not in ADD_LORA_CONVENTIONS:
        raise ValueError(f"unknown scale_convention {scale_convention!r}; "
                         f"choose one of {ADD_LORA_CONVENTIONS}")
    if scale_convention == "released":
        return {"conv": "alpha_over_r", "linear": "unit"}
    return {"conv": scale_convention, "linear": scale_convention}


def add_lora(model: nn.Module, name: str, r: int = 16, lora_alpha: float = 8.0,
             scale_convention: str = "released", inplace: bool = False) -> nn.Module:
    """The PPAP student of ``model`` in the released layout (LoRA factors start at B = 0, so the student
    initially computes exactly what ``model`` computes on the same input).

    ``scale_convention``: "released" (default; alpha/r on convs, 1 on DeiT's linears, needed to reuse the
    published checkpoints), "alpha_over_r" or "unit" for every layer. ``model`` is deep-copied unless
    ``inplace``, so the original can stay the frozen teacher.
    """
    name = canonical_classifier_name(name)
    conventions = _layer_conventions(scale_convention)
    if any(True for _ in lora_layers(model)):
        raise ValueError("the model already has LoRA layers; add_lora takes an off-the-shelf classifier")
    if not inplace:
        model = copy.deepcopy(model)
    if name in RESNET_NAMES:
        if not hasattr(model, "layer4"):
            raise TypeError(f"{name} needs a torchvision ResNet, got {type(model).__name__}")

        def conv(c: nn.Conv2d) -> LoRAConv2d:
            return LoRAConv2d(c, r, lora_alpha, scale_convention=conventions["conv"])

        model.conv1 = conv(model.conv1)
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            for block in stage:
                block.conv1 = conv(block.conv1)
                block.conv2 = conv(block.conv2)
        student: nn.Module = ResNetPPAPStudent(model)
    else:
        if not isinstance(model, ModelWithResize):
            if not hasattr(model, "blocks"):
                raise TypeError(f"DEIT needs a timm VisionTransformer, got {type(model).__name__}")
            model = ModelWithResize(model)
        for block in model.classifier.blocks:
            attn = block.attn
            attn.qkv = LoRALinear(attn.qkv, r, lora_alpha, scale_convention=conventions["linear"])
            attn.proj = LoRALinear(attn.proj, r, lora_alpha, scale_convention=conventions["linear"])
        student = DeiTPPAPStudent(model)
    student.classifier_name = name
    student.r = int(r)
    student.lora_alpha = float(lora_alpha)
    student.scale_convention = scale_convention
    return student


def _resnet_trainable(param_name: str) -> bool:
    # Name rules, not module types, because that is what the released trainer used: the downsample BN is
    # named "downsample.1", so its weight stays frozen while its bias trains as every non-fc bias does.
    return "lora_" in param_name or ("bias" in param_name and "fc" not in param_name) or "bn" in param_name


def _deit_trainable(param_name: str) -> bool:
    # Every bias trains here, the head's and the MLPs' ("fc1", "fc2") included.
    return "lora_" in param_name or "bias" in param_name


def _trainable_rule(name: str) -> Callable[[str], bool]:
    return _resnet_trainable if canonical_classifier_name(name) in RESNET_NAMES else _deit_trainable


def ppap_trainable_names(student: nn.Module, name: str) -> List[str]:
    """The parameters PPAP training updates, in ``named_parameters`` order: LoRA factors, biases (ResNet:
    not fc) and BatchNorm affine parameters (names containing "bn")."""
    if not any(True for _ in lora_layers(student)):
        raise ValueError("no LoRA layers in this model; build the student with add_lora first")
    rule = _trainable_rule(name)
    return [n for n, _ in student.named_parameters() if rule(n)]


def freeze_for_ppap(student: nn.Module, name: str) -> List[str]:
    """Set ``requires_grad`` to PPAP's trainable set and return its names."""
    trainable = ppap_trainable_names(student, name)
    keep = set(trainable)
    for n, p in student.named_parameters():
        p.requires_grad_(n in keep)
    return trainable


class CheckpointLayoutError(ValueError):
    """A state dict whose keys or shapes do not fit the model (raised before anything is loaded)."""


def _is_timm_vit(keys: Iterable[str]) -> bool:
    return any(k == "cls_token" or k.startswith("blocks.") for k in keys)


def describe_layout(keys: Iterable[str]) -> str:
    """A short human description of which released layout a set of state-dict keys follows."""
    keys = list(keys)
    lora = any(k.endswith(("lora_A", "lora_B")) for k in keys)
    if any(k.startswith("module.") for k in keys):
        return "a DDP-wrapped model (keys under 'module.')"
    no_lora = "" if lora else " without LoRA factors"
    if any(k.startswith("resnet.") for k in keys):
        return "a PPAP ResNet student (keys under 'resnet.')" + no_lora
    if any(k.startswith("deit.classifier.") for k in keys):
        return "a PPAP DeiT student (keys under 'deit.classifier.')" + no_lora
    if any(k.startswith("classifier.") for k in keys):
        return "a finetune/multi_experts DeiT (keys under 'classifier.')"
    if lora:
        return "a model with LoRA factors but no known prefix"
    if _is_timm_vit(keys):
        return "an off-the-shelf DeiT in timm's own layout (keys 'cls_token', 'blocks.*')"
    if any(k.startswith(("conv1.", "layer1.", "fc.")) for k in keys):
        return "a finetune/multi_experts ResNet (plain torchvision keys)"
    return f"a state dict of unknown layout (keys {_preview(keys, 3)})"


def to_model_layout(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """``state_dict`` keyed as ``model`` expects: a DeiT in timm's own layout goes under ``classifier.`` for
    :class:`ModelWithResize`; anything else is returned unchanged (and checked strictly by the caller)."""
    if isinstance(model, ModelWithResize) and _is_timm_vit(state_dict) and \
            not any(k.startswith("classifier.") for k in state_dict):
        return {f"classifier.{k}": v for k, v in state_dict.items()}
    return state_dict


def _preview(keys: List[str], limit: int = 6) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict_layout(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                            what: str = "checkpoint") -> None:
    """Raise a readable error unless ``state_dict`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if not (missing or unexpected):
        check_lora_ranks(model, state_dict)  # the same layout with another rank: say which rank to use
    mismatched = [f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
                  if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_preview(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_preview(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches: {_preview(mismatched, 3)}")
    theirs, ours = describe_layout(state_dict), describe_layout(expected)
    hint = f"; it looks like {theirs} but the model is {ours}" if theirs != ours else ""
    model_name = getattr(model, "classifier_name", type(model).__name__)
    raise CheckpointLayoutError(f"{what} does not fit the {model_name} model: " + "; ".join(parts) + hint)


def load_classifier_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                               what: str = "checkpoint") -> None:
    """Strict load with errors naming the offending keys (PPAP's own loader used strict=False and could
    silently guide with the untouched off-the-shelf net). A DeiT may come in timm's own layout."""
    state_dict = to_model_layout(model, state_dict)
    check_state_dict_layout(model, state_dict, what)
    model.load_state_dict(state_dict, strict=True)
