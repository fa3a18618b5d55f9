"""One walk over a network's layer list, with a type -> rule map (as NIRTorch's
``DEFAULT_MAP`` and our ``export.from_nir.CONVERT``).

The walker goes over the layers in order and hands each one to the rule its
type maps to; the rules say what the walk makes (NIR nodes, hwsim ops, QAT
sites). It does what every such walk needs, once:

* a synapse (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``) is paired with the
  ``TDBatchNorm`` right after it, which the walker consumes (``Step.folded``
  folds it with ``TDBatchNorm.fold_into``), and with the LIF it drives: the
  first LIF after it in the same list, unless a layer holding another synapse
  comes first (``None``: the readout, or the end of a residual body);
* a type with no rule (looked up along the type's MRO, so subclasses inherit
  their base's rule) is refused with an ExportError naming the layer, its type
  and the fix;
* nothing recurses by itself: a rule that wants to go inside a container
  (``ResidualBlock``) calls ``step.walk_inside("body", state)``.

The caller's map is merged over ``DEFAULT_RULES``, so it can add and override
entries. A rule is ``(step, state) -> result``; ``walk`` returns the results
in layer order, ``None`` dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from ..core.layers import LIF, TDBatchNorm
from ..errors import ExportError

SYNAPSES = (nn.Linear, nn.Conv1d, nn.Conv2d)

Rule = Callable[["Step", Any], Any]


def fold_synapse(synapse: nn.Module, bn: TDBatchNorm | None, dtype: torch.dtype | None = None,
                 detach: bool = True) -> tuple[Tensor, Tensor | None]:
    """``(W', b')`` of ``synapse`` with ``bn`` (eval) folded in: ``BN(W x + b) = W' x + b'``.

    ``detach``: copies independent of the module (exporters, hwsim); ``False``
    keeps weight, bias and BN parameters in the autograd graph (QAT).
    ``dtype``: convert before folding (the exporters fold in float64).
    The bias stays ``None`` only without BN and without a bias.
    """
    w, b = synapse.weight, synapse.bias
    if detach:
        w, b = w.detach().clone(), (b.detach().clone() if b is not None else None)
    if dtype is not None:
        w, b = w.to(dtype), (b.to(dtype) if b is not None else None)
    if bn is None:
        return w, b
    return bn.fold_into(w, b, detach=detach)


@dataclass(frozen=True)
class _Walk:
    rules: Mapping[type, Rule]
    rules_name: str

    def rule_for(self, module: nn.Module) -> Rule | None:
        return next((self.rules[t] for t in type(module).__mro__ if t in self.rules), None)

    def run(self, layers: Iterable[nn.Module], state: Any, prefix: str) -> list:
        results = []
        for step in _steps(list(layers), prefix, self):
            rule = self.rule_for(step.module)
            if rule is None:
                raise step.unsupported()
            result = rule(step, state)
            if result is not None:
                results.append(result)
        return results


@dataclass(frozen=True)
class Step:
    """One layer as a rule sees it; a synapse comes with its tdBN and neuron."""

    name: str                         # module path: "layers.3", "layers.5.body.0"
    index: int                        # position in its list
    module: nn.Module
    bn: TDBatchNorm | None = None     # synapses: the tdBN right after, consumed by the walk
    neuron: LIF | None = None         # synapses: the LIF they drive (see module docstring)
    walker: _Walk | None = field(default=None, repr=False, compare=False)

    @property
    def where(self) -> str:
        """How error messages name the layer: ``layer 3 (layers.3, Pool)``."""
        return f"layer {self.index} ({self.name}, {type(self.module).__name__})"

    def folded(self, dtype: torch.dtype | None = None, detach: bool = True) -> tuple[Tensor, Tensor | None]:
        """The synapse's weight and bias with its tdBN folded in (``fold_synapse``)."""
        return fold_synapse(self.module, self.bn, dtype, detach)

    def walk_inside(self, part: str, state: Any) -> list:
        """Walk the layer list ``module.<part>`` (e.g. a residual body) with the same rules."""
        return self.walker.run(getattr(self.module, part), state, f"{self.name}.{part}.")

    def unsupported(self, note: str = "") -> ExportError:
        """The refusal for a layer the walk's rules cannot handle, naming layer, type and fix;
        ``note`` adds what else the rules accept."""
        kind = type(self.module).__name__
        rules, home = (self.walker.rules, self.walker.rules_name) if self.walker else ({}, "the layer map")
        known = ", ".join(sorted({t.__name__ for t in rules if t is not nn.Module}))
        note = f"; {note}" if note else ""
        return ExportError(f"{self.where}: {home} has no rule for {kind} (it handles {known}{note}); "
                           f"replace the layer with one of those, or add a rule for {kind} to {home}")


def _holds_synapse(module: nn.Module) -> bool:
    return any(isinstance(m, SYNAPSES) for m in module.modules())


def _driven_neuron(layers: list[nn.Module], start: int) -> LIF | None:
    for m in layers[start:]:
        if isinstance(m, LIF):
            return m
        if _holds_synapse(m):
            return None
    return None


def _steps(layers: list[nn.Module], prefix: str, walker: _Walk) -> Iterator[Step]:
    i = 0
    while i < len(layers):
        m, name = layers[i], f"{prefix}{i}"
        if isinstance(m, SYNAPSES):
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            bn = nxt if isinstance(nxt, TDBatchNorm) else None
            yield Step(name, i, m, bn, _driven_neuron(layers, i + 1), walker)
            i += 2 if bn is not None else 1
        else:
            yield Step(name, i, m, walker=walker)
            i += 1


def skip(step: Step, state: Any) -> None:
    """The rule for a layer that changes nothing in the walk's result."""
    return None


def _unfoldable_bn(step: Step, state: Any) -> None:
    raise ExportError(f"{step.where}: tdBN does not directly follow a Linear/Conv layer, so it cannot "
                      "be folded into weights; put the tdBN right after its synapse")


# Rules every walk shares; a caller's map is merged over them.
DEFAULT_RULES: dict[type, Rule] = {
    nn.Identity: skip,
    TDBatchNorm: _unfoldable_bn,   # a tdBN right after a synapse never reaches a rule
}


def walk(layers: Iterable[nn.Module], rules: Mapping[type, Rule], state: Any = None, *,
         rules_name: str = "the layer map", prefix: str = "layers.") -> list:
    """Apply ``{**DEFAULT_RULES, **rules}`` to ``layers`` in order (module docstring).

    ``state`` is passed to every rule (what the walk builds up); ``rules_name``
    names the caller's map in refusals; ``prefix`` + index names each layer,
    as ``named_modules`` does for ``SpikingNetwork.layers``.
    Returns the rules' results in layer order, ``None`` dropped.
    """
    return _Walk({**DEFAULT_RULES, **rules}, rules_name).run(layers, state, prefix)
