"""Feature injection: record a network's activations at named hook points during one sampling pass, and
replace the same activations in another pass (Plug-and-Play diffusion features, prompt-to-prompt style edits).

Hook points are :class:`~guided_diffusion.nn.HookPoint` modules placed in the networks (the ADM UNet has one
at every ResBlock output, ``...hook_out``, and on the queries, keys and values of every attention,
``...attention.hook_q`` / ``hook_k`` / ``hook_v``; ``guided_diffusion.nn.hook_points(net)`` lists them).
Activations are keyed by (hook, time of the level in its own unit), so the recorded and the injecting pass
must walk the same trajectory. Each hook injects only while the level lies in its own TimestepRange (any unit:
PnP's thresholds are fractions of the sampling steps).
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..denoisers import DenoiserWrapper, Prediction
from ..nn import HookPoint, hook_points
from ..timesteps import NoiseLevel, TimestepRange

HookSpec = Union[Sequence[str], Mapping[str, Optional[TimestepRange]]]


class FeatureInjection(DenoiserWrapper):
    """Records or replaces activations at named hook points of ``inner.network``.

    :param hooks: hook names, or {hook name: the TimestepRange in which it injects (None: always)}.

    Off by default (a plain pass-through); ``with inj.recording():`` stores every hook's output at every
    level the sampler visits, ``with inj.injecting():`` returns the stored output instead, at levels inside
    the hook's range (other levels run normally). A stored batch of B is repeated to fill a batch of k * B (the
    doubled batch of classifier-free guidance).
    """

    def __init__(self, inner, hooks: HookSpec, *, network: Optional[nn.Module] = None):
        super().__init__(inner)
        net = network if network is not None else inner.network
        if net is None:
            raise ValueError("feature injection needs the network: the denoiser wraps none (pass network=)")
        ranges = dict(hooks) if isinstance(hooks, Mapping) else {name: None for name in hooks}
        if not ranges:
            raise ValueError("name at least one hook point")
        modules = dict(net.named_modules())
        unknown = [h for h in ranges if not isinstance(modules.get(h), HookPoint)]
        if unknown:
            available = hook_points(net)
            raise ValueError(f"not hook points of {type(net).__name__}: {', '.join(unknown)}; it has "
                             f"{len(available)}, e.g. {', '.join(available[:4])}")
        self.ranges: Dict[str, Optional[TimestepRange]] = ranges
        self.modules = {name: modules[name] for name in ranges}
        self.store: Dict[Tuple[str, float], torch.Tensor] = {}
        self.mode = "off"

    @contextlib.contextmanager
    def _mode(self, mode: str) -> Iterator["FeatureInjection"]:
        previous, self.mode = self.mode, mode
        try:
            yield self
        finally:
            self.mode = previous

    def recording(self):
        """Context in which every call stores the hooks' outputs (replacing earlier records of a level)."""
        return self._mode("record")

    def injecting(self):
        """Context in which calls inside each hook's range use the stored outputs."""
        return self._mode("inject")

    def clear(self) -> None:
        self.store.clear()

    @staticmethod
    def _key(level: NoiseLevel) -> float:
        times = level.t
        if bool((times != times[0]).any()):
            raise ValueError("feature injection needs every sample of the batch at the same level")
        return float(times[0])

    def _record_hook(self, name: str, key: float):
        def hook(module, inputs, output):
            self.store[(name, key)] = output.detach().clone()
        return hook

    def _inject_hook(self, name: str, key: float):
        stored = self.store[(name, key)]

        def hook(module, inputs, output):
            if output.shape[1:] != stored.shape[1:] or output.shape[0] % stored.shape[0]:
                raise ValueError(f"hook {name}: recorded {tuple(stored.shape)} cannot replace {tuple(output.shape)}")
            reps = output.shape[0] // stored.shape[0]
            return stored.to(output.dtype).repeat(reps, *([1] * (stored.ndim - 1)))
        return hook

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> Prediction:
        if self.mode == "off":
            return self.inner(x, level, **model_kwargs)
        key = self._key(level)
        handles = []
        for name, module in self.modules.items():
            if self.mode == "record":
                handles.append(module.register_forward_hook(self._record_hook(name, key)))
            else:
                active = self.ranges[name]
                if active is not None and not bool(active.contains(level).all()):
                    continue
                if (name, key) not in self.store:
                    raise ValueError(f"nothing recorded for hook {name} at t={key} ({level.unit.value}): record a "
                                     "pass over the same trajectory first")
                handles.append(module.register_forward_hook(self._inject_hook(name, key)))
        try:
            return self.inner(x, level, **model_kwargs)
        finally:
            for handle in handles:
                handle.remove()


__all__ = ["FeatureInjection"]
