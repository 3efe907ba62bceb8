"""ADM's evaluator without TensorFlow: Inception Score, FID, sFID, precision and recall of a sample batch.

    python evaluations/evaluator.py REF_BATCH.npz SAMPLE_BATCH.npz \
        --inception_weights pt_inception-2015-12-05-6726825d.pth
    python evaluations/evaluator.py --make_ref IMAGES_DIR_OR_NPZ --dest REF_BATCH.npz   # build a reference batch

Batches are ADM's npz files: ``arr_0`` uint8 NHWC (``samples_NxHxWx3.npz`` from the sampling scripts).
A reference batch with stored ``mu``, ``sigma``, ``mu_s``, ``sigma_s`` (ADM's VIRTUAL_*.npz, or one built
with ``--make_ref``) is compared through those; its ``arr_0`` images serve precision/recall. The Inception
weights are read from ``--inception_weights`` or $GD_INCEPTION_WEIGHTS and never downloaded;
``--feature_net tiny-random`` runs the same pipeline with a small seeded network (tests, dry runs).
"""

from __future__ import annotations

import argparse
import sys

from guided_diffusion import dist_util
from guided_diffusion.cli import run_cli
from guided_diffusion.metrics.evaluate import evaluate, make_reference
from guided_diffusion.metrics.inception import load_feature_net
from guided_diffusion.train.checkpointing import write_json


def create_argparser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref_batch", nargs="?", help="reference batch (npz with arr_0 and/or mu, sigma, mu_s, sigma_s)")
    p.add_argument("sample_batch", nargs="?", help="sample batch (npz with arr_0 uint8 NHWC)")
    p.add_argument("--inception_weights", default=None, help="pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--feature_net", default="inception", help="inception (default) or tiny-random")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--fd_method", default="eigh", choices=["eigh", "scipy"],
                   help="matrix square root: symmetric eigh (fast) or scipy sqrtm (ADM's)")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    p.add_argument("--make_ref", default="", help="build a reference batch from this folder, zip or npz")
    p.add_argument("--dest", default="", help="where --make_ref writes the reference batch")
    p.add_argument("--num_pr_images", type=int, default=10000, help="images kept in arr_0 for precision/recall")
    p.add_argument("--progress", default=True, type=lambda v: v.lower() in ("1", "true", "yes", "y", "t"))
    return p


def main(argv=None) -> None:
    args = create_argparser().parse_args(argv)
    net = load_feature_net(args.feature_net, args.inception_weights, device=dist_util.dev())
    if args.make_ref:
        if not args.dest:
            raise ValueError("--make_ref needs --dest REF_BATCH.npz")
        arrays = make_reference(args.make_ref, args.dest, net, batch_size=args.batch_size,
                                num_pr_images=args.num_pr_images, progress=args.progress)
        print(f"wrote {args.dest}: statistics over all images, {len(arrays['arr_0'])} images in arr_0")
        return
    if not (args.ref_batch and args.sample_batch):
        raise ValueError("give REF_BATCH and SAMPLE_BATCH (or --make_ref SOURCE --dest REF.npz)")
    print("Computing evaluations...", flush=True)
    res = evaluate(args.ref_batch, args.sample_batch, net, batch_size=args.batch_size, fd_method=args.fd_method,
                   progress=args.progress)
    print(f"Inception Score: {res['inception_score']}")
    print(f"FID: {res['fid']}")
    print(f"sFID: {res['sfid'] if res['sfid'] is not None else 'n/a (the reference has no mu_s/sigma_s)'}")
    for key, name in (("precision", "Precision"), ("recall", "Recall")):
        print(f"{name}: {res[key] if res[key] is not None else 'n/a (the reference has no arr_0 images)'}")
    if args.out:
        write_json({**res, "ref_batch": args.ref_batch, "sample_batch": args.sample_batch}, args.out)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
