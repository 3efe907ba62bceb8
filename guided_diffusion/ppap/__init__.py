"""PPAP (Go et al., CVPR 2023): guiding a diffusion model with off-the-shelf classifiers adapted to noisy
inputs by parameter-efficient (LoRA) timestep experts. This package holds the pieces shared by its training
and sampling scripts: LoRA layers, the classifiers and their released checkpoint layouts, and expert sets.
"""

from .classifiers import (
    CLASSIFIER_NAMES,
    LIBRARY_WEIGHTS,
    CheckpointLayoutError,
    DeiTPPAPStudent,
    ModelWithResize,
    ResNetPPAPStudent,
    add_lora,
    build_classifier,
    check_state_dict_layout,
    describe_layout,
    find_library_weights,
    freeze_for_ppap,
    imagenet_normalize,
    load_classifier_state_dict,
    ppap_trainable_names,
    read_state_dict,
    read_weights_file,
    resolve_init_weights,
)
from .experts import (ROUTING_RULES, ExpertRanges, FullExpertSet, LoRAExpertSet, original_edges, training_edges,
                      unique_storage_bytes)
from .lora import LoRAConv2d, LoRALinear, check_lora_ranks, lora_layers, merge_lora, unmerge_lora

__all__ = [
    "CLASSIFIER_NAMES", "LIBRARY_WEIGHTS", "ROUTING_RULES", "CheckpointLayoutError", "DeiTPPAPStudent",
    "ExpertRanges", "FullExpertSet", "LoRAConv2d", "LoRAExpertSet", "LoRALinear", "ModelWithResize",
    "ResNetPPAPStudent", "add_lora", "build_classifier", "check_lora_ranks", "check_state_dict_layout",
    "describe_layout", "find_library_weights", "freeze_for_ppap", "imagenet_normalize", "load_classifier_state_dict",
    "lora_layers", "merge_lora", "original_edges", "ppap_trainable_names", "read_state_dict", "read_weights_file",
    "resolve_init_weights", "training_edges", "unique_storage_bytes", "unmerge_lora",
]
