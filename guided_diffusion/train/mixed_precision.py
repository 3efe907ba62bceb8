"""fp32 master weights for fp16 training with dynamic loss scaling (ADM's scheme), and bf16 autocast.

fp16 (``use_fp16``): the model's torso runs in float16 (``convert_to_fp16``); the optimizer steps fp32
master copies. The loss is multiplied by 2^lg_loss_scale before backward; a step whose gradient norm is
inf/NaN is skipped and the scale halves, otherwise every gradient is unscaled, the masters step, and the
scale grows by ``fp16_scale_growth`` (in log2 units) per step.
bf16 (``use_bf16``): parameters stay fp32 and the forward pass runs under ``torch.autocast(bfloat16)``;
bf16 has fp32's range, so no loss scaling is needed.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import List

import torch
import torch.nn as nn

from .. import logger

INITIAL_LOG_LOSS_SCALE = 20.0


class MixedPrecisionTrainer:
    def __init__(self, *, model: nn.Module, use_fp16: bool = False, use_bf16: bool = False,
                 fp16_scale_growth: float = 1e-3, initial_lg_loss_scale: float = INITIAL_LOG_LOSS_SCALE):
        if use_fp16 and use_bf16:
            raise ValueError("choose one of --use_fp16 True and --use_bf16 True, not both")
        self.model, self.use_fp16, self.use_bf16 = model, use_fp16, use_bf16
        self.fp16_scale_growth = fp16_scale_growth
        self.param_names = [n for n, _ in model.named_parameters()]
        self.model_params: List[nn.Parameter] = list(model.parameters())
        self.master_params = self.model_params
        self.lg_loss_scale = initial_lg_loss_scale
        if use_fp16:
            if not hasattr(model, "convert_to_fp16"):
                raise ValueError(f"{type(model).__name__} has no convert_to_fp16(); train it with --use_bf16 True")
            self.master_params = [p.detach().clone().float().requires_grad_(True) for p in self.model_params]
            model.convert_to_fp16()

    def autocast(self):
        """The context the forward pass runs in (bf16 autocast, or nothing)."""
        if not self.use_bf16:
            return contextlib.nullcontext()
        device_type = self.model_params[0].device.type
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)

    def zero_grad(self) -> None:
        for p in self.model_params:
            p.grad = None

    def backward(self, loss: torch.Tensor) -> None:
        if self.use_fp16:
            (loss * 2 ** self.lg_loss_scale).backward()
        else:
            loss.backward()

    def optimize(self, opt: torch.optim.Optimizer) -> bool:
        """Step ``opt`` over the master params; False when an fp16 overflow made it skip the step."""
        return self._optimize_fp16(opt) if self.use_fp16 else self._optimize_normal(opt)

    def _optimize_fp16(self, opt) -> bool:
        for master, p in zip(self.master_params, self.model_params):
            master.grad = torch.zeros_like(master) if p.grad is None else p.grad.detach().float()
        scale = 2 ** self.lg_loss_scale
        grad_norm, param_norm = self._norms(grad_scale=scale)
        logger.logkv_mean("lg_loss_scale", self.lg_loss_scale)
        if not torch.isfinite(torch.tensor(grad_norm)):
            self.lg_loss_scale -= 1
            logger.log(f"found NaN/inf gradients; lowering the loss scale to 2^{self.lg_loss_scale:.3f}")
            self.zero_grad()
            for master in self.master_params:
                master.grad = None
            return False
        logger.logkv_mean("grad_norm", grad_norm)
        logger.logkv_mean("param_norm", param_norm)
        for master in self.master_params:  # every gradient is unscaled, not only the first group's
            master.grad.mul_(1.0 / scale)
        opt.step()
        self.zero_grad()
        with torch.no_grad():
            for master, p in zip(self.master_params, self.model_params):
                p.copy_(master)
        self.lg_loss_scale += self.fp16_scale_growth
        return True

    def _optimize_normal(self, opt) -> bool:
        grad_norm, param_norm = self._norms()
        logger.logkv_mean("grad_norm", grad_norm)
        logger.logkv_mean("param_norm", param_norm)
        opt.step()
        return True

    def _norms(self, grad_scale: float = 1.0):
        grad_sq = param_sq = 0.0
        with torch.no_grad():
            for p in self.master_params:
                param_sq += float(torch.linalg.vector_norm(p, dtype=torch.float32) ** 2)
                if p.grad is not None:
                    grad_sq += float(torch.linalg.vector_norm(p.grad, dtype=torch.float32) ** 2)
        return grad_sq ** 0.5 / grad_scale, param_sq ** 0.5

    def master_params_to_state_dict(self, master_params: List[torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        """A model state dict (fp32, buffers included) with ``master_params`` in place of the parameters."""
        state = self.model.state_dict()
        for name, value in zip(self.param_names, master_params):
            state[name] = value.detach().float().clone()
        return state

    def state_dict_to_master_params(self, state_dict) -> List[torch.Tensor]:
        return [state_dict[name].float() for name in self.param_names]


__all__ = ["MixedPrecisionTrainer", "INITIAL_LOG_LOSS_SCALE"]
