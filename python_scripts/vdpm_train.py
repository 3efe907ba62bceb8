"""Train the v-objective diffusion model (VDPM: continuous log-SNR time, v/x0/eps prediction, reweighted loss,
classifier-free guidance) on MNIST, CIFAR-10, CelebA or the built-in digits.

    python python_scripts/vdpm_train.py --dataset cifar10 --use-cfg --use-ema --root ~/datasets
    python python_scripts/vdpm_train.py --config cifar10_cond --root ~/datasets
    python python_scripts/vdpm_train.py --dataset digits --image-size 16 --use-cfg --epochs 30 --ckpt-name digits
    torchrun --nproc_per_node 2 python_scripts/vdpm_train.py --config cifar10_cond --root ~/datasets --distributed

The flags are the seed's (tqch/v-diffusion-torch: its 2023 README names, and the 2024 --config-path,
--default-config-path, --data_root, --max-ckpts-kept, --use-xformers). Configs: --config (alias --config-path)
reads a JSON or YAML file, a path or a name in --config-dir (default configs/vdpm). Without --config the data
set's config is in force, as the seed's README commands had it (they read configs/<dataset>.json): cifar10 ->
cifar10_uncond, or cifar10_cond with --use-cfg; celeba -> celeba. The seed ships none for mnist and the digits:
there (and with --config none) this script's built-in defaults apply, a small CPU-sized ADM UNet without lr
warm-up or weight decay. The script prints which config is in force and which typed flags override it: flags
typed on the command line always win. A config of the seed's own format (no "arch" key) builds its UNet and is
completed from --default-config-path (its defaults.json), as its 2024 train.py did.

Data sets are read from --root in torchvision's layouts and never downloaded. The run folder is
<--ckpt-dir>/<--ckpt-name> (default name vdpm_<dataset>): flags.json, log.txt, progress.csv, modelNNNNNN.pt
(+ ema_<decay>_NNNNNN.pt, optNNNNNN.pt, train_stateNNNNNN.pt) and images/. --max-ckpts-kept N keeps the newest N
of those checkpoint sets (-1: all; the seed's configs keep 5 for CIFAR-10 and 1 otherwise). --resume continues
the latest checkpoint there exactly (model, EMA, optimizer, step and data position), reading the run's
flags.json for every flag not typed again.

Differences from the seed: time is counted in optimizer steps (an epoch is len(data) // batch steps; the batch
stream does not drop the remainder, it starts the next epoch); --batch-size is the global batch (split over
ranks, then into --num-accum micro-batches), --max-steps and --save-steps count steps; a typed flag beats the
config (the 2023 seed let the config win); --arch original is the seed's UNet (models/vdpm_unet.py), --arch
adm this package's ADM UNet in its place (models/vdpm.py); --eval samples --eval-total-size images and
reports FID, precision and recall against the training data at the end of the run (and every --eval-intv
epochs). Not taken: the seed's --exp-dir/--exp-name (see --ckpt-dir/--ckpt-name), --from-ckpt (--resume
continues the run folder's latest), --save-rng-state (every checkpoint here holds the full training state),
--allow-rescale, --x0eps-coef and the cuDNN / TF32 / reduced-precision switches.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys

import numpy as np
import torch

from guided_diffusion import dist_util, logger
from guided_diffusion.cli import flags_of, open_run_folder, run_cli
from guided_diffusion.data import VDPM_DATASET_INFO, load_vdpm_dataset
from guided_diffusion.diffusion.continuous import SCHEDULES, VAR_TYPES
from guided_diffusion.diffusion.continuous_losses import LOSS_TYPES, REWEIGHT_ALIASES, REWEIGHT_TYPES
from guided_diffusion.denoisers.continuous import OUT_TYPE_ALIASES, OUT_TYPES
from guided_diffusion.metrics.image_batches import NpzBatch
from guided_diffusion.metrics.inception import FEATURE_NET_NAMES, load_feature_net
from guided_diffusion.models.vdpm import ARCHS, VDPM_MODEL_SIZES
from guided_diffusion.sample_writer import image_grid, run_seeded_sampling, save_png
from guided_diffusion.train import latest_checkpoint, write_json
from guided_diffusion.vdpm.training import VDPMTrainLoop, vdpm_batches
from guided_diffusion.flags import apply_flag_values, merge_flags, resolve_config_path, typed_dests
from guided_diffusion.vdpm import (CHECKPOINT_FLAG_NAMES, DEFAULT_CONFIG_DIR, DEFAULTS_CONFIG, DatasetImages,
                                   dataset_image_size, diffusion_from_flags, fid_precision_recall, model_from_flags,
                                   vdpm_batch_sampler)
from guided_diffusion.vdpm.original import dataset_config_name, read_config

# Accepted spellings: the canonical names and the original's aliases (x_0, snr_trunc, snr_1plus).
OUT_TYPES = OUT_TYPES + tuple(OUT_TYPE_ALIASES)
REWEIGHT_TYPES = REWEIGHT_TYPES + tuple(REWEIGHT_ALIASES)
# Never taken from a resumed run's flags.json: they describe this machine or this invocation.
NOT_RESUMED = ("resume", "distributed", "train_device", "eval_device", "num_workers", "progress", "config_dir",
               "default_config_path")
NOT_IN_IDENTITY = ("progress", "num_workers", "train_device", "eval_device", "resume", "sample_bsz")
MAX_REFERENCE_IMAGES = 50000  # the seed's precision/recall manifold size


def create_argparser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    small = VDPM_MODEL_SIZES["small"]
    onoff = argparse.BooleanOptionalAction
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=tuple(VDPM_DATASET_INFO), default="cifar10")
    g.add_argument("--root", "--data-root", "--data_root", dest="root", default="~/datasets",
                   help="folder holding the data set in torchvision's layout")
    g.add_argument("--image-size", type=int, default=0, help="0: the data set's own (32, 32, 64, 16)")
    g.add_argument("--split", default="", help="default: the seed's (train; all for celeba)")
    g.add_argument("--random-flip", action=onoff, default=None, help="default: the seed's (cifar10, celeba)")
    g.add_argument("--num-workers", type=int, default=-1, help="-1: 4 for celeba on a GPU, else 0")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=120)
    g.add_argument("--lr", type=float, default=2e-4)
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.999)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--batch-size", type=int, default=128, help="global batch: over all ranks and micro-batches")
    g.add_argument("--num-accum", type=int, default=1, help="micro-batches per step (gradient accumulation)")
    g.add_argument("--warmup", type=int, default=0, help="steps of linear lr warm-up")
    g.add_argument("--grad-norm", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    g.add_argument("--use-ema", action=onoff, default=False)
    g.add_argument("--ema-decay", type=float, default=0.9999)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps (0: --epochs)")
    g.add_argument("--log-intv", type=int, default=100, help="steps between progress.csv rows")
    g = p.add_argument_group("diffusion")
    g.add_argument("--train-timesteps", type=int, default=0, help="0: continuous time")
    g.add_argument("--sample-timesteps", type=int, default=256)
    g.add_argument("--logsnr-schedule", choices=SCHEDULES, default="cosine")
    g.add_argument("--logsnr-max", type=float, default=20.0)
    g.add_argument("--logsnr-min", type=float, default=-20.0)
    g.add_argument("--model-out-type", choices=OUT_TYPES, default="both")
    g.add_argument("--model-var-type", choices=VAR_TYPES, default="fixed_large")
    g.add_argument("--reweight-type", choices=REWEIGHT_TYPES, default="truncated_snr")
    g.add_argument("--loss-type", choices=LOSS_TYPES, default="mse")
    g.add_argument("--intp-frac", type=float, default=0.0)
    g = p.add_argument_group("classifier-free guidance")
    g.add_argument("--use-cfg", action=onoff, default=False, help="condition on labels, train with dropout")
    g.add_argument("--w-guide", type=float, default=0.1, help="(1 + w) * cond - w * uncond when sampling")
    g.add_argument("--p-uncond", type=float, default=0.1)
    g = p.add_argument_group("model (ADM UNet; defaults: a small CPU-sized model, configs set the seed's)")
    g.add_argument("--hid-channels", type=int, default=small["hid_channels"])
    g.add_argument("--ch-multipliers", default=",".join(map(str, small["ch_multipliers"])))
    g.add_argument("--num-res-blocks", type=int, default=small["num_res_blocks"])
    g.add_argument("--apply-attn", default=",".join(str(int(a)) for a in small["apply_attn"]),
                   help="attention per level, e.g. 0,1,1")
    g.add_argument("--drop-rate", type=float, default=small["drop_rate"])
    g.add_argument("--num-heads", type=int, default=small["num_heads"], help="0: unset (--arch original)")
    g.add_argument("--head-dim", type=int, default=small["head_dim"], help="-1: unset (use --num-heads)")
    g.add_argument("--arch", choices=ARCHS, default="adm",
                   help="original: the seed's UNet (its checkpoints load); adm: this package's ADM UNet")
    g.add_argument("--embedding-dim", type=int, default=0, help="time/label embedding width (0: 4 x hid; original)")
    g.add_argument("--use-xformers", action=onoff, default=False,
                   help="the seed's xFormers attention layout (--arch original; computed with plain attention)")
    g = p.add_argument_group("devices")
    g.add_argument("--train-device", default="", help="single process only (default: cuda if available)")
    g.add_argument("--eval-device", default="", help="device of the feature network (default: --train-device)")
    g.add_argument("--distributed", action=onoff, default=False,
                   help="run under torchrun (or mpiexec), one rank per GPU")
    g = p.add_argument_group("outputs")
    g.add_argument("--config", "--config-path", dest="config", default="",
                   help="a JSON/YAML config: a path, a name in --config-dir, or none (default: the data set's)")
    g.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR)
    g.add_argument("--default-config-path", default=DEFAULTS_CONFIG,
                   help="fills what a config of the seed's format leaves out (its defaults.json; '' for none)")
    g.add_argument("--ckpt-dir", "--chkpt-dir", dest="ckpt_dir", default="./chkpts")
    g.add_argument("--ckpt-name", "--chkpt-name", dest="ckpt_name", default="",
                   help="run folder name (default vdpm_<dataset>)")
    g.add_argument("--ckpt-intv", "--chkpt-intv", dest="ckpt_intv", type=int, default=120,
                   help="epochs between checkpoints")
    g.add_argument("--max-ckpts-kept", type=int, default=-1,
                   help="keep the newest N checkpoint sets of the run folder (-1: all)")
    g.add_argument("--save-steps", type=int, default=0, help="steps between checkpoints (overrides --ckpt-intv)")
    g.add_argument("--resume", action=onoff, default=False, help="continue the run folder's latest checkpoint")
    g.add_argument("--image-dir", default="", help="sample grids (default <run folder>/images)")
    g.add_argument("--image-intv", type=int, default=10, help="epochs between sample grids (0: none)")
    g.add_argument("--num-save-images", type=int, default=64)
    g.add_argument("--sample-bsz", type=int, default=-1, help="sampling batch (-1: the per-rank batch)")
    g.add_argument("--use-ddim", action=onoff, default=False, help="DDIM (eta 0) for grids and --eval")
    g.add_argument("--progress", action=onoff, default=True)
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval", action=onoff, default=False, help="FID / precision / recall at the end")
    g.add_argument("--eval-intv", type=int, default=0, help="also every this many epochs (0: only at the end)")
    g.add_argument("--eval-total-size", type=int, default=10000)
    g.add_argument("--feature-net", choices=FEATURE_NET_NAMES, default="inception")
    g.add_argument("--inception-weights", default="", help="pt_inception-2015-12-05 file (default: torch hub cache)")
    return p


def choose_config(args) -> tuple:
    """(config path or None, why): --config when typed, else the data set's (None where the seed has none)."""
    if args.config and args.config.lower() != "none":
        return args.config, "typed --config"
    if args.config:
        return None, "--config none: this script's built-in defaults are in force"
    name = dataset_config_name(args.dataset, args.use_cfg)
    if name is None:
        return None, (f"the seed ships no config for {args.dataset}: this script's built-in defaults are in force "
                      "(a small CPU-sized model, no lr warm-up, no weight decay); --config names one")
    how = f"--dataset {args.dataset}" + (" --use-cfg" if args.use_cfg and args.dataset == "cifar10" else "")
    return name, f"the data set's config for {how}; --config none for the built-in defaults"


