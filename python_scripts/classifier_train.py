"""Train ADM's noisy classifier (``EncoderUNetModel``) on q_sample(x0, t), for classifier guidance.

    python python_scripts/classifier_train.py --data_dir builtin:digits --image_size 16 \
        --classifier_width 32 --classifier_depth 1 --classifier_num_classes 10 --batch_size 64 \
        --iterations 1000 --log_path runs/digits_classifier

``--noised False`` trains a clean classifier (t = 0). Labels come from the file names (``--label_from
prefix``, ADM: ``<class>_<anything>.png``) or the parent folders (``--label_from folder``). Checkpoints
``modelNNNNNN.pt``/``optNNNNNN.pt`` and ``flags.json`` land in ``--log_path``; ``--resume_checkpoint``
continues a run. Logs train/val loss, acc@1 and acc@5, overall and per quarter of the diffusion steps.

PPAP's methods train an off-the-shelf classifier (``--classifier_name ResNet18|ResNet50|ResNet152|DEIT``)
instead, writing ``{expert}_max{n}.ckpt`` in PPAP's layouts. Its weights come from ``--classifier_init PATH``
(a state dict; a DeiT also in timm's own layout), else from torchvision's / timm's local cache of the ImageNet
weights PPAP used (ResNet18 IMAGENET1K_V1, ResNet50/152 IMAGENET1K_V2, deit_small_patch16_224); nothing is
downloaded. ``--method ppap`` refuses to start without them; finetune and multi_experts warn and start from
random weights.

    --method finetune       one classifier on noisy labelled data (labels: parent folder by default)
    --method multi_experts  --n_experts 5: one classifier per fifth of the diffusion steps
    --method ppap           --n_experts 5 --gamma 16 --lora_alpha 8: LoRA experts distilled from the
                            clean classifier on unlabeled generated images (generate_dataset.py)
    --method clean          a clean classifier with ImageNet-normalised input: an off-the-shelf
                            classifier for data that has none (the teacher and the naive baseline)

``--iterations`` is split evenly over the experts (any n: expert i trains on PPAP's floored range
[int(i/n*T), int((i+1)/n*T))); ``--anneal_lr`` anneals within each expert. ``--expert_init chained`` (default,
PPAP's order) starts expert i from expert i-1's trained weights; ``pretrained`` starts each from the
off-the-shelf weights. ``--lora_scale_convention released`` (default) scales the LoRA deltas as PPAP's code
does (alpha/r on convs, 1 on DeiT's linears), so the experts load in the original code at the same strength.
Images smaller than ``--image_size`` are upscaled (as PPAP's loader does; their count is logged) unless
``--allow_upscale False``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from guided_diffusion import dist_util, logger
from guided_diffusion.adm.training import DATA_DEFAULTS, RUN_DEFAULTS, data_stream, open_dataset
from guided_diffusion.cli import add_run_flags, open_run_folder, resolve_log_path, run_cli
from guided_diffusion.flags import merge_flags, typed_dests
from guided_diffusion.ppap.classifiers import ADD_LORA_CONVENTIONS, canonical_classifier_name
from guided_diffusion.ppap.experts import ExpertRanges
from guided_diffusion.ppap.training import EXPERT_INITS, starting_weights, train_experts
from guided_diffusion.data import DataError
from guided_diffusion.script_util import (add_dict_to_argparser, args_to_dict, classifier_and_diffusion_defaults,
                                          create_classifier_and_diffusion, create_gaussian_diffusion)
from guided_diffusion.train import (ClassifierTrainLoop, create_named_schedule_sampler,
                                    resolve_resume_checkpoint)


def create_argparser() -> argparse.ArgumentParser:
    defaults = dict(val_data_dir="", noised=True, iterations=150000, lr=3e-4, weight_decay=0.0, anneal_lr=False,
                    batch_size=4, microbatch=-1, schedule_sampler="uniform", resume_checkpoint="",
                    log_interval=10, eval_interval=5, save_interval=10000, classifier_ema_rate="",
                    keep_checkpoints=0)
    defaults.update(DATA_DEFAULTS)
    defaults.update(RUN_DEFAULTS)
    defaults["random_crop"] = True  # ADM's classifier_train crops randomly
    defaults.update(classifier_and_diffusion_defaults())
    # PPAP: --method finetune | multi_experts | ppap trains an off-the-shelf classifier instead of ADM's.
    defaults.update(method="adm", classifier_name="ResNet50", classifier_init="", n_experts=5, gamma=16,
                    lora_alpha=8.0, lora_scale_convention="released", mixed_precision=True,
                    expert_init="chained")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, defaults)
    add_run_flags(parser, "classifier_train")
    return parser


def train_ppap_method(parser, args, argv) -> None:
    """finetune / multi_experts on labelled real data, ppap on unlabeled generated data."""
    labelled = args.method != "ppap"
    canonical_classifier_name(args.classifier_name)  # bad names and missing files fail before any output
    if args.expert_init not in EXPERT_INITS:
        raise ValueError(f"--expert_init {args.expert_init!r} is not one of {', '.join(EXPERT_INITS)}")
    if args.lora_scale_convention not in ADD_LORA_CONVENTIONS:
        raise ValueError(f"--lora_scale_convention {args.lora_scale_convention!r} is not one of "
                         f"{', '.join(ADD_LORA_CONVENTIONS)}")
    # A missing --classifier_init, or ppap without real teacher weights, stops here: nothing written yet.
    starting_weights(args.method, args.classifier_name, args.classifier_init, args.classifier_num_classes)
    typed = typed_dests(parser, argv)
    if labelled and "label_from" not in typed:
        args.label_from = "folder"  # PPAP's convention: the class is the parent folder
    if args.method == "ppap" and "random_crop" not in typed:
        args.random_crop = False  # PPAP centre-crops its generated images
    if "allow_upscale" not in typed:
        args.allow_upscale = True  # PPAP's loader upscales ImageNet's images smaller than 256 px
    dataset = open_dataset(args, class_cond=labelled)
    if labelled and dataset.num_classes > args.classifier_num_classes:
        raise DataError(f"the data has {dataset.num_classes} classes but --classifier_num_classes is "
                        f"{args.classifier_num_classes}; raise it")
    diffusion = create_gaussian_diffusion(steps=args.diffusion_steps, noise_schedule=args.noise_schedule)
    ExpertRanges(1 if args.method in ("finetune", "clean") else args.n_experts, diffusion.num_timesteps)
    log_path = resolve_log_path(args, f"classifier_{args.method}")
    open_run_folder(log_path, args)
    small, checked = getattr(dataset, "num_small", 0), getattr(dataset, "num_checked", 0)
    if small:
        of = f"{checked} checked" if checked < len(dataset) else f"{len(dataset)}"
        logger.log(f"{small} of {of} images are smaller than {args.image_size} px and are upscaled (bicubic), "
                   "as PPAP's loader does")
    torch.manual_seed(args.seed)
    use_bf16 = args.use_bf16 or (args.mixed_precision and dist_util.dev().type == "cuda")
    paths = train_experts(
        method=args.method, classifier_name=args.classifier_name, diffusion=diffusion,
        data=data_stream(args, dataset, class_cond=labelled), n_experts=args.n_experts,
        iterations=args.iterations, num_classes=args.classifier_num_classes, init_path=args.classifier_init,
        gamma=args.gamma, lora_alpha=args.lora_alpha, scale_convention=args.lora_scale_convention,
        anneal_lr=args.anneal_lr, expert_init=args.expert_init, save_dir=log_path,
        trainer_kwargs=dict(batch_size=args.batch_size, microbatch=args.microbatch, lr=args.lr,
                            weight_decay=args.weight_decay, log_interval=args.log_interval,
                            save_interval=args.save_interval, seed=args.seed, use_bf16=use_bf16,
                            progress=args.progress, keep_checkpoints=args.keep_checkpoints))
    logger.log("experts: " + " ".join(paths))


def main(argv=None) -> None:
    parser = create_argparser()
    args = parser.parse_args(argv)
    dist_util.setup_dist(args.gpus)
    if args.method != "adm":
        return train_ppap_method(parser, args, argv)
    model_keys = list(classifier_and_diffusion_defaults().keys())
    args.resume_checkpoint = resolve_resume_checkpoint(args.resume_checkpoint)
    if args.resume_checkpoint:
        merge_flags(parser, args, argv, beside=args.resume_checkpoint, keys=model_keys)
    dataset = open_dataset(args, class_cond=True)
    if dataset.num_classes > args.classifier_num_classes:
        raise DataError(f"the data has {dataset.num_classes} classes but --classifier_num_classes is "
                        f"{args.classifier_num_classes}; raise it")
    val_data = None
    if args.val_data_dir:
        val_args = argparse.Namespace(**{**vars(args), "data_dir": args.val_data_dir, "random_crop": False,
                                         "random_flip": False})
        val_set = open_dataset(val_args, class_cond=True)
        val_data = data_stream(val_args, val_set, class_cond=True)(0)

    torch.manual_seed(args.seed)
    flags = args_to_dict(args, model_keys)
    model, diffusion = create_classifier_and_diffusion(**flags)
    model.to(dist_util.dev())
    log_path = resolve_log_path(args, "classifier_train")
    loop = ClassifierTrainLoop(
        model=model, diffusion=diffusion, data=data_stream(args, dataset, class_cond=True), val_data=val_data,
        noised=args.noised, eval_interval=args.eval_interval,
        schedule_sampler=create_named_schedule_sampler(args.schedule_sampler, diffusion),
        batch_size=args.batch_size, microbatch=args.microbatch, lr=args.lr, ema_rate=args.classifier_ema_rate,
        log_interval=args.log_interval, save_interval=args.save_interval,
        resume_checkpoint=args.resume_checkpoint, use_fp16=args.classifier_use_fp16, use_bf16=args.use_bf16,
        weight_decay=args.weight_decay, lr_anneal_steps=args.iterations if args.anneal_lr else 0,
        max_steps=args.max_steps or args.iterations, seed=args.seed, flags=flags, progress=args.progress,
        save_dir=log_path, keep_checkpoints=args.keep_checkpoints,
    )
    open_run_folder(log_path, args)
    logger.log(f"training a {'noisy' if args.noised else 'clean'} classifier on {len(dataset)} images, "
               f"{dataset.num_classes} classes")
    loop.run_loop()


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
