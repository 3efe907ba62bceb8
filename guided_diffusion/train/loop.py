"""The training loop shared by every model: one Trainer, and an :class:`~.objective.Objective` per loss.

``Trainer`` owns what every run needs: DDP across ranks, AdamW over fp32 master weights (fp16 with loss
scaling or bf16 autocast), a learning-rate schedule, optional global gradient-norm clipping, EMA copies at
several rates, classifier-free label dropout, micro-batching, logging and atomic ADM-named checkpoints with
exact resume. The objective says what a step draws at random and how a micro-batch becomes a loss.

Reproducibility: step k on rank r seeds torch and a numpy generator from ``step_seed(seed, k, r)``; label
dropout and the objective's draws for the whole per-rank batch come from them before the batch is split, so
the update does not depend on ``microbatch``, and since the data stream starts at the resumed step, a run
killed after checkpoint k and resumed from it continues with exactly the losses of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel.distributed import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from .. import dist_util, logger
from ..labels import drop_labels
from ..models.checkpoints import load_checkpoint, load_state_dict_checked
from ..nn import update_ema
from .checkpointing import (atomic_save, companion_paths, parse_resume_step_from_filename, prune_checkpoints,
                            resolve_resume_checkpoint)
from .mixed_precision import INITIAL_LOG_LOSS_SCALE, MixedPrecisionTrainer
from .objective import Draws, Objective, StepRandom

DataSource = Union[Iterator, Callable[[int], Iterator]]
LRSchedule = Callable[[int], float]
# The Trainer's own entries of train_stateNNNNNN.pt; an objective's state sits beside them.
_TRAIN_STATE_KEYS = ("step", "lg_loss_scale", "seed", "world_size", "param_digests")


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


def linear_warmup_schedule(lr: float, warmup_steps: int) -> LRSchedule:
    """lr * min((k + 1) / warmup_steps, 1) at optimizer step k (0-based); lr throughout for warmup_steps 0."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return lambda step: lr * min((step + 1) / warmup_steps, 1.0) if warmup_steps else lr


def linear_anneal_schedule(lr: float, anneal_steps: int) -> LRSchedule:
    """lr * (1 - k / anneal_steps) at optimizer step k: ADM's anneal, reaching 0 at step ``anneal_steps``."""
    if anneal_steps <= 0:
        raise ValueError(f"anneal_steps must be > 0, got {anneal_steps}")
    return lambda step: lr * (1 - step / anneal_steps)


def logger_dir() -> str:
    """The logger's folder (the working directory before ``logger.configure``): ADM's checkpoint folder."""
    return logger.get_dir() or "."


