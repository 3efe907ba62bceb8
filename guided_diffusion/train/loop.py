"""The training loop shared by the diffusion model and the noisy classifier.

``Trainer`` owns what every run needs: DDP across ranks, AdamW over fp32 master weights (fp16 with loss
scaling or bf16 autocast), linear lr annealing, EMA copies at several rates, micro-batching, logging and
atomic ADM-named checkpoints with exact resume. Subclasses only say how a batch becomes a loss.

Reproducibility: step k on rank r seeds torch and a numpy generator from (seed, k, r) before drawing
timesteps and noise, and the data stream starts at the resumed step, so a run killed after checkpoint k
and resumed from it continues with exactly the losses of an uninterrupted run.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import inspect
import os
from typing import Callable, Dict, Iterator, List, Optional, Union

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel.distributed import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from .. import dist_util, logger
from ..models.checkpoints import load_checkpoint, load_state_dict_checked
from ..nn import update_ema
from .checkpointing import (atomic_save, companion_paths, parse_resume_step_from_filename,
                            resolve_resume_checkpoint)
from .mixed_precision import INITIAL_LOG_LOSS_SCALE, MixedPrecisionTrainer

DataSource = Union[Iterator, Callable[[int], Iterator]]


def parse_ema_rates(ema_rate) -> List[float]:
    """``"0.9999,0.999"`` -> [0.9999, 0.999]; "" or None -> [] (no EMA)."""
    if ema_rate is None or ema_rate == "":
        return []
    if isinstance(ema_rate, (int, float)):
        return [float(ema_rate)]
    rates = [float(x) for x in str(ema_rate).split(",") if x.strip()]
    bad = [r for r in rates if not 0.0 <= r < 1.0]
    if bad:
        raise ValueError(f"--ema_rate values must lie in [0, 1), got {bad}")
    return rates


def param_digest(params) -> str:
    """sha256 of the parameters' bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of training step ``step`` on ``rank`` (a hash, so neighbouring steps are unrelated)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


