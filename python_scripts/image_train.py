"""Train an ADM diffusion model on a folder of images, an npz batch, or a built-in dataset.

    python python_scripts/image_train.py --data_dir builtin:digits --image_size 16 --num_channels 32 \
        --num_res_blocks 1 --batch_size 32 --lr 2e-4 --max_steps 2000 --log_path runs/digits

Multi-process: ``torchrun --nproc_per_node 2 python_scripts/image_train.py ...`` or ``mpiexec -n 2 python
python_scripts/image_train.py ...`` (``--batch_size`` is per rank). Checkpoints ``modelNNNNNN.pt``,
``ema_RATE_NNNNNN.pt`` and ``optNNNNNN.pt`` land in ``--log_path`` with ``flags.json``; resume with
``--resume_checkpoint <log_path>/modelNNNNNN.pt`` (or the folder, for its latest checkpoint).
``--keep_checkpoints N`` keeps only the newest N checkpoint sets in ``--log_path`` (0, the default: all, as ADM).
``--seed`` fixes the initial weights, the data order and augmentations, and every step's timesteps and noise.
"""

from __future__ import annotations

import argparse
import sys

import torch

from guided_diffusion import dist_util, logger
from guided_diffusion.adm.training import DATA_DEFAULTS, RUN_DEFAULTS, data_stream, open_dataset
from guided_diffusion.cli import add_run_flags, open_run_folder, resolve_log_path, run_cli
from guided_diffusion.data import DataError
from guided_diffusion.flags import merge_flags
from guided_diffusion.script_util import (add_dict_to_argparser, args_to_dict, create_model_and_diffusion,
                                          model_and_diffusion_defaults)
from guided_diffusion.train import TrainLoop, create_named_schedule_sampler, resolve_resume_checkpoint


def create_argparser() -> argparse.ArgumentParser:
    defaults = dict(schedule_sampler="uniform", lr=1e-4, weight_decay=0.0, lr_anneal_steps=0, batch_size=1,
                    microbatch=-1, ema_rate="0.9999", log_interval=10, save_interval=10000,
                    resume_checkpoint="", use_fp16=False, fp16_scale_growth=1e-3, keep_checkpoints=0)
    defaults.update(DATA_DEFAULTS)
    defaults.update(RUN_DEFAULTS)
    defaults.update(model_and_diffusion_defaults())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, defaults)
    add_run_flags(parser, "image_train")
    return parser


def main(argv=None) -> None:
    parser = create_argparser()
    args = parser.parse_args(argv)
    dist_util.setup_dist(args.gpus)
    model_keys = list(model_and_diffusion_defaults().keys())
    args.resume_checkpoint = resolve_resume_checkpoint(args.resume_checkpoint)
    if args.resume_checkpoint:
        filled = merge_flags(parser, args, argv, beside=args.resume_checkpoint, keys=model_keys)["beside"]
        if filled:
            print(f"model flags from the checkpoint's flags.json: {', '.join(filled)}")
    dataset = open_dataset(args, args.class_cond)
    if args.class_cond and dataset.num_classes > args.num_classes:
        raise DataError(f"the data has {dataset.num_classes} classes but --num_classes is {args.num_classes}")

    torch.manual_seed(args.seed)  # the initial weights
    model_flags = args_to_dict(args, model_keys)
    model, diffusion = create_model_and_diffusion(**model_flags)
    model.to(dist_util.dev())
    log_path = resolve_log_path(args, "image_train")
    loop = TrainLoop(
        model=model, diffusion=diffusion, data=data_stream(args, dataset, args.class_cond),
        batch_size=args.batch_size, microbatch=args.microbatch, lr=args.lr, ema_rate=args.ema_rate,
        log_interval=args.log_interval, save_interval=args.save_interval,
        resume_checkpoint=args.resume_checkpoint, use_fp16=args.use_fp16, use_bf16=args.use_bf16,
        fp16_scale_growth=args.fp16_scale_growth,
        schedule_sampler=create_named_schedule_sampler(args.schedule_sampler, diffusion),
        weight_decay=args.weight_decay, lr_anneal_steps=args.lr_anneal_steps, max_steps=args.max_steps,
        seed=args.seed, flags=model_flags, progress=args.progress, save_dir=log_path,
        keep_checkpoints=args.keep_checkpoints,
    )
    # Every input has been checked: only now does the run folder appear.
    open_run_folder(log_path, args)
    logger.log(f"training on {len(dataset)} images from {args.data_dir}, {dist_util.get_world_size()} rank(s), "
               f"{sum(p.numel() for p in model.parameters()):,} parameters")
    loop.run_loop()


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