class Trainer:
    """Minimise ``objective`` over ``model``; see the module docstring.

    :param objective: draws each step's randomness and computes each micro-batch's loss.
    :param data: an iterator of (batch, cond) or a callable ``start_step -> iterator`` (needed for exact
        resume, so the stream restarts where the checkpoint left it).
    :param save_dir: the folder checkpoints are written to.
    :param lr_schedule: ``step -> lr`` at each optimizer step (0-based, counted from step 0, not the resume);
        None: ``lr`` throughout, or ADM's linear anneal to 0 when ``lr_anneal_steps`` > 0.
    :param lr_anneal_steps: if > 0, training stops at this step (and, without ``lr_schedule``, lr falls
        linearly to 0 there).
    :param max_steps: if > 0, stop after this many optimizer steps (counted from step 0, not the resume).
    :param betas: AdamW's (beta1, beta2); they win over those of a resumed optimizer state.
    :param max_grad_norm: clip the global norm of the accumulated (all-reduced) gradient to this; 0: off.
        The norm before clipping is logged as ``grad_norm_unclipped``.
    :param ema_warmup: update n (1 for the first) of each EMA uses decay min(rate, (1 + n) / (10 + n));
        False: the plain rate.
    :param p_uncond: classifier-free training: each label ``cond[label_key]`` of the per-rank batch becomes
        ``null_label`` with this probability, drawn from the step's ``rng.torch`` before the objective's
        draws.
    :param resume_checkpoint: a ``modelNNNNNN.pt`` (its ema/opt/train_state files are read from beside it),
        or a run folder (its latest checkpoint).
    :param seed: with the step and the rank, determines every random draw of training (``step_seed``).
    :param flags, flag_names: the flags that built the model and the family's spelling of them: a resumed
        checkpoint that does not fit is explained in those names.
    :param keep_checkpoints: after each save, keep only the newest this many checkpoint sets of ``save_dir``
        (model, EMA, optimizer and train-state files of one step); 0 keeps them all. See :meth:`save`.
    """

    def __init__(self, *, model: nn.Module, objective: Objective, data: DataSource, batch_size: int,
                 save_dir: str, microbatch: int = -1, lr: float = 1e-4, ema_rate="", log_interval: int = 10,
                 save_interval: int = 10000, resume_checkpoint: str = "", use_fp16: bool = False,
                 use_bf16: bool = False, fp16_scale_growth: float = 1e-3, weight_decay: float = 0.0,
                 lr_anneal_steps: int = 0, lr_schedule: Optional[LRSchedule] = None,
                 betas: Tuple[float, float] = (0.9, 0.999), max_grad_norm: float = 0.0,
                 ema_warmup: bool = False, p_uncond: float = 0.0, null_label: Union[int, float] = 0,
                 label_key: str = "y", max_steps: int = 0, seed: int = 0,
                 initial_lg_loss_scale: float = INITIAL_LOG_LOSS_SCALE, flags: Optional[Dict] = None,
                 flag_names: Optional[Dict] = None, progress: bool = True, keep_checkpoints: int = 0):
        if use_fp16 and dist_util.dev().type != "cuda":
            raise ValueError("--use_fp16 True needs a CUDA GPU (fp16 convolutions are not meant for CPUs); "
                             "use --use_bf16 True or full precision on CPU")
        if not save_dir:
            raise ValueError("save_dir is required: the folder the checkpoints are written to")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
        if max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0: no clipping), got {max_grad_norm}")
        if keep_checkpoints < 0:
            raise ValueError(f"keep_checkpoints must be >= 0 (0 keeps every checkpoint), got {keep_checkpoints}")
        clash = sorted(set(objective.state_dict()) & set(_TRAIN_STATE_KEYS))
        if clash:  # checked here, on every rank, rather than at the first save on rank 0
            raise ValueError(f"{type(objective).__name__}.state_dict() uses the Trainer's keys {clash}")
        self.model, self.objective, self.batch_size = model, objective, batch_size
        self.save_dir = os.fspath(save_dir)
        self.lr, self.weight_decay, self.betas = lr, weight_decay, (float(betas[0]), float(betas[1]))
        self.microbatch = microbatch if microbatch > 0 else batch_size
        self.ema_rate, self.ema_warmup = parse_ema_rates(ema_rate), bool(ema_warmup)
        self.log_interval, self.save_interval = log_interval, save_interval
        self.lr_anneal_steps, self.max_steps, self.seed = lr_anneal_steps, max_steps, seed
        if lr_schedule is None and lr_anneal_steps:
            lr_schedule = linear_anneal_schedule(lr, lr_anneal_steps)
        self.lr_schedule = lr_schedule
        self.max_grad_norm = float(max_grad_norm)
        self.p_uncond, self.null_label, self.label_key = float(p_uncond), null_label, label_key
        self.flags, self.flag_names, self.progress = flags, flag_names, progress
        self.keep_checkpoints = int(keep_checkpoints)
        self.rank, self.world_size = dist_util.get_rank(), dist_util.get_world_size()
        self.global_batch = batch_size * self.world_size
        self.step, self.resume_step = 0, 0
        self.rng: Optional[StepRandom] = None  # the current step's streams (validation may continue them)
        self.resume_checkpoint = resolve_resume_checkpoint(resume_checkpoint)

        resume_state = self._load_model_for_resume()
        dist_util.sync_params(self.model.parameters())
        dist_util.sync_params(self.model.buffers())
        self.mp_trainer = MixedPrecisionTrainer(model=model, use_fp16=use_fp16, use_bf16=use_bf16,
                                                fp16_scale_growth=fp16_scale_growth,
                                                initial_lg_loss_scale=initial_lg_loss_scale)
        self.opt = torch.optim.AdamW(self.mp_trainer.master_params, lr=lr, betas=self.betas,
                                     weight_decay=weight_decay)
        self.ema_params = [self._load_ema(rate) for rate in self.ema_rate]
        self._load_optimizer_state(resume_state)
        for group in self.opt.param_groups:
            group["betas"] = self.betas
        self.data = data(self.resume_step) if callable(data) else data

        if self.world_size > 1:
            device_ids = [dist_util.dev()] if dist_util.dev().type == "cuda" else None
            # Buffers are not re-broadcast every forward (ADM's broadcast_buffers=False); newer torch
            # spells that forward_sync_buffers.
            new_name = "forward_sync_buffers" in inspect.signature(DDP).parameters
            sync = {"forward_sync_buffers": False} if new_name else {"broadcast_buffers": False}
            self.ddp_model = DDP(model, device_ids=device_ids, bucket_cap_mb=128,
                                 find_unused_parameters=False, **sync)
        else:
            self.ddp_model = model

    # ------------------------------------------------------------------------------------------ resume
    def _load_model_for_resume(self) -> Optional[dict]:
        if not self.resume_checkpoint:
            return None
        self.resume_step = parse_resume_step_from_filename(self.resume_checkpoint)
        state = load_checkpoint(self.resume_checkpoint, flag="--resume_checkpoint")
        load_state_dict_checked(self.model, state, flags=self.flags, flag_names=self.flag_names)
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
            mp = self.mp_trainer
            mp.lg_loss_scale = float(resume_state.get("lg_loss_scale", mp.lg_loss_scale))
            self.objective.load_state_dict({k: v for k, v in resume_state.items()
                                            if k not in _TRAIN_STATE_KEYS})

    # ------------------------------------------------------------------------------------------ hooks
    def after_step(self) -> None:  # noqa: B027 (an optional hook)
        """Called after every optimizer step (e.g. validation); ``self.rng`` still holds its streams."""

    # ------------------------------------------------------------------------------------------ schedules
    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based, counted from step 0)."""
        return self.lr if self.lr_schedule is None else float(self.lr_schedule(step))

    def ema_decay(self, rate: float) -> float:
        """The decay of this step's update of the EMA configured with ``rate`` (called before ``self.step``
        advances, so ``total_steps`` counts the earlier updates)."""
        if not self.ema_warmup:
            return rate
        n = self.total_steps + 1  # this update's number, counting from 1
        return min(rate, (1.0 + n) / (10.0 + n))

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
        """One optimizer step on the per-rank ``batch``; step_seed(seed, step, rank) fixes its randomness."""
        seed = step_seed(self.seed, self.total_steps, self.rank)
        torch.manual_seed(seed)
        self.rng = StepRandom.from_seed(seed)
        lr = self.lr_at(self.total_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.forward_backward(batch, cond, self.rng)
        if self.mp_trainer.optimize(self.opt):
            for rate, params in zip(self.ema_rate, self.ema_params):
                update_ema(params, self.mp_trainer.master_params, rate=self.ema_decay(rate))
        self.step += 1
        logger.logkv("step", self.total_steps)
        logger.logkv("samples", self.total_steps * self.global_batch)
        logger.logkv("lr", self.opt.param_groups[0]["lr"])
        self.after_step()

    def apply_label_dropout(self, cond: Dict[str, torch.Tensor], rng: StepRandom) -> Dict[str, torch.Tensor]:
        """``cond`` with each label replaced by ``null_label`` with probability ``p_uncond`` (mask from
        ``rng.torch``, which is not touched when p_uncond is 0)."""
        if self.p_uncond == 0.0:
            return cond
        if self.label_key not in cond:
            raise ValueError(f"p_uncond={self.p_uncond} > 0 needs labels to drop, but the data gives no "
                             f"cond[{self.label_key!r}] (train a class-conditional model, or set p_uncond 0)")
        cond = dict(cond)
        cond[self.label_key] = drop_labels(cond[self.label_key], self.p_uncond, self.null_label, rng.torch)
        return cond

    def forward_backward(self, batch: torch.Tensor, cond: Dict[str, torch.Tensor], rng: StepRandom) -> None:
        """Accumulate the gradient of the per-rank batch: drop labels, draw the step's randomness once for the
        whole batch, then sum the micro-batches' gradients, each weighted by its share of the batch, so the
        update does not depend on ``microbatch``; only the last micro-batch synchronises gradients across
        ranks. Finally clip the accumulated gradient's global norm (``max_grad_norm``)."""
        cond = self.apply_label_dropout(cond, rng)
        draws = self.objective.draw(batch, cond, rng)
        n = batch.shape[0]
        self.mp_trainer.zero_grad()
        for micro, micro_cond, micro_draws, last in self.micro_batches(batch, cond, draws):
            defer = not last and self.world_size > 1
            with self.ddp_model.no_sync() if defer else contextlib.nullcontext():
                with self.mp_trainer.autocast():
                    loss = self.objective.loss(self.ddp_model, micro, micro_cond, micro_draws)
                self.mp_trainer.backward(loss * (micro.shape[0] / n))
        if self.max_grad_norm > 0:
            self.clip_grad_norm()

    def micro_batches(self, batch: torch.Tensor, cond: Dict[str, torch.Tensor], draws: Draws
                      ) -> Iterator[Tuple[torch.Tensor, Dict[str, torch.Tensor], Draws, bool]]:
        """(micro-batch, its cond, its draws, is-last) on the device, ``microbatch`` examples at a time."""
        n = batch.shape[0]
        bad = {k: tuple(v.shape) for k, v in draws.items() if v.ndim == 0 or v.shape[0] != n}
        if bad:
            raise ValueError(f"{type(self.objective).__name__}.draw must return tensors with the batch size "
                             f"{n} as first dimension, got shapes {bad}")
        dev = dist_util.dev()
        for i in range(0, n, self.microbatch):
            part = slice(i, i + self.microbatch)
            yield (batch[part].to(dev), {k: v[part].to(dev) for k, v in cond.items()},
                   {k: v[part].to(dev) for k, v in draws.items()}, i + self.microbatch >= n)

    def clip_grad_norm(self) -> None:
        """Scale the accumulated gradient down to global norm ``max_grad_norm`` (fp16: measured unscaled;
        a non-finite norm is left to the optimizer step, which skips it) and log the norm before clipping."""
        params = self.mp_trainer.model_params
        if not self.mp_trainer.use_fp16:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))
        else:
            # fp16 gradients carry the loss scale, and their norm in fp16 could overflow: measure in fp32.
            grads = [p.grad for p in params if p.grad is not None]
            squares = sum(float(torch.linalg.vector_norm(g, dtype=torch.float32)) ** 2 for g in grads)
            norm = squares ** 0.5 / 2 ** self.mp_trainer.lg_loss_scale
            if np.isfinite(norm) and norm > self.max_grad_norm:
                for g in grads:
                    g.mul_(self.max_grad_norm / (norm + 1e-6))
        logger.logkv_mean("grad_norm_unclipped", norm)

    # ------------------------------------------------------------------------------------------ saving
    def save(self) -> None:
        """Rank 0 writes the companions first and ``modelNNNNNN.pt`` last into ``save_dir``, each through a
        temp file, so a model file under its final name always has complete EMA, optimizer and state files
        beside it. Every rank's parameter digest is stored too: DDP replicas that drift apart show up
        there."""
        digests = dist_util.all_gather_objects(param_digest(self.mp_trainer.master_params))
        if self.rank == 0:
            if len(set(digests)) > 1:
                logger.log(f"WARNING: the ranks' parameters differ at step {self.total_steps}: {digests}")
            step = self.total_steps
            mp = self.mp_trainer
            model_path = os.path.join(self.save_dir, f"model{step:06d}.pt")
            names = companion_paths(model_path, self.ema_rate)
            for rate, params in zip(self.ema_rate, self.ema_params):
                atomic_save(mp.master_params_to_state_dict(params), names[f"ema_{rate}"])
            atomic_save(self.opt.state_dict(), names["opt"])
            state = {"step": step, "lg_loss_scale": mp.lg_loss_scale, "seed": self.seed,
                     "world_size": self.world_size, "param_digests": digests, **self.objective.state_dict()}
            atomic_save(state, names["state"])
            atomic_save(mp.master_params_to_state_dict(mp.master_params), model_path)
            logger.log(f"saved checkpoint model{step:06d}.pt")
        dist_util.barrier()
        if self.rank == 0 and self.keep_checkpoints:
            self.prune_checkpoints()

    def prune_checkpoints(self) -> List[str]:
        """Keep the newest ``keep_checkpoints`` sets of ``save_dir`` (the one just saved always among them).

        Called by :meth:`save` on rank 0 after its closing barrier: every rank has then passed the collective
        at the start of ``save``, so each has finished reading the checkpoint it resumed from, which may go now
        like any older set. Sets of later steps than this run's (another run's) are left alone.
        """
        removed = prune_checkpoints(self.save_dir, self.keep_checkpoints, current=self.total_steps)
        steps = sorted({parse_resume_step_from_filename(p) for p in removed
                        if os.path.basename(p).startswith("model")})
        if removed:
            logger.log(f"removed {len(removed)} files of older checkpoints (steps {steps or 'of leftover files'}; "
                       f"keeping the newest {self.keep_checkpoints})")
        return removed


__all__ = ["Trainer", "parse_ema_rates", "step_seed", "param_digest", "linear_warmup_schedule",
           "linear_anneal_schedule", "logger_dir", "LRSchedule"]