class Trainer(abc.ABC):
    """Generic loop; subclasses implement ``compute_loss(batch, cond) -> scalar loss``.

    :param data: an iterator of (batch, cond) or a callable ``start_step -> iterator`` (needed for exact
        resume, so the stream restarts where the checkpoint left it).
    :param lr_anneal_steps: if > 0, lr falls linearly to 0 at this step and training stops there.
    :param max_steps: if > 0, stop after this many optimizer steps (counted from step 0, not the resume).
    :param resume_checkpoint: a ``modelNNNNNN.pt`` (its ema/opt/train_state files are read from beside it),
        or a run folder (its latest checkpoint).
    """

    def __init__(self, *, model: nn.Module, data: DataSource, batch_size: int, microbatch: int = -1,
                 lr: float = 1e-4, ema_rate="", log_interval: int = 10, save_interval: int = 10000,
                 resume_checkpoint: str = "", use_fp16: bool = False, use_bf16: bool = False,
                 fp16_scale_growth: float = 1e-3, weight_decay: float = 0.0, lr_anneal_steps: int = 0,
                 max_steps: int = 0, seed: int = 0, initial_lg_loss_scale: float = INITIAL_LOG_LOSS_SCALE,
                 flags: Optional[Dict] = None, progress: bool = True):
        if use_fp16 and dist_util.dev().type != "cuda":
            raise ValueError("--use_fp16 True needs a CUDA GPU (fp16 convolutions are not meant for CPUs); "
                             "use --use_bf16 True or full precision on CPU")
        self.model, self.batch_size, self.lr, self.weight_decay = model, batch_size, lr, weight_decay
        self.microbatch = microbatch if microbatch > 0 else batch_size
        self.ema_rate = parse_ema_rates(ema_rate)
        self.log_interval, self.save_interval = log_interval, save_interval
        self.lr_anneal_steps, self.max_steps, self.seed = lr_anneal_steps, max_steps, seed
        self.flags, self.progress = flags, progress
        self.rank, self.world_size = dist_util.get_rank(), dist_util.get_world_size()
        self.global_batch = batch_size * self.world_size
        self.step, self.resume_step = 0, 0
        self.resume_checkpoint = resolve_resume_checkpoint(resume_checkpoint)

        resume_state = self._load_model_for_resume()
        dist_util.sync_params(self.model.parameters())
        dist_util.sync_params(self.model.buffers())
        self.mp_trainer = MixedPrecisionTrainer(model=model, use_fp16=use_fp16, use_bf16=use_bf16,
                                                fp16_scale_growth=fp16_scale_growth,
                                                initial_lg_loss_scale=initial_lg_loss_scale)
        self.opt = torch.optim.AdamW(self.mp_trainer.master_params, lr=lr, weight_decay=weight_decay)
        self.ema_params = [self._load_ema(rate) for rate in self.ema_rate]
        self._load_optimizer_state(resume_state)
        self.data = data(self.resume_step) if callable(data) else data

        if self.world_size > 1:
            device_ids = [dist_util.dev()] if dist_util.dev().type == "cuda" else None
            # Buffers are not re-broadcast every forward (ADM's broadcast_buffers=False); newer torch
            # spells that forward_sync_buffers.
            sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                    else {"broadcast_buffers": False})
            self.ddp_model = DDP(model, device_ids=device_ids, bucket_cap_mb=128, find_unused_parameters=False,
                                 **sync)
        else:
            self.ddp_model = model

    # ------------------------------------------------------------------------------------------ resume
    def _load_model_for_resume(self) -> Optional[dict]:
        if not self.resume_checkpoint:
            return None
        self.resume_step = parse_resume_step_from_filename(self.resume_checkpoint)
        state = load_checkpoint(self.resume_checkpoint, flag="--resume_checkpoint")
        load_state_dict_checked(self.model, state, flags=self.flags)
        paths = companion_paths(self.resume_checkpoint)
        if os.path.isfile(paths["state"]):
            return torch.load(paths["state"], map_location="cpu", weights_only=True)
        return None

    def _load_ema(self, rate: float) -> List[torch.Tensor]:
        params = [p.detach().clone().float() for p in self.mp_trainer.master_params]
        if self.resume_checkpoint:
            path = companion_paths(self.resume_checkpoint, [rate])[f"ema_{rate}"]
            if os.path.isfile(path):
                state = load_checkpoint(path, flag="--resume_checkpoint (its EMA file)")
                params = [t.to(dist_util.dev()) for t in self.mp_trainer.state_dict_to_master_params(state)]
            else:
                logger.log(f"no {os.path.basename(path)} beside the checkpoint: EMA {rate} restarts from it")
        for p in params:
            dist_util.sync_params([p])
        return params

    def _load_optimizer_state(self, resume_state: Optional[dict]) -> None:
        if not self.resume_checkpoint:
            return
        opt_path = companion_paths(self.resume_checkpoint)["opt"]
        if os.path.isfile(opt_path):
            self.opt.load_state_dict(torch.load(opt_path, map_location=dist_util.dev(), weights_only=True))
        else:
            logger.log(f"no {os.path.basename(opt_path)} beside the checkpoint: the optimizer starts fresh")
        if resume_state is not None:
            saved_world = resume_state.get("world_size", self.world_size)
            if saved_world != self.world_size:
                logger.log(f"note: the checkpoint was trained on {saved_world} ranks, this run has "
                           f"{self.world_size}; training continues, but the data order differs from an "
                           "uninterrupted run")
            self.mp_trainer.lg_loss_scale = float(resume_state.get("lg_loss_scale", self.mp_trainer.lg_loss_scale))
            self.load_extra_state(resume_state)

    # ------------------------------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def compute_loss(self, batch: torch.Tensor, cond: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The scalar loss of one micro-batch (already on the device, inside the autocast context)."""

    def after_step(self) -> None:  # noqa: B027 (an optional hook)
        """Called after every optimizer step (e.g. validation)."""

    def ema_decay(self, rate: float) -> float:
        """The decay of this step's update of the EMA configured with ``rate`` (called before ``self.step``
        advances, so ``total_steps`` counts the earlier updates). Subclasses may warm it up."""
        return rate

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:  # noqa: B027 (an optional hook)
        pass

    # ------------------------------------------------------------------------------------------ loop
    @property
    def total_steps(self) -> int:
        """Optimizer steps completed since step 0 (the number in the checkpoint names)."""
        return self.step + self.resume_step

    def _finished(self) -> bool:
        done = self.total_steps
        return bool((self.lr_anneal_steps and done >= self.lr_anneal_steps) or
                    (self.max_steps and done >= self.max_steps))

    def run_loop(self) -> None:
        ends = [s for s in (self.lr_anneal_steps, self.max_steps) if s]
        bar = tqdm(total=min(ends) if ends else None, initial=self.resume_step, unit="step",
                   disable=not (self.progress and self.rank == 0), dynamic_ncols=True)
        saved_at = None
        while not self._finished():
            batch, cond = next(self.data)
            self.run_step(batch, cond)
            bar.update(1)
            if self.total_steps % self.log_interval == 0:
                logger.dumpkvs()
            if self.total_steps % self.save_interval == 0:
                self.save()
                saved_at = self.total_steps
                if os.environ.get("DIFFUSION_TRAINING_TEST", ""):
                    break
        bar.close()
        if self.step > 0 and self.total_steps % self.log_interval:
            logger.dumpkvs()  # the last, shorter interval
        if saved_at != self.total_steps and self.step > 0:
            self.save()

    def run_step(self, batch: torch.Tensor, cond: Dict[str, torch.Tensor]) -> None:
        seed = step_seed(self.seed, self.total_steps, self.rank)
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self._set_lr()
        self.forward_backward(batch, cond)
        if self.mp_trainer.optimize(self.opt):
            for rate, params in zip(self.ema_rate, self.ema_params):
                update_ema(params, self.mp_trainer.master_params, rate=self.ema_decay(rate))
        self.step += 1
        logger.logkv("step", self.total_steps)
        logger.logkv("samples", self.total_steps * self.global_batch)
        logger.logkv("lr", self.opt.param_groups[0]["lr"])
        self.after_step()

    def _set_lr(self) -> None:
        if not self.lr_anneal_steps:
            return
        lr = self.lr * (1 - self.total_steps / self.lr_anneal_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr

    def forward_backward(self, batch: torch.Tensor, cond: Dict[str, torch.Tensor]) -> None:
        """Sum the gradients of the micro-batches, each weighted by its share of the batch, so the update
        does not depend on ``microbatch``; only the last micro-batch synchronises gradients across ranks."""
        self.mp_trainer.zero_grad()
        n = batch.shape[0]
        for i in range(0, n, self.microbatch):
            micro = batch[i:i + self.microbatch].to(dist_util.dev())
            micro_cond = {k: v[i:i + self.microbatch].to(dist_util.dev()) for k, v in cond.items()}
            last = i + self.microbatch >= n
            no_sync = self.ddp_model.no_sync() if (not last and self.world_size > 1) else contextlib.nullcontext()
            with no_sync:
                with self.mp_trainer.autocast():
                    loss = self.compute_loss(micro, micro_cond)
                self.mp_trainer.backward(loss * (micro.shape[0] / n))

    # ------------------------------------------------------------------------------------------ saving
    def save(self) -> None:
        """Rank 0 writes the companions first and ``modelNNNNNN.pt`` last, each through a temp file, so a
        model file under its final name always has complete EMA, optimizer and state files beside it.
        Every rank's parameter digest is stored too: DDP replicas that drift apart show up there."""
        digests = dist_util.all_gather_objects(param_digest(self.mp_trainer.master_params))
        if self.rank == 0:
            if len(set(digests)) > 1:
                logger.log(f"WARNING: the ranks' parameters differ at step {self.total_steps}: {digests}")
            folder = logger.get_dir() or "."
            step = self.total_steps
            mp = self.mp_trainer
            names = companion_paths(os.path.join(folder, f"model{step:06d}.pt"), self.ema_rate)
            for rate, params in zip(self.ema_rate, self.ema_params):
                atomic_save(mp.master_params_to_state_dict(params), names[f"ema_{rate}"])
            atomic_save(self.opt.state_dict(), names["opt"])
            state = {"step": step, "lg_loss_scale": mp.lg_loss_scale, "seed": self.seed,
                     "world_size": self.world_size, "param_digests": digests, **self.extra_state()}
            atomic_save(state, names["state"])
            atomic_save(mp.master_params_to_state_dict(mp.master_params),
                        os.path.join(folder, f"model{step:06d}.pt"))
            logger.log(f"saved checkpoint model{step:06d}.pt")
        dist_util.barrier()


__all__ = ["Trainer", "parse_ema_rates", "step_seed", "param_digest"]
