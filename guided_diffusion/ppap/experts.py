"""Timestep experts: which classifier guides which diffusion step, and sets of experts that share weights.

n experts split the T original train indices. Two routing rules decide which expert guides a step t (always an
*original* train index: respaced samplers pass ``diffusion.timestep_map[i]``; guides on another model family
pass the equivalent, possibly fractional, train index of the experts' schedule):

- ``"original"`` (default): PPAP's released sampler (``MultiExpertWrapper.step_to_classifier_index``). With
  edges ``e_i = int(i * T / n)`` it picks the first i with ``e_i <= t <= e_{i+1}``. Evaluated as written for
  any real t, expert 0 owns [e_0, e_1] and expert i > 0 owns (e_i, e_{i+1}], so a boundary step (t = 200 of
  5 experts) goes to the lower expert and a fractional t goes where ceil(t) goes. Released checkpoints
  reproduce the paper's samples only under this rule (with ddim25 the experts 0..4 guide 6/5/5/5/4 steps).
- ``"training"``: the half-open range ``[lo_i, hi_i)`` the expert was trained on (its timesteps are drawn
  t ~ U{lo_i, ..., hi_i - 1}), so t = 200 goes to expert 1 and a fractional t goes where floor(t) goes.

Training ranges use PPAP's trainer's own expression ``lo_i = int(i / n * T)``; for some (T, n) its float
rounding differs from the sampler's ``int(i * T / n)`` (never for T = 1000), and each rule keeps its own.
n need not divide T: the ranges are floored (n = 3 of 1000: [0, 333), [333, 666), [666, 1000)).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..timesteps import NoiseLevel, TimeUnit, TimestepRange, route
from .classifiers import build_classifier, check_state_dict_layout, load_classifier_state_dict
from .classifiers import ppap_trainable_names
from .lora import lora_layers

TimestepLike = Union[int, float, torch.Tensor, NoiseLevel]
ROUTING_RULES = ("original", "training")


def original_edges(n_experts: int, total_steps: int = 1000) -> List[int]:
    """The routing edges of PPAP's sampler: ``[int(i * T / n) for i in 0..n]``."""
    return [int(i * total_steps / n_experts) for i in range(n_experts + 1)]


def training_edges(n_experts: int, total_steps: int = 1000) -> List[int]:
    """The range edges of PPAP's trainer: ``[int(i / n * T) for i in 0..n]`` (its float order of operations)."""
    return [int(i / n_experts * total_steps) for i in range(n_experts + 1)]


def check_routing(routing: str) -> str:
    if routing not in ROUTING_RULES:
        raise ValueError(f"unknown expert routing {routing!r}; choose one of {', '.join(ROUTING_RULES)} "
                         "(original: PPAP's released sampler, boundary steps to the lower expert; training: "
                         "the half-open range each expert was trained on)")
    return routing


