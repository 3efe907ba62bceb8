"""Speed of the UNet and of the samplers around it.

Prints, for a UNet (default: 64x64, attention at resolutions 16 and 8) and a noisy classifier:
- forward throughput in images/s;
- the sampler overhead ratio: DDIM-25 time / 25 forward passes (1.0 = the sampler costs nothing);
- the guidance overhead ratio: classifier-guided DDIM-25 time / (25 forwards + 25 classifier
  forward+backward passes);
- the samplers' own cost per step, measured with stand-in networks that cost nothing (the network returns
  zeros, the classifier is linear in x), and the ratios it implies (1 + own cost / network cost): a bound
  that does not move with the machine's load, unlike the wall-time ratios on a shared machine.

Weights are random: speed does not depend on them. Each measure is the median of --repeats rounds; the
baselines are loops of 25 passes, timed in alternation with the samplers.

    python python_scripts/benchmark.py                       # CPU defaults
    python python_scripts/benchmark.py --device cuda --use_fp16 True --batch_size 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from guided_diffusion.guidance import classifier_cond_fn
from guided_diffusion.script_util import (
    add_dict_to_argparser,
    args_to_dict,
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)


def benchmark_defaults() -> dict:
    flags = model_and_diffusion_defaults()
    flags.update(image_size=64, num_channels=64, num_res_blocks=2, attention_resolutions="16,8",
                 num_head_channels=32, resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True,
                 timestep_respacing="ddim25")
    classifier = classifier_defaults()
    classifier.update(classifier_width=64, classifier_depth=2, classifier_attention_resolutions="16,8",
                      classifier_num_head_channels=32)
    flags.update({k: v for k, v in classifier.items() if k != "image_size"})
    flags.update(device="cuda" if torch.cuda.is_available() else "cpu", batch_size=8, repeats=3,
                 threads=0, out="")
    return flags


def timed_rounds(tasks: dict, device: str, repeats: int) -> dict:
    """Median wall time of each task over ``repeats`` rounds; the tasks alternate within a round, so slow
    drifts of the machine's speed affect them alike."""
    times = {name: [] for name in tasks}
    for _ in range(repeats):
        for name, fn in tasks.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def samplers_own_cost(diffusion, shape, out_channels: int, device: str, num_classes: int, repeats: int = 7) -> tuple:
    """Seconds per step of DDIM, plain and classifier-guided, around networks that cost nothing: the
    sampler's own arithmetic, level bookkeeping and guidance plumbing (median of ``repeats`` runs)."""
    weight = torch.zeros((), device=device, requires_grad=True)
    model = lambda x, t, y=None: torch.zeros(x.shape[0], out_channels, *x.shape[2:], device=x.device)  # noqa: E731
    classifier = lambda x, t: weight * x.mean((1, 2, 3))[:, None] + torch.zeros(  # noqa: E731
        x.shape[0], num_classes, device=x.device)
    cond_fn = classifier_cond_fn(classifier, scale=1.0)
    noise = torch.randn(*shape, device=device)
    y = torch.zeros(shape[0], dtype=torch.long, device=device)
    medians = timed_rounds({
        "ddim": lambda: diffusion.ddim_sample_loop(model, shape, noise=noise, device=device),
        "guided": lambda: diffusion.ddim_sample_loop(model, shape, noise=noise, device=device, cond_fn=cond_fn,
                                                     model_kwargs={"y": y}),
    }, device, repeats)
    return medians["ddim"] / diffusion.num_timesteps, medians["guided"] / diffusion.num_timesteps


def describe_machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"CPU {cpu}, {os.cpu_count()} cores, {threads} torch threads (torch {torch.__version__})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, benchmark_defaults())
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    torch.manual_seed(0)

    model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults()))
    classifier = create_classifier(**args_to_dict(args, classifier_defaults()))
    model.to(device).eval()
    classifier.to(device).eval()
    if args.use_fp16:
        model.convert_to_fp16()
    if args.classifier_use_fp16:
        classifier.convert_to_fp16()

    n, steps = args.batch_size, diffusion.num_timesteps
    shape = (n, 3, args.image_size, args.image_size)
    x = torch.randn(*shape, device=device)
    t = torch.full((n,), 500, device=device, dtype=torch.long)
    y = torch.randint(0, args.classifier_num_classes, (n,), device=device)

    def forward():
        with torch.no_grad():
            model(x, t)

    def classifier_pass():
        x_in = x.detach().requires_grad_(True)
        torch.autograd.grad(classifier(x_in, t)[:, 0].sum(), x_in)

    cond_fn = classifier_cond_fn(classifier, scale=1.0)
    model_fn = lambda xt, ts, y=None: model(xt, ts)  # noqa: E731 - the unconditional UNet ignores labels

    def sample(guided: bool):
        kwargs = dict(cond_fn=cond_fn, model_kwargs={"y": y}) if guided else {}
        diffusion.ddim_sample_loop(model_fn, shape, noise=x, device=device, **kwargs)

    forward()  # warm-up: first calls allocate and pick kernels
    classifier_pass()
    # The baselines run the passes in the same loop shape as the sampler: `steps` calls back to back.
    medians = timed_rounds({
        "forwards": lambda: [forward() for _ in range(steps)],
        "classifier": lambda: [classifier_pass() for _ in range(steps)],
        "ddim": lambda: sample(False),
        "guided": lambda: sample(True),
    }, device, args.repeats)
    t_forward, t_classifier = medians["forwards"] / steps, medians["classifier"] / steps
    t_ddim, t_guided = medians["ddim"], medians["guided"]
    own_ddim, own_guided = samplers_own_cost(diffusion, shape, model.out_channels, device,
                                             args.classifier_num_classes)

    results = {
        "machine": describe_machine(device),
        "model": f"{args.image_size}px UNet, {args.num_channels} channels, attention at "
                 f"{args.attention_resolutions}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; "
                 f"classifier {sum(p.numel() for p in classifier.parameters()) / 1e6:.1f}M params",
        "batch_size": n,
        "forward_images_per_s": n / t_forward,
        "forward_s": t_forward,
        "classifier_fwd_bwd_s": t_classifier,
        f"ddim{steps}_s": t_ddim,
        "sampler_overhead_ratio": t_ddim / (steps * t_forward),
        f"guided_ddim{steps}_s": t_guided,
        "guidance_overhead_ratio": t_guided / (steps * (t_forward + t_classifier)),
        "sampler_own_ms_per_step": 1e3 * own_ddim,
        "guided_sampler_own_ms_per_step": 1e3 * own_guided,
        "sampler_overhead_ratio_from_own_cost": 1 + own_ddim / t_forward,
        "guidance_overhead_ratio_from_own_cost": 1 + own_guided / (t_forward + t_classifier),
    }
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