def merge_run_flags(parser, args, argv):
    """Defaults < config (typed, or the data set's) < the resumed run's flags.json < typed flags.
    Returns (run folder, checkpoint to resume or "", lines saying which config is in force)."""
    typed = typed_dests(parser, argv)
    lines = []
    resuming = args.resume and "config" not in typed  # a resumed run's flags.json holds every flag
    config, why = (None, "") if resuming else choose_config(args)
    if config is not None:
        path = resolve_config_path(config, args.config_dir)
        values, notes = read_config(path, defaults=args.default_config_path or None)
        as_configured = argparse.Namespace(**vars(args))
        apply_flag_values(parser, as_configured, values, set(), f"config {path}")
        merge_flags(parser, args, argv, config=values, config_source=f"config {path}")
        args.config = str(path)
        overridden = sorted(k for k in typed if k in values and getattr(as_configured, k) != getattr(args, k))
        lines.append(f"config in force: {path} ({why})")
        lines.append("typed flags overriding it: " + (", ".join("--" + k.replace("_", "-") for k in overridden)
                                                      if overridden else "none"))
        lines += [f"note: {n}" for n in notes]
    elif not resuming:
        args.config = "none" if args.config else ""
        lines.append(f"config in force: none ({why})")
    run_dir = os.path.join(os.path.expanduser(args.ckpt_dir), args.ckpt_name or f"vdpm_{args.dataset}")
    found = latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    if args.resume:
        if found is None:
            raise FileNotFoundError(f"--resume: no modelNNNNNN.pt in {run_dir}; check --ckpt-dir and --ckpt-name")
        merge_flags(parser, args, argv, beside=found, ignore=NOT_RESUMED + ("gpus",))
        args.resume = True
        if resuming:
            made = f", the run was configured by {args.config}" if args.config not in ("", "none") else ""
            lines.append(f"config in force: the run's own flags.json (resuming{made})")
    elif found is not None:
        raise ValueError(f"{run_dir} already holds checkpoints ({os.path.basename(found)}); pass --resume to "
                         "continue it, or another --ckpt-name")
    return run_dir, found if args.resume else "", lines