class ExpertRanges:
    """The train-index ranges of n timestep experts over ``total_steps`` steps, routed by ``routing``.

    ``ranges`` are the routing ranges (what :meth:`index` tests), ``training_ranges`` the half-open ranges the
    experts are trained on; both are :class:`TimestepRange` in train-index units.
    """

    def __init__(self, n_experts: int, total_steps: int = 1000, routing: str = "original"):
        if isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 1:
            raise ValueError(f"n_experts must be a positive integer, got {n_experts!r}")
        if n_experts > total_steps:
            raise ValueError(f"n_experts={n_experts} is more than the {total_steps} diffusion steps; every "
                             "expert needs at least one step")
        self.n_experts = n_experts
        self.total_steps = total_steps
        self.routing = check_routing(routing)
        lo_hi = training_edges(n_experts, total_steps)
        empty = [i for i in range(n_experts) if lo_hi[i + 1] <= lo_hi[i]]
        if empty:  # float rounding of int(i / n * T) when n is close to T
            raise ValueError(f"n_experts={n_experts} leaves expert(s) {empty} no training step of the "
                             f"{total_steps}; use fewer experts")
        self.training_ranges: List[TimestepRange] = [TimestepRange(lo_hi[i], lo_hi[i + 1], TimeUnit.TRAIN_INDEX)
                                                     for i in range(n_experts)]
        if routing == "training":
            self.ranges: List[TimestepRange] = self.training_ranges
            self._edges = lo_hi
        else:
            e = original_edges(n_experts, total_steps)
            self._edges = e
            self.ranges = [TimestepRange(e[i], e[i + 1], TimeUnit.TRAIN_INDEX, closed="both" if i == 0 else "right")
                           for i in range(n_experts)]

    def __len__(self) -> int:
        return self.n_experts

    @property
    def edges(self) -> List[int]:
        """The routing edges [e_0, ..., e_n], e.g. [0, 200, 400, 600, 800, 1000] for 5 experts."""
        return list(self._edges)

    def indices(self, t: Union[int, float, torch.Tensor, Sequence[int]]) -> torch.Tensor:
        """The expert of every (possibly fractional) original train index in ``t`` (long tensor, flattened)."""
        values = torch.as_tensor(t).reshape(-1)
        out = torch.full(values.shape, -1, dtype=torch.long, device=values.device)
        for i, r in enumerate(self.ranges):
            out[r.contains(values)] = i
        if bool((out < 0).any()):
            bad = values[out < 0].tolist()
            span = f"[0, {self.total_steps}" + ("]" if self.routing == "original" else ")")
            raise ValueError(f"timesteps {bad} are outside {span}: experts take original train indices (map "
                             "respaced steps through diffusion.timestep_map)")
        return out

    def index(self, t: TimestepLike) -> int:
        """The one expert for a batch; every sample of the batch must fall in the same range."""
        if isinstance(t, NoiseLevel):
            return route(t, self.ranges)
        per_sample = self.indices(t)
        if per_sample.numel() == 0:
            raise ValueError("cannot route an empty batch of timesteps")
        first = per_sample[0]
        if bool((per_sample != first).any()):
            values = torch.as_tensor(t).reshape(-1).tolist()
            raise ValueError(f"the batch spans experts {sorted(set(per_sample.tolist()))} (t={values}); "
                             "route samples of different expert ranges separately")
        return int(first)

    def assign(self, timesteps: Iterable[float]) -> Dict[int, List[float]]:
        """{expert: the timesteps it guides, in the given order} (every expert present, maybe empty)."""
        steps = list(timesteps)
        out: Dict[int, List[float]] = {i: [] for i in range(self.n_experts)}
        if steps:
            for t, i in zip(steps, self.indices(torch.as_tensor(steps)).tolist()):
                out[i].append(t)
        return out

    def __repr__(self) -> str:
        return f"ExpertRanges({', '.join(str(r) for r in self.ranges)}; routing={self.routing})"


def unique_storage_bytes(module: nn.Module) -> int:
    """Bytes held by the module's parameters and buffers, counting each shared storage once."""
    seen: Dict[Tuple[str, int], int] = {}
    tensors = [t for _, t in module.named_parameters(remove_duplicate=False)]
    tensors += [t for _, t in module.named_buffers(remove_duplicate=False)]
    for t in tensors:
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def _slot_key(name: str) -> str:
    # Parameter names may not contain "."; "-" keeps the slot keys readable and unambiguous.
    return name.replace(".", "-")


class _ExpertSlot(nn.Module):
    """One expert's private tensors, registered so that .to()/.half() and optimisers see them."""

    def __init__(self, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor]):
        super().__init__()
        for name, value in params.items():
            self.register_parameter(_slot_key(name), nn.Parameter(value.detach().clone()))
        for name, value in buffers.items():
            self.register_buffer(_slot_key(name), value.detach().clone())

    def tensor(self, name: str) -> torch.Tensor:
        key = _slot_key(name)
        return self._parameters[key] if key in self._parameters else self._buffers[key]


