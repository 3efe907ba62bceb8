"""PPAP on the built-in digits: naive, finetune, multi-experts and PPAP guidance of one unconditional model,
in the paper's noise regime and on equal terms.

    python python_scripts/ppap_benchmark.py            # about 55 minutes on a 2-core CPU

1. a diffusion model with the **linear** noise schedule of the paper's ADM model (the demo's cosine schedule
   keeps SNR above 1 until t = 496, where a clean classifier still reads the digits, which flatters naive
   guidance), and the demo's judge (a clean ADM classifier, another architecture; shared with the demo);
2. for each seed of ``--seeds``: a clean ResNet18 on the digits with ImageNet-normalised input, the
   "off-the-shelf" classifier and PPAP's teacher; ``finetune`` (it, fine-tuned on noisy labelled digits),
   ``multi_experts`` (5 copies, each on a fifth of the timesteps) and ``ppap`` (5 LoRA experts distilled from it
   without labels on images the diffusion model generated), every one of them with the same ``--iterations``
   and the paper's optimiser settings (lr 1e-4, weight decay 0.05, lr annealed within each expert);
3. sampling, for each seed, with the same seeds and target labels for every row (DDIM-50, scale 7.5), judged
   by the judge, with FID against the 1,797 digits computed with the evaluation suite's small *untrained*
   network (a relative measure, not comparable with published FIDs).

The table (top-1 accuracy per seed and its mean, FID, trainable parameters, sampling seconds per sample, each
guide's accuracy on noisy real digits) is printed and written to ``<out_dir>/ppap_benchmark.json`` and
``.md`` with the statements it supports. Every stage is skipped when its output exists.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from guided_diffusion.cli import run_cli
from guided_diffusion.digits_demo import (NOISY_TIMESTEPS, benchmark_defaults, judge, judge_self_check,
                                          noisy_accuracy, sample_with, train_diffusion_model, train_guides,
                                          train_judge, trainable_parameters)
from guided_diffusion.files import atomic_write_bytes, write_json
from guided_diffusion.metrics.evaluate import evaluate
from guided_diffusion.metrics.inception import load_feature_net
from guided_diffusion.script_util import add_dict_to_argparser


def statements(rows: dict) -> list:
    """What the table shows, computed from it (mean top-1 accuracy over the seeds)."""
    mean = {m: statistics.mean(r["accuracy_top1"] for r in runs) for m, runs in rows.items()}
    out = []
    tuned = [m for m in ("finetune", "multi_experts", "ppap") if m in mean]
    if "naive" in mean and tuned:
        gain = {m: mean[m] - mean["unguided"] for m in ["naive"] + tuned}
        weakest = min(tuned, key=gain.get)
        out.append(f"Naive guidance raises accuracy by {100 * gain['naive']:.0f} points over unguided; the least "
                   f"effective fine-tuned guide ({weakest}) by {100 * gain[weakest]:.0f}.")
    if "finetune" in mean and "multi_experts" in mean:
        better = "beats" if mean["multi_experts"] > mean["finetune"] else "does not beat"
        out.append(f"Multi-experts ({100 * mean['multi_experts']:.1f}%) {better} a single fine-tuned classifier "
                   f"({100 * mean['finetune']:.1f}%) here, with the same iterations (the paper reports that it "
                   "does).")
    if "ppap" in mean and "multi_experts" in mean:
        out.append(f"PPAP ({100 * mean['ppap']:.1f}%) against multi-experts ({100 * mean['multi_experts']:.1f}%), "
                   "with a tenth of the trainable parameters and no labels.")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, benchmark_defaults())
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in str(args.seeds).split(",") if s != ""]
    if not seeds:
        raise ValueError("--seeds needs at least one seed, e.g. 0,1")
    os.environ.setdefault("OPENAI_LOG_FORMAT", "log,csv")
    out = os.path.abspath(args.out_dir)
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    judge_path = train_judge(args, out)
    judge_self_check(judge_path, out)
    reference = os.path.join(out, "judge", "digits_16x16.npz")
    ema = train_diffusion_model(args, out, args.noise_schedule)
    net = load_feature_net("tiny-random")
    rows = {m: [] for m in ["unguided"] + methods}
    for seed in seeds:
        run = argparse.Namespace(**{**vars(args), "seed": seed})
        root = os.path.join(out, "ppap_benchmark", f"seed{seed}")
        guides = train_guides(run, root, ema, methods, label=f"seed {seed}")
        for method in rows:
            paths = guides["naive" if method == "unguided" else method]
            npz, seconds = sample_with(run, root, ema, method, paths, args.ppap_scale)
            rows[method].append({
                "seed": seed, "accuracy_top1": judge(judge_path, npz)["accuracy"],
                "fid_untrained_net": evaluate(reference, npz, net, progress=False)["fid"],
                "seconds_per_sample": None if not seconds else seconds / args.num_samples,
                "accuracy_on_noisy_digits": noisy_accuracy(method, paths, run), "npz": os.path.relpath(npz, out)})
    report = {"flags": vars(args), "rows": rows, "statements": statements(rows),
              "seconds": time.perf_counter() - start}
    write_json(report, os.path.join(out, "ppap_benchmark.json"))
    noisy = " / ".join(f"t={t}" for t in NOISY_TIMESTEPS)
    lines = [f"| guidance | top-1 accuracy (judge), seeds {', '.join(map(str, seeds))} -> mean | FID (untrained "
             f"net) | trainable parameters | s / sample | guide's accuracy on noisy digits ({noisy}) |",
             "|---|---|---|---|---|---|"]
    for m, runs in rows.items():
        accs = [r["accuracy_top1"] for r in runs]
        per_seed = " / ".join(f"{100 * a:.0f}%" for a in accs)
        fid = statistics.mean(r["fid_untrained_net"] for r in runs)
        secs = [r["seconds_per_sample"] for r in runs if r["seconds_per_sample"]]
        sec = f"{statistics.mean(secs):.3f}" if secs else "-"
        noisy_means = [statistics.mean(r["accuracy_on_noisy_digits"][str(t)] for r in runs)
                       for t in NOISY_TIMESTEPS] if runs[0]["accuracy_on_noisy_digits"] else []
        acc_t = " / ".join(f"{100 * a:.0f}%" for a in noisy_means) or "-"
        params = 0 if m == "unguided" else trainable_parameters(m, args)
        lines.append(f"| {m} | {per_seed} -> {100 * statistics.mean(accs):.1f}% | {fid:.3f} | {params:,} | {sec} | "
                     f"{acc_t} |")
    text = "\n".join(lines + [""] + report["statements"])
    atomic_write_bytes((text + "\n").encode(), os.path.join(out, "ppap_benchmark.md"))
    print("\n== PPAP benchmark on the digits (chance: 10%)\n" + text, flush=True)


if __name__ == "__main__":
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    run_cli(main, sys.argv[1:])