def check_flags(args, world: int) -> int:
    """Checks that need no data; returns the per-rank batch."""
    for name in ("epochs", "batch_size", "num_accum", "sample_timesteps", "num_save_images", "eval_total_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size % (world * args.num_accum):
        raise ValueError(f"--batch-size {args.batch_size} must split evenly over {world} rank(s) times "
                         f"--num-accum {args.num_accum} micro-batches")
    if not 0.0 < args.ema_decay < 1.0:
        raise ValueError(f"--ema-decay must lie in (0, 1), got {args.ema_decay}")
    if args.max_ckpts_kept == 0 or args.max_ckpts_kept < -1:
        raise ValueError(f"--max-ckpts-kept {args.max_ckpts_kept} would keep no checkpoint (the seed then saved "
                         "none); pass -1 to keep all, or N >= 1 to keep the newest N")
    return args.batch_size // world


def setup_devices(args) -> None:
    kind = dist_util.launcher()
    if args.distributed and kind == "single":
        raise ValueError("--distributed needs a launcher: torchrun --nproc_per_node N python_scripts/vdpm_train.py "
                         "... --distributed")
    if not args.distributed and kind != "single":
        raise ValueError(f"this process was started by {kind}; add --distributed")
    dist_util.setup_dist()
    if args.train_device and not args.distributed:
        dist_util.set_device(args.train_device)


class Sampling:
    """Sample grids and FID runs from the training state (EMA weights with --use-ema)."""

    def __init__(self, args, dataset, diffusion, run_dir: str, net):
        self.args, self.dataset, self.diffusion, self.run_dir, self.net = args, dataset, diffusion, run_dir, net
        self.info = VDPM_DATASET_INFO[args.dataset]
        self.size = dataset_image_size(vars(args))
        self.image_dir = args.image_dir or os.path.join(run_dir, "images")
        self.trainer = None
        self.tag_rows = (torch.from_numpy(np.asarray(dataset.labels[:4096], dtype=np.float32))
                         if self.info.multilabel and args.use_cfg else None)

    def _model(self):
        model = copy.deepcopy(self.trainer.model)
        if self.args.use_ema and self.trainer.ema_params:
            mp = self.trainer.mp_trainer
            model.load_state_dict(mp.master_params_to_state_dict(self.trainer.ema_params[0]))
        return model.eval()

    def _sampler(self, labels: str):
        a = self.args
        return vdpm_batch_sampler(
            self._model(), self.diffusion, shape=(self.info.in_channels, self.size, self.size),
            num_classes=self.info.num_classes if a.use_cfg else 0, multitags=self.info.multilabel, labels=labels,
            tag_rows=self.tag_rows, w_guide=a.w_guide if a.use_cfg else 0.0, use_ddim=a.use_ddim,
            device=dist_util.dev())

    def batch_size(self, per_rank_batch: int) -> int:
        return self.args.sample_bsz if self.args.sample_bsz > 0 else per_rank_batch

    def grid(self, name: str, per_rank_batch: int) -> None:
        """Seeds 0..num_save_images-1, classes cycling, on rank 0: <image dir>/<name>.png."""
        if not dist_util.is_main():
            return
        sample = self._sampler("cycle")
        seeds, bsz = list(range(self.args.num_save_images)), self.batch_size(per_rank_batch)
        images = np.concatenate([sample(seeds[i:i + bsz])[0] for i in range(0, len(seeds), bsz)])
        path = os.path.join(self.image_dir, f"{name}.png")
        save_png(image_grid(images, nrow=math.ceil(math.sqrt(len(images)))), path, factor=max(1, 64 // self.size))
        logger.log(f"sample grid {path}")

    def evaluate(self, per_rank_batch: int) -> None:
        """--eval-total-size samples (sharded over ranks) and their FID / precision / recall against the data."""
        a, step = self.args, self.trainer.total_steps
        out_dir = os.path.join(self.run_dir, f"eval_{step:06d}")
        identity = {"step": step, **flags_of(a, drop=NOT_IN_IDENTITY)}
        path = run_seeded_sampling(self._sampler("random"), seeds=range(a.eval_total_size),
                                   batch_size=self.batch_size(per_rank_batch), out_dir=out_dir,
                                   image_shape=(self.size, self.size), identity=identity, flags=flags_of(a),
                                   progress=a.progress)
        if dist_util.is_main():
            reference = DatasetImages(self.dataset, limit=MAX_REFERENCE_IMAGES)
            metrics = fid_precision_recall(self.net, NpzBatch(path), reference, progress=a.progress)
            metrics.update(step=step, epoch=round(self.trainer.epoch, 4))
            write_json(metrics, os.path.join(out_dir, "metrics.json"))
            logger.log(f"step {step}: FID {metrics['fid']:.3f}, precision {metrics['precision']:.4f}, "
                       f"recall {metrics['recall']:.4f} ({metrics['num_samples']} samples vs "
                       f"{metrics['num_reference_images']} training images, {metrics['feature_net']})")
        dist_util.barrier()


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = create_argparser()
    args = parser.parse_args(argv)
    run_dir, resume_from, config_lines = merge_run_flags(parser, args, argv)
    setup_devices(args)
    if dist_util.is_main():
        print("\n".join(config_lines), flush=True)
    world = dist_util.get_world_size()
    per_rank_batch = check_flags(args, world)
    info = VDPM_DATASET_INFO[args.dataset]

    # Every input is checked before the run folder appears: a bad one leaves nothing behind.
    dataset = load_vdpm_dataset(args.dataset, args.root, split=args.split or info.train_split,
                                image_size=args.image_size or None, random_flip=args.random_flip)
    if hasattr(dataset, "validate"):
        dataset.validate(max_files=10000)
    steps_per_epoch = len(dataset) // world // per_rank_batch
    if steps_per_epoch < 1:
        raise ValueError(f"{len(dataset)} images do not fill one batch of {args.batch_size}; lower --batch-size")
    net = None
    if args.eval:
        net = load_feature_net(args.feature_net, args.inception_weights or None,
                               device=args.eval_device or dist_util.dev())
    torch.manual_seed(args.seed)  # the initial weights
    model = model_from_flags(vars(args)).to(dist_util.dev())
    diffusion = diffusion_from_flags(vars(args))
    workers = args.num_workers
    if workers < 0:
        workers = min(4, os.cpu_count() or 1) if args.dataset == "celeba" and dist_util.dev().type == "cuda" else 0
    total_steps = args.epochs * steps_per_epoch
    total_steps = min(total_steps, args.max_steps) if args.max_steps > 0 else total_steps
    save_steps = args.save_steps or (args.ckpt_intv * steps_per_epoch if args.ckpt_intv > 0 else total_steps)
    sampling = Sampling(args, dataset, diffusion, run_dir, net)

    def on_epoch(epoch: int) -> None:
        if args.image_intv > 0 and epoch % args.image_intv == 0:
            sampling.grid(f"epoch{epoch:05d}", per_rank_batch)
        final = sampling.trainer.total_steps >= total_steps  # evaluated after the loop
        if args.eval and args.eval_intv > 0 and epoch % args.eval_intv == 0 and not final:
            sampling.evaluate(per_rank_batch)

    trainer = VDPMTrainLoop(
        model=model, diffusion=diffusion, p_uncond=args.p_uncond if args.use_cfg else 0.0,
        betas=(args.beta1, args.beta2), warmup=args.warmup, grad_norm=args.grad_norm,
        steps_per_epoch=steps_per_epoch, on_epoch=on_epoch,
        data=vdpm_batches(dataset, batch_size=per_rank_batch, seed=args.seed, conditional=args.use_cfg,
                          num_workers=workers),
        batch_size=per_rank_batch, microbatch=per_rank_batch // args.num_accum, lr=args.lr,
        ema_rate=str(args.ema_decay) if args.use_ema else "", log_interval=max(1, args.log_intv),
        save_interval=max(1, save_steps), resume_checkpoint=resume_from, weight_decay=args.weight_decay,
        max_steps=total_steps, seed=args.seed, progress=args.progress, save_dir=run_dir,
        flags=vars(args), flag_names=CHECKPOINT_FLAG_NAMES, keep_checkpoints=max(args.max_ckpts_kept, 0))
    sampling.trainer = trainer
    open_run_folder(run_dir, args)
    logger.log(f"run folder {os.path.abspath(run_dir)}")
    logger.log(f"{args.dataset}: {len(dataset)} images, {steps_per_epoch} steps per epoch, {total_steps} steps in "
               f"all ({args.epochs} epochs), batch {args.batch_size} = {world} rank(s) x {args.num_accum} x "
               f"{per_rank_batch // args.num_accum}; {sum(p.numel() for p in model.parameters()):,} parameters"
               + (f"; resuming from {os.path.basename(resume_from)}" if resume_from else ""))
    trainer.run_loop()
    if args.image_intv > 0:
        sampling.grid(f"final{trainer.total_steps:06d}", per_rank_batch)
    if args.eval:
        sampling.evaluate(per_rank_batch)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