class LoRAExpertSet(nn.Module):
    """n PPAP experts sharing one frozen LoRA student.

    Per expert: the PPAP-trainable tensors (LoRA factors, biases, BatchNorm affine) and the BatchNorm running
    statistics and counters (the student trained in train mode, so they differ per expert). Everything else
    is stored once, frozen. :meth:`select` re-points the student's parameter and buffer slots at the chosen
    expert's tensors by reference, so switching copies nothing and optimisers see each expert's own
    Parameter objects. New experts start as copies of the student's current per-expert tensors. ``routing``
    picks the expert of a step (:class:`ExpertRanges`).
    """

    def __init__(self, student: nn.Module, name: Optional[str] = None, n_experts: int = 5,
                 total_steps: int = 1000, per_expert_params: Optional[Sequence[str]] = None,
                 routing: str = "original"):
        super().__init__()
        name = name or getattr(student, "classifier_name", None)
        if name is None and per_expert_params is None:
            raise ValueError("pass the classifier name (or per_expert_params) to know what each expert owns")
        for _, layer in lora_layers(student):
            layer.unmerge()
        self.ranges = ExpertRanges(n_experts, total_steps, routing)
        self.backbone = student
        params = dict(student.named_parameters())
        param_names = list(per_expert_params) if per_expert_params is not None \
            else ppap_trainable_names(student, name)
        unknown = [n for n in param_names if n not in params]
        if unknown:
            raise ValueError(f"per-expert parameters not in the student: {unknown[:5]}")
        buffer_names = [f"{mod_name}.{b}" if mod_name else b for mod_name, m in student.named_modules()
                        if isinstance(m, _BatchNorm) for b, v in m._buffers.items() if v is not None]
        self.per_expert_names: List[str] = param_names + buffer_names
        self._targets = []  # (owning module, leaf name, store name, full name)
        for full in self.per_expert_names:
            owner, _, leaf = full.rpartition(".")
            module = student.get_submodule(owner) if owner else student
            store = "_parameters" if full in params else "_buffers"
            self._targets.append((module, leaf, store, full))
        keep = set(param_names)
        for n, p in params.items():
            p.requires_grad_(n in keep)
        buffers = dict(student.named_buffers())
        per_params = {n: params[n] for n in param_names}
        per_buffers = {n: buffers[n] for n in buffer_names}
        self.experts = nn.ModuleList(_ExpertSlot(per_params, per_buffers) for _ in range(n_experts))
        self.active = -1
        self.select(0)

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def select(self, index: int) -> None:
        """Make expert ``index`` the one the backbone computes with (no tensor is copied)."""
        if not 0 <= index < self.n_experts:
            raise IndexError(f"expert {index} out of range for {self.n_experts} experts")
        if index == self.active:
            return
        # A merged weight folds in the old expert's delta: restore it, switch, fold in the new one.
        merged = [layer for _, layer in lora_layers(self.backbone) if layer.merged]
        for layer in merged:
            layer.unmerge()
        slot = self.experts[index]
        for module, leaf, store, full in self._targets:
            getattr(module, store)[leaf] = slot.tensor(full)
        for layer in merged:
            layer.merge()
        self.active = index

    def _apply(self, fn, recurse=True):
        # Detach the aliases first so that fn reaches each per-expert tensor once (through its slot), then
        # point the backbone at the converted slot tensors again.
        active = self.active
        for module, leaf, store, _ in self._targets:
            getattr(module, store)[leaf] = None
        self.active = -1
        try:
            return super()._apply(fn, recurse)
        finally:
            self.select(max(active, 0))

    def expert_index(self, t: TimestepLike) -> int:
        return self.ranges.index(t)

    def forward(self, x: torch.Tensor, t: TimestepLike) -> torch.Tensor:
        """Logits of the expert that guides original train index t (one expert per batch)."""
        self.select(self.ranges.index(t))
        return self.backbone(x)

    def expert_state_dict(self, index: int) -> Dict[str, torch.Tensor]:
        """Expert ``index`` as a full checkpoint in the released layout (tensors shared, not copied)."""
        slot = self.experts[index]
        per = set(self.per_expert_names)
        shared = self.backbone.state_dict()
        return {k: (slot.tensor(k).detach() if k in per else v) for k, v in shared.items()}

    @torch.no_grad()
    def copy_expert(self, src: int, dst: int) -> None:
        """Initialise expert ``dst`` from expert ``src`` (PPAP trains expert i starting from expert i-1)."""
        for name in self.per_expert_names:
            self.experts[dst].tensor(name).copy_(self.experts[src].tensor(name))

    @torch.no_grad()
    def load_expert_state_dicts(self, state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Load n released per-expert checkpoints (full state dicts of the student) strictly.

        The frozen part must be bitwise identical in all of them, since it is stored once; otherwise these
        are not PPAP experts of one backbone (use :class:`FullExpertSet`).
        """
        if len(state_dicts) != self.n_experts:
            raise ValueError(f"got {len(state_dicts)} expert checkpoints for {self.n_experts} experts")
        for i, sd in enumerate(state_dicts):
            check_state_dict_layout(self.backbone, sd, what=f"expert {i} checkpoint")
        per = set(self.per_expert_names)
        frozen = [k for k in self.backbone.state_dict() if k not in per]
        for i, sd in enumerate(state_dicts[1:], start=1):
            for k in frozen:
                if not torch.equal(sd[k].cpu(), state_dicts[0][k].cpu()):
                    raise ValueError(f"frozen tensor {k!r} differs between expert 0 and expert {i}; a LoRA "
                                     "expert set shares it (load full per-expert classifiers with "
                                     "FullExpertSet)")
        merged = [layer for _, layer in lora_layers(self.backbone) if layer.merged]
        for layer in merged:
            layer.unmerge()
        current = self.backbone.state_dict()
        for k in frozen:
            current[k].copy_(state_dicts[0][k])
        for i, sd in enumerate(state_dicts):
            for k in self.per_expert_names:
                self.experts[i].tensor(k).copy_(sd[k])
        for layer in merged:
            layer.merge()


class FullExpertSet(nn.Module):
    """n complete classifiers, one per range (PPAP's finetune (n=1) and multi_experts methods), routed by
    ``routing`` (:class:`ExpertRanges`)."""

    def __init__(self, models: Sequence[nn.Module], total_steps: int = 1000, routing: str = "original"):
        super().__init__()
        self.ranges = ExpertRanges(len(models), total_steps, routing)
        self.experts = nn.ModuleList(models)

    @classmethod
    def build(cls, name: str, n_experts: int = 5, total_steps: int = 1000, num_classes: int = 1000,
              routing: str = "original") -> "FullExpertSet":
        """n freshly built off-the-shelf classifiers (load weights with :meth:`load_expert_state_dicts`)."""
        ExpertRanges(n_experts, total_steps, routing)  # fail before building n networks
        return cls([build_classifier(name, num_classes=num_classes) for _ in range(n_experts)], total_steps,
                   routing)

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def expert_index(self, t: TimestepLike) -> int:
        return self.ranges.index(t)

    def forward(self, x: torch.Tensor, t: TimestepLike) -> torch.Tensor:
        return self.experts[self.ranges.index(t)](x)

    def load_expert_state_dicts(self, state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Strictly load one checkpoint per expert (finetune/multi_experts layout)."""
        if len(state_dicts) != self.n_experts:
            raise ValueError(f"got {len(state_dicts)} expert checkpoints for {self.n_experts} experts")
        for i, (model, sd) in enumerate(zip(self.experts, state_dicts)):
            load_classifier_state_dict(model, sd, what=f"expert {i} checkpoint")
