"""Weight-space ensembles: M members of one architecture, run at θ(α) = Σ_m α_m θ_m.

The building block of Pareto Manifold Learning (Dimitriadis, Frossard & Fleuret, ICML 2023,
Sec. 3): every parameter of a model (weights, biases, normalization affine parameters, heads
included) exists M times, once per member, and the network computes with the convex combination
of the members' values at a point α of the simplex.

Generic by construction: the members' parameters are stacked ``(M, *shape)`` and the model's own
modules are run by :func:`torch.func.functional_call` with the combined tensors, so any
architecture works (conv, linear, normalization, stacked heads held as plain parameters), with no
per-layer rewrite. The combination is element-wise (FlopCounterMode does not count it, like other
element-wise work): O(M·P) per forward, against O(B·P) and more for the model itself.

Members start apart, as the paper's independently trained members do: :meth:`EnsembleModel.
reinitialised` keeps the model as member 0 and re-draws the others by every module's
``reset_parameters()``; a parameter that no module can reset (a custom module's, an analytic
problem's decision vector) is re-drawn uniformly between its own smallest and largest entry, so
a constant initialisation is copied and a random one gets a fresh draw in its range
(:func:`reinitialised_copy` states the rule). No model is refused; parts with no parameters
(parameter-free heads) are stacked as empty parts.

Buffers are *not* interpolated: the architecture's template (a copy of member 0 whose parameter
slots are emptied) keeps one set, so a BatchNorm layer has one running mean/variance updated by
every α seen in training, as in the paper's code. :meth:`EnsembleModel.recalibrated_buffers`
re-estimates them for one α on given batches (``torch.optim.swa_utils.update_bn``), without
touching the shared ones.

The :class:`EnsembleModel` is a :class:`MultiTaskModel`: its ``encoder`` and ``heads`` each
evaluate their part at the current α (:meth:`EnsembleModel.set_alpha`), so the gradient engines
(encoder, then heads on a detached representation) work on it unchanged, and their gradients land
on the stacked member parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import Outputs
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

Buffers = dict[str, Tensor]
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def reinitialised_copy(module: ModuleT) -> ModuleT:
    """A deep copy of ``module`` with every parameter drawn afresh (global torch RNG).

    The rule, per parameter:

    1. its owner, or an ancestor module, has ``reset_parameters()`` (every torch layer and
       :class:`StackedMLPHeads` do): that method draws it, as the architecture intends;
    2. otherwise (a custom module holding, say, an ``nn.Parameter(torch.randn(d))`` or a
       decision vector): each entry is drawn uniformly between the smallest and the largest
       entry of the original tensor. A random initialisation thus gets an independent draw over
       the same range, which keeps any sign or box constraint the values obey; a constant one
       (zeros, ones, a one-element tensor) is copied unchanged, as torch's own resets of
       normalization layers copy their constants.

    :func:`parameters_without_reset` names the parameters that rule 2 covers. Modules with no
    parameters at all need nothing. For an initialisation neither rule captures, build the
    ensemble with :meth:`EnsembleModel.from_builder`.
    """
    fresh = copy.deepcopy(module)
    unresettable = set(parameters_without_reset(fresh))
    for submodule in fresh.modules():
        reset = getattr(submodule, "reset_parameters", None)
        if callable(reset):
            reset()
    with torch.no_grad():
        for name, parameter in fresh.named_parameters():
            if name in unresettable and parameter.numel() > 0:
                low, high = parameter.min(), parameter.max()
                parameter.copy_(low + (high - low) * torch.rand_like(parameter))
    return fresh


def parameters_without_reset(module: nn.Module) -> list[str]:
    """Names of the parameters of ``module`` whose owner and ancestors all lack a callable
    ``reset_parameters`` (the ones :func:`reinitialised_copy` redraws by its range rule)."""
    resettable = {
        name
        for name, submodule in module.named_modules()
        if callable(getattr(submodule, "reset_parameters", None))
    }
    found: list[str] = []
    for name, submodule in module.named_modules():
        parts = name.split(".") if name else []
        ancestry = {".".join(parts[:depth]) for depth in range(len(parts) + 1)}
        if resettable.isdisjoint(ancestry):
            prefix = f"{name}." if name else ""
            found.extend(
                prefix + slot for slot, value in submodule._parameters.items() if value is not None
            )
    return found


def _parameter_key(name: str) -> str:
    """A parameter name as a ParameterDict key (module names cannot contain dots)."""
    return name.replace(".", "/")


class EnsembleMembers(nn.Module):
    """One part (an encoder or the heads) of an ensemble of M members.

    members: ParameterDict, one ``(M, *shape)`` parameter per parameter of the part.
    template: the architecture (a deep copy of ``parts[0]`` whose parameter slots are None); it
        holds the buffers, shared by every α.
    alpha: (M,) the current point of the simplex (non-persistent buffer, replaced, never
        modified in place, so graphs built at an earlier α stay valid).
    """

    alpha: Tensor  # the registered buffer, for a type checker

    def __init__(self, parts: Sequence[nn.Module]):
        super().__init__()
        if not parts:
            raise ValueError("an ensemble needs at least one member")
        reference = dict(parts[0].named_parameters())
        # aliases: every name a (possibly tied) parameter is reachable under -> its canonical name
        canonical = {id(p): name for name, p in reference.items()}
        self.aliases = {
            name: canonical[id(p)] for name, p in parts[0].named_parameters(remove_duplicate=False)
        }
        stacked: dict[str, list[Tensor]] = {}
        for index, part in enumerate(parts):
            own = dict(part.named_parameters())
            if {n: tuple(p.shape) for n, p in own.items()} != {
                n: tuple(p.shape) for n, p in reference.items()
            }:
                raise ValueError(
                    f"member {index} does not have member 0's parameter names and shapes"
                )
            for name in reference:
                stacked.setdefault(name, []).append(own[name].detach())
        self.names = list(reference)
        self.members = nn.ParameterDict(
            {
                _parameter_key(name): nn.Parameter(
                    torch.stack(values).clone(), requires_grad=reference[name].requires_grad
                )
                for name, values in stacked.items()
            }
        )
        if len(set(self.members)) != len(self.names):
            raise ValueError("two parameter names map to the same key; rename one")
        self.template = copy.deepcopy(parts[0])
        for submodule in self.template.modules():
            for slot in list(submodule._parameters):
                submodule._parameters[slot] = None
        self.num_members = len(parts)
        first = next(iter(self.members.values()), None)
        dtype = first.dtype if first is not None else torch.get_default_dtype()
        device = first.device if first is not None else None  # the members' device (CUDA too)
        self.register_buffer(
            "alpha",
            torch.full((len(parts),), 1.0 / len(parts), dtype=dtype, device=device),
            persistent=False,
        )

    def stacked(self, name: str) -> nn.Parameter:
        """The ``(M, *shape)`` parameter holding every member's value of ``name``."""
        return self.members[_parameter_key(name)]

    def combined(self, alpha: Tensor | None = None) -> dict[str, Tensor]:
        """θ(α) for every parameter name (aliases included): Σ_m α_m θ_m, element-wise."""
        alpha = self.alpha if alpha is None else alpha
        values = {}
        for name in self.names:
            stacked = self.stacked(name)
            weights = alpha.to(stacked).view(-1, *([1] * (stacked.dim() - 1)))
            values[name] = (weights * stacked).sum(dim=0)
        return {alias: values[name] for alias, name in self.aliases.items()}

    def forward(
        self,
        *args: Any,
        alpha: Tensor | None = None,
        buffers: Buffers | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the template at θ(α) (default: the current α); ``buffers`` (names relative to
        the template) replace the shared buffers for this call only."""
        tensors = self.combined(alpha)
        if buffers:
            tensors.update(buffers)
        return functional_call(self.template, tensors, args, kwargs, tie_weights=False)


class EnsembleModel(MultiTaskModel):
    """A :class:`MultiTaskModel` whose every parameter exists ``num_members`` times.

    ``encoder`` / ``heads`` are :class:`EnsembleMembers`; ``shared_parameters()`` are the
    stacked encoder members ``(M, *shape)`` each, ``task_parameters()`` the stacked heads.
    Build it from ready members, from one model re-initialised M − 1 times
    (:meth:`reinitialised`), or from a builder called M times (:meth:`from_builder`).
    """

    encoder: EnsembleMembers
    heads: EnsembleMembers

    def __init__(self, members: Sequence[MultiTaskModel]):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        encoder = EnsembleMembers([m.encoder for m in members])
        heads = EnsembleMembers([m.heads for m in members])
        super().__init__(encoder, heads, members[0].num_tasks)
        self.num_members = len(members)

    @classmethod
    def reinitialised(cls, model: MultiTaskModel, num_members: int) -> EnsembleModel:
        """Member 0 is ``model``'s current weights; members 1.. are fresh initialisations."""
        if num_members < 1:
            raise ValueError(f"num_members must be >= 1, got {num_members}")
        others = [reinitialised_copy(model) for _ in range(num_members - 1)]
        return cls([model, *others])

    @classmethod
    def from_builder(cls, build: Callable[[], MultiTaskModel], num_members: int) -> EnsembleModel:
        """Members from ``num_members`` calls of ``build`` (each a fresh initialisation)."""
        return cls([build() for _ in range(num_members)])

    # ---- α ------------------------------------------------------------------------------------
    @property
    def alpha(self) -> Tensor:
        return self.encoder.alpha

    def _as_alpha(self, alpha: Tensor | Sequence[float]) -> Tensor:
        reference = self.encoder.alpha
        alpha = torch.as_tensor(alpha, dtype=reference.dtype, device=reference.device)
        if alpha.shape != (self.num_members,):
            raise ValueError(
                f"alpha must have shape ({self.num_members},), got {tuple(alpha.shape)}"
            )
        return alpha

    def set_alpha(self, alpha: Tensor | Sequence[float]) -> None:
        """Make later calls of ``encoder``/``heads``/``forward`` compute at θ(α). alpha: (M,)."""
        alpha = self._as_alpha(alpha)
        self.encoder.alpha = alpha
        self.heads.alpha = alpha

    # ---- computing --------------------------------------------------------------------------
    def forward(
        self, x: Tensor, alpha: Tensor | None = None, buffers: Buffers | None = None
    ) -> Outputs:
        """outputs at θ(α) (default: current α). buffers: full names (``encoder.template...``)."""
        alpha = None if alpha is None else self._as_alpha(alpha)
        encoder_buffers, heads_buffers = _split_buffers(buffers)
        z = self.encoder(x, alpha=alpha, buffers=encoder_buffers)
        return self.heads(z, alpha=alpha, buffers=heads_buffers)

    def at(self, alpha: Tensor | Sequence[float], buffers: Buffers | None = None) -> AlphaView:
        """A module computing this ensemble at a fixed α (and, optionally, its own buffers)."""
        return AlphaView(self, self._as_alpha(alpha).clone(), buffers)

    def member_parameters(self, index: int) -> dict[str, Tensor]:
        """Member ``index``'s parameters under the base model's names (views, no copy)."""
        values = {}
        for prefix, part in (("encoder", self.encoder), ("heads", self.heads)):
            for name in part.names:
                values[f"{prefix}.{name}"] = part.stacked(name)[index]
        return values

    # ---- normalization statistics -----------------------------------------------------------
    def normalization_buffers(self) -> Buffers:
        """The shared buffers of every BatchNorm layer, by full name."""
        found = {}
        for module_name, module in self.named_modules():
            if isinstance(module, _BatchNorm):
                for buffer_name, buffer in module.named_buffers(recurse=False):
                    found[f"{module_name}.{buffer_name}"] = buffer
        return found

    @torch.no_grad()
    def recalibrated_buffers(self, alpha: Tensor | Sequence[float], batches: Iterable) -> Buffers:
        """BatchNorm statistics re-estimated at θ(α) on ``batches`` (inputs or (inputs, ...)).

        Uses ``torch.optim.swa_utils.update_bn`` (cumulative average over the batches, train
        mode); the shared statistics and the RNG state are left as they were. Returns copies,
        keyed by full name (pass them to :meth:`at`); empty if the model has no BatchNorm.
        """
        shared = self.normalization_buffers()
        if not shared:
            return {}
        saved = {name: buffer.clone() for name, buffer in shared.items()}
        device = self.alpha.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            update_bn(batches, self.at(alpha))
        estimated = {name: buffer.clone() for name, buffer in shared.items()}
        for name, buffer in shared.items():
            buffer.copy_(saved[name])
        return estimated


class AlphaView(nn.Module):
    """The ensemble at one fixed α: ``view(x)`` = ``ensemble(x, alpha, buffers)``.

    The ensemble is a registered child, so ``view.eval()`` switches it (dropout, BatchNorm) too.
    buffers: replacement BatchNorm statistics for this α (from ``recalibrated_buffers``), or None
    for the shared ones.
    """

    def __init__(self, ensemble: EnsembleModel, alpha: Tensor, buffers: Buffers | None = None):
        super().__init__()
        self.ensemble = ensemble
        self.register_buffer("alpha", alpha, persistent=False)
        self.buffers_at_alpha = dict(buffers) if buffers else None

    def forward(self, x: Tensor) -> Outputs:
        return self.ensemble(x, alpha=self.alpha, buffers=self.buffers_at_alpha)


def _split_buffers(buffers: Buffers | None) -> tuple[Buffers | None, Buffers | None]:
    """Full buffer names -> (encoder template names, heads template names)."""
    if not buffers:
        return None, None
    parts: dict[str, Buffers] = {"encoder": {}, "heads": {}}
    for name, value in buffers.items():
        part, _, rest = name.partition(".")
        if part not in parts or not rest.startswith("template."):
            raise KeyError(f"buffer {name!r} is not an ensemble template buffer")
        parts[part][rest.removeprefix("template.")] = value
    return parts["encoder"] or None, parts["heads"] or None
