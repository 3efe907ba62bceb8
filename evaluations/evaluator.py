"""ADM's evaluator without TensorFlow: Inception Score, FID, sFID, precision and recall of a sample batch.

    python evaluations/evaluator.py REF_BATCH.npz SAMPLE_BATCH.npz \
        --inception_weights pt_inception-2015-12-05-6726825d.pth
    python evaluations/evaluator.py --ref_batch REF_BATCH.npz --sample_batch SAMPLE_BATCH.npz \
        --save_result_path results/ppap_resnet50   # PPAP's spelling: also writes results/ppap_resnet50.csv
    python evaluations/evaluator.py --make_ref IMAGES_DIR_OR_NPZ --dest REF_BATCH.npz   # build a reference batch

Batches are ADM's npz files: ``arr_0`` uint8 NHWC (``samples_NxHxWx3.npz`` from the sampling scripts).
A reference batch with stored ``mu``, ``sigma``, ``mu_s``, ``sigma_s`` (ADM's VIRTUAL_*.npz, or one built
with ``--make_ref``) is compared through those; its ``arr_0`` images serve precision/recall. The Inception
weights are read from ``--inception_weights`` or $GD_INCEPTION_WEIGHTS and never downloaded;
``--feature_net tiny-random`` runs the same pipeline with a small seeded network (tests, dry runs).
``--save_result_path P`` writes what PPAP's evaluator writes: YAML (name, ref_batch, sample_batch,
inception_score, fid, precision, recall) in the file ``P.csv``; ``--out`` writes every number as JSON.
"""

from __future__ import annotations

import argparse
import sys

from guided_diffusion import dist_util
from guided_diffusion.cli import run_cli
from guided_diffusion.metrics.evaluate import evaluate, make_reference
from guided_diffusion.metrics.inception import load_feature_net
from guided_diffusion.files import atomic_write_bytes
from guided_diffusion.train.checkpointing import write_json


def create_argparser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref_batch", nargs="?", help="reference batch (npz with arr_0 and/or mu, sigma, mu_s, sigma_s)")
    p.add_argument("sample_batch", nargs="?", help="sample batch (npz with arr_0 uint8 NHWC)")
    # PPAP's evaluator takes the two batches as named flags.
    p.add_argument("--ref_batch", dest="ref_batch_flag", default=None, help="the reference batch (named form)")
    p.add_argument("--sample_batch", dest="sample_batch_flag", default=None, help="the sample batch (named form)")
    p.add_argument("--save_result_path", default="",
                   help="also write the results as YAML to <this path>.csv, as PPAP's evaluator does")
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


def _batch_path(positional, flag, name: str):
    if positional and flag and positional != flag:
        raise ValueError(f"the {name} batch is given twice ({positional!r} and --{name}_batch {flag!r}); "
                         "give it once")
    return flag or positional


def ppap_result_yaml(res: dict, name: str, ref_batch: str, sample_batch: str) -> str:
    """The YAML document PPAP's evaluator writes (its keys; sFID is not among them)."""
    import yaml  # only the PPAP-style result file needs it

    def number(key):
        return None if res.get(key) is None else float(res[key])

    return yaml.dump({"name": name, "ref_batch": ref_batch, "sample_batch": sample_batch,
                      "inception_score": number("inception_score"), "fid": number("fid"),
                      "precision": number("precision"), "recall": number("recall")})


def main(argv=None) -> None:
    args = create_argparser().parse_args(argv)
    args.ref_batch = _batch_path(args.ref_batch, args.ref_batch_flag, "ref")
    args.sample_batch = _batch_path(args.sample_batch, args.sample_batch_flag, "sample")
    net = load_feature_net(args.feature_net, args.inception_weights, device=dist_util.dev())
    if args.make_ref:
        if not args.dest:
            raise ValueError("--make_ref needs --dest REF_BATCH.npz")
        arrays = make_reference(args.make_ref, args.dest, net, batch_size=args.batch_size,
                                num_pr_images=args.num_pr_images, progress=args.progress)
        print(f"wrote {args.dest}: statistics over all images, {len(arrays['arr_0'])} images in arr_0")
        return
    if not (args.ref_batch and args.sample_batch):
        raise ValueError("give REF_BATCH and SAMPLE_BATCH (or --ref_batch REF --sample_batch SAMPLE, or "
                         "--make_ref SOURCE --dest REF.npz)")
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
    if args.save_result_path:
        path = args.save_result_path + ".csv"  # PPAP's name for its YAML file
        text = ppap_result_yaml(res, args.save_result_path, args.ref_batch, args.sample_batch)
        atomic_write_bytes(text.encode(), path)
        print(f"results written to {path}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
