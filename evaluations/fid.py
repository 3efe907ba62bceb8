"""FID with EDM's interface: reference statistics from a dataset, then FID of generated images against them.

    python evaluations/fid.py ref --data=datasets/cifar10-32x32.zip --dest=fid-refs/cifar10-32x32.npz
    torchrun --standalone --nproc_per_node=2 evaluations/fid.py calc --images=out/ --ref=fid-refs/cifar10-32x32.npz

``--data`` / ``--images`` take a folder of images (searched recursively), a zip of images (EDM's dataset
format) or an ADM npz. Statistics files hold ``mu`` and ``sigma`` (EDM's format; ADM reference batches
work too). Ranks split the images and merge their statistics. Weights: ``--inception_weights`` or
$GD_INCEPTION_WEIGHTS, never downloaded.
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np

from guided_diffusion import dist_util
from guided_diffusion.cli import run_cli
from guided_diffusion.metrics.evaluate import compute_activations
from guided_diffusion.metrics.image_batches import NpzBatch, open_source
from guided_diffusion.metrics.inception import load_feature_net
from guided_diffusion.metrics.stats import frechet_distance
from guided_diffusion.train.checkpointing import atomic_write_bytes


def create_argparser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("ref", "calc"):
        s = sub.add_parser(name)
        s.add_argument("--inception_weights", "--inception-weights", default=None)
        s.add_argument("--feature_net", "--feature-net", default="inception")
        s.add_argument("--batch", type=int, default=64, help="images per batch and rank")
        s.add_argument("--progress", default="true")
    ref, calc = sub.choices["ref"], sub.choices["calc"]
    ref.add_argument("--data", required=True, help="dataset folder, zip or npz")
    ref.add_argument("--dest", required=True, help="statistics file to write (npz with mu, sigma)")
    calc.add_argument("--images", required=True, help="generated images: folder, zip or npz")
    calc.add_argument("--ref", required=True, help="reference statistics (npz with mu, sigma)")
    # --num_images: torchrun (python < 3.12) mistakes --num for an abbreviation of its own --numa-binding.
    calc.add_argument("--num", "--num_images", dest="num", type=int, default=50000,
                      help="number of images to use")
    return p


def main(argv=None) -> None:
    args = create_argparser().parse_args(argv)
    dist_util.setup_dist()
    net = load_feature_net(args.feature_net, args.inception_weights, device=dist_util.dev())
    progress = args.progress.lower() in ("1", "true", "yes")
    if args.command == "ref":
        source = open_source(args.data)
        acts = compute_activations(net, source, batch_size=args.batch, progress=progress, sharded=True)
        if dist_util.is_main():
            buf = io.BytesIO()
            np.savez(buf, mu=acts["pool"].mean(), sigma=acts["pool"].cov())
            atomic_write_bytes(buf.getvalue(), args.dest)
            print(f"wrote {args.dest} ({len(source)} images)")
        return
    ref = NpzBatch(args.ref).stored_stats()
    if ref is None:
        raise ValueError(f"{args.ref} has no mu/sigma; build it with `fid.py ref --data=... --dest={args.ref}`")
    source = open_source(args.images)
    if len(source) < args.num:
        raise ValueError(f"{args.images} has {len(source)} images, fewer than --num {args.num}; "
                         f"generate more or pass --num {len(source)}")
    if dist_util.is_main():
        print(f"Calculating FID over {args.num} images...", flush=True)
    acts = compute_activations(net, source, batch_size=args.batch, limit=args.num, progress=progress,
                               sharded=True)
    if dist_util.is_main():
        fid = frechet_distance(acts["pool"].mean(), acts["pool"].cov(), ref["mu"], ref["sigma"])
        print(f"{fid:g}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
