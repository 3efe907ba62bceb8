"""Sample with classifier guidance: a diffusion model steered by a classifier's gradient.

ADM (``--method adm``, the default): a noisy EncoderUNet classifier from classifier_train.py.

    python python_scripts/classifier_sample.py --model_path runs/digits/ema_0.9999_002000.pt \
        --classifier_path runs/digits_classifier/model001000.pt --classifier_scale 4.0 \
        --num_samples 64 --timestep_respacing ddim25 --use_ddim True --log_path runs/guided

PPAP (Go et al. 2023): an off-the-shelf classifier (``--classifier_name ResNet18|ResNet50|ResNet152|DEIT``)
    --method naive          as is, on ImageNet-normalised x_t (optional path: its weights)
    --method finetune       --classifier_path 0_max1.ckpt: one classifier fine-tuned on noisy images
    --method multi_experts  --classifier_path 0_max5.ckpt ... 4_max5.ckpt: one classifier per step range
    --method ppap           --classifier_path 0_max5.ckpt ... 4_max5.ckpt: LoRA experts (--gamma = rank)
The expert of a step is chosen by its original train index, so any respacing routes correctly:
``--expert_routing original`` (default) is PPAP's released rule, which sends a boundary step (t = 200 of 5
experts) to the lower expert, as the published samples were made; ``training`` sends each step to the expert
trained on it (half-open ranges). It is saved with the samples' flags. The PPAP methods guide with the paper's
scale 7.5 unless ``--classifier_scale`` is given.

Writes ``samples_NxHxWx3.npz`` with ``arr_1`` = the target labels (drawn from each sample's seed, or all
``--target_label K``), a PNG grid and the flags. Model and classifier flags left off the command line are
read from the ``flags.json`` beside each checkpoint (for PPAP: beside the first classifier path).
Sample i uses seed ``--seed + i`` for its noise and its target label; resumable like image_sample.py.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch.nn as nn

from guided_diffusion import dist_util, logger
from guided_diffusion.adm.sampling import (SAMPLE_DEFAULTS, guide_schedule, load_diffusion_model, sample_argparser,
                                           sample_seeds)
from guided_diffusion.cli import load_model_checked, resolve_log_path, run_cli
from guided_diffusion.flags import merge_flags, typed_dests
from guided_diffusion.guidance import classifier_guide
from guided_diffusion.ppap.experts import ROUTING_RULES
from guided_diffusion.ppap.guidance import METHODS, PAPER_CLASSIFIER_SCALE, load_guidance_classifier
from guided_diffusion.script_util import (add_dict_to_argparser, args_to_dict, classifier_defaults,
                                          create_classifier)

# Read from the flags.json of a classifier_train PPAP run (n_experts only where it counts experts: a
# finetune run records the unused --n_experts flag too).
PPAP_SAVED_FLAGS = ("classifier_name", "gamma", "lora_alpha", "lora_scale_convention",
                    "classifier_num_classes")


def create_argparser() -> argparse.ArgumentParser:
    parser = sample_argparser(__doc__, "classifier_sample")
    parser.add_argument("--method", default="adm", choices=("adm",) + METHODS,
                        help="adm: ADM's noisy classifier; naive/finetune/multi_experts/ppap: PPAP's")
    parser.add_argument("--classifier_path", nargs="+", default=[],
                        help="the classifier checkpoint, or one per expert in expert order")
    parser.add_argument("--expert_routing", default="original", choices=ROUTING_RULES,
                        help="original: PPAP's released sampler (boundary steps to the lower expert); "
                             "training: the half-open range each expert was trained on")
    defaults = dict(classifier_scale=1.0)
    defaults.update({k: v for k, v in classifier_defaults().items() if k not in SAMPLE_DEFAULTS
                     and k != "image_size"})
    # n_experts 0: one per --classifier_path; lora_scale_convention "": the run's, else "released".
    defaults.update(classifier_name="ResNet50", n_experts=0, gamma=16, lora_alpha=8.0,
                    lora_scale_convention="")
    add_dict_to_argparser(parser, defaults)
    return parser


def load_adm_classifier(parser, args: argparse.Namespace, argv: Optional[Sequence[str]]) -> nn.Module:
    if not args.classifier_path:
        raise FileNotFoundError("--classifier_path is required: the noisy classifier's modelNNNNNN.pt")
    if len(args.classifier_path) > 1:
        raise ValueError(f"--method adm takes one --classifier_path, got {len(args.classifier_path)}; "
                         "several paths are PPAP experts (--method multi_experts or ppap)")
    args.classifier_path = args.classifier_path[0]  # saved flags keep ADM's single-path form
    keys = [k for k in classifier_defaults() if k.startswith("classifier_") and k != "classifier_use_fp16"]
    merge_flags(parser, args, argv, beside=args.classifier_path, keys=keys)
    flags = args_to_dict(args, classifier_defaults().keys())
    classifier = create_classifier(**flags)
    return load_model_checked(classifier, args.classifier_path, flags=flags, flag="--classifier_path",
                              use_fp16=args.classifier_use_fp16)


def load_ppap_classifier(parser, args: argparse.Namespace, argv: Optional[Sequence[str]], diffusion) -> nn.Module:
    paths = args.classifier_path
    keys = PPAP_SAVED_FLAGS + (("n_experts",) if args.method in ("multi_experts", "ppap") else ())
    filled = merge_flags(parser, args, argv, beside=paths[0], keys=keys)["beside"] if paths else []
    if filled and dist_util.is_main():
        print(f"classifier flags from the checkpoint's flags.json: {', '.join(filled)}")
    if "classifier_scale" not in typed_dests(parser, argv):
        args.classifier_scale = PAPER_CLASSIFIER_SCALE
    return load_guidance_classifier(
        args.method, paths, classifier_name=args.classifier_name, n_experts=args.n_experts or None,
        gamma=args.gamma, lora_alpha=args.lora_alpha, num_classes=args.classifier_num_classes,
        scale_convention=args.lora_scale_convention or None, total_steps=diffusion.original_num_steps,
        noise_schedule=args.noise_schedule, expert_routing=args.expert_routing, device=dist_util.dev())


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = create_argparser()
    args = parser.parse_args(argv)
    dist_util.setup_dist(args.gpus)
    model, diffusion = load_diffusion_model(parser, args, argv)
    if args.method == "adm":
        classifier = load_adm_classifier(parser, args, argv)
    else:
        classifier = load_ppap_classifier(parser, args, argv, diffusion)
    num_classes = args.classifier_num_classes
    if args.class_cond and args.num_classes != num_classes:
        raise ValueError(f"the model has {args.num_classes} classes and the classifier {num_classes}; "
                         "they must agree")
    if args.target_label >= num_classes:
        raise ValueError(f"--target_label {args.target_label} is not a class of the {num_classes}-class "
                         "classifier")
    log_path = resolve_log_path(args, "classifier_sample")
    logger.configure(log_path)
    # Scale 0 samples unguided with the same seeds and target labels: a paired baseline. The classifier reads
    # each level as a train index of the diffusion it was trained on (respaced levels map to their original
    # index), which is what routes PPAP's experts.
    guide = None
    if args.classifier_scale:
        guide = classifier_guide(classifier, args.classifier_scale, schedule=guide_schedule(diffusion))
    sample_seeds(args, model, diffusion, log_path, num_classes=num_classes, guide=guide)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
