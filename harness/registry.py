"""Registries of the four things a suite names: methods, datasets, gradient engines, executors.

One :class:`Registry` class serves all four. A name maps either to the object itself (registered
by ``@register_method`` / ``@register_dataset`` / :meth:`Registry.add`) or to a lazy import
target ``"module:attribute"``: the name is known (listed, validated) without importing its
module, which is imported on the first :meth:`Registry.get` of that name. Names come from, in
order:

1. the built-ins: for methods and datasets, a scan of ``mtlbench.methods`` / ``mtlbench.datasets``
   (every module whose name does not start with ``_`` is imported, so adding a method is writing
   one file); for engines and executors, the local ones, declared here as lazy targets;
2. the package entry-point groups ``mtlbench.methods``, ``mtlbench.datasets``,
   ``mtlbench.engines`` and ``mtlbench.executors`` (any installed distribution may declare them;
   mtlbench declares its cluster engines and the ``ray`` executor there, so no harness module
   names a cluster module). Read as names only; re-read when a name is not found;
3. plugin modules (:mod:`mtlbench.harness.plugins`), which register with the decorators.

A name registered twice with different objects is an error. A lazy target that fails to import is
one line (:class:`RegistryImportError`) naming the name, the target and the import error.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """Lookup of a name nobody registered; the message lists the known names."""

    def __str__(self) -> str:
        return str(self.args[0])


class RegistryImportError(ImportError):
    """A lazily registered name whose target cannot be imported (one line: name, target, cause)."""


class DuplicateName(ValueError):
    """One name registered with two different objects (or targets); the message is one line."""


# What a lookup by a user-given name may raise, each with a one-line message
LOOKUP_ERRORS = (UnknownName, RegistryImportError, DuplicateName)


def _load_target(target: str) -> Any:
    """The object at ``"package.module:attribute"`` (attribute may be dotted), imported."""
    module_name, _, attribute = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else []:
        found = getattr(found, part)
    return found


class Registry(Generic[T]):
    """Names of one kind (``method``, ``dataset``, ``engine``, ``executor``) and their objects.

    kind: the word used in messages. package: the package scanned for built-ins on first use
    (None: no scan). entry_point_group: the ``importlib.metadata`` group read for more names
    (None: none). builtins: name -> ``"module:attribute"`` declared in code.
    """

    def __init__(
        self,
        kind: str,
        package: str | None = None,
        entry_point_group: str | None = None,
        builtins: dict[str, str] | None = None,
    ):
        self.kind = kind
        self.package = package
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._targets: dict[str, str] = dict(builtins or {})
        self._unchecked: set[str] = set()  # objects added under a lazy name, not yet compared
        self._scanned = False

    # ---- registering ------------------------------------------------------------------------
    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` registers the class (or function) it wraps
        and sets its ``registry_name`` attribute."""

        def decorate(entry: T) -> T:
            self.add(name, entry)
            entry.registry_name = name  # type: ignore[attr-defined]
            return entry

        return decorate

    def add(self, name: str, entry: T) -> None:
        """Register ``entry`` under ``name``; the same object twice is allowed, another is not.

        A module named by a lazy target may register its own object under that name when it is
        imported (the target is then checked to be that object on the first ``get``).
        """
        if name in self._entries and self._entries[name] is not entry:
            raise DuplicateName(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        if name in self._targets:
            self._unchecked.add(name)

    def add_lazy(self, name: str, target: str) -> None:
        """Register ``name`` as the object at ``target`` (``"module:attribute"``), imported on
        first ``get``. The same target twice is allowed, another is not."""
        if ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: target {target!r} is not 'module:attribute'")
        known = self._targets.get(name)
        if known is not None and known != target:
            raise DuplicateName(f"{self.kind} {name!r} is registered twice ({known}, {target})")
        self._targets[name] = target
        if name in self._entries:
            self._unchecked.add(name)

    def unregister(self, name: str) -> None:
        """Forget ``name`` (its object and its target); for plugins unloaded by tests."""
        self._entries.pop(name, None)
        self._targets.pop(name, None)
        self._unchecked.discard(name)

    # ---- sources ----------------------------------------------------------------------------
    def _scan(self) -> None:
        """The built-in package scan and the entry points, once (see :meth:`refresh`)."""
        if self._scanned:
            return
        self._scanned = True
        if self.package is not None:
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                if not module.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{module.name}")
        self._read_entry_points()

    def _read_entry_points(self) -> None:
        if self.entry_point_group is None:
            return
        for entry_point in importlib.metadata.entry_points(group=self.entry_point_group):
            if self._targets.get(entry_point.name) == entry_point.value:
                continue  # the same declaration seen twice (two copies of one distribution)
            self.add_lazy(entry_point.name, entry_point.value)

    def refresh(self) -> None:
        """Read the entry points again (a distribution installed or put on ``sys.path`` since)."""
        self._scan()
        self._read_entry_points()

    # ---- looking up -------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The object registered under ``name``, importing its target on first use.

        Raises UnknownName (listing the known names), RegistryImportError, or DuplicateName
        (its target is another object than the one registered under that name); one line each.
        """
        self._scan()
        if name not in self._entries and name not in self._targets:
            self._read_entry_points()
        if name in self._targets and (name not in self._entries or name in self._unchecked):
            self._resolve(name)
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return self._entries[name]

    def _resolve(self, name: str) -> None:
        target = self._targets[name]
        try:
            found = _load_target(target)
        except (ImportError, AttributeError) as error:
            cause = " ".join(f"{type(error).__name__}: {error}".split())
            raise RegistryImportError(
                f"{self.kind} {name!r} cannot be imported from {target}: {cause}"
            ) from None
        if name in self._entries and self._entries[name] is not found:
            raise DuplicateName(
                f"{self.kind} {name!r} is registered twice ({target} and "
                f"{getattr(self._entries[name], '__qualname__', self._entries[name])!r})"
            )
        if getattr(found, "registry_name", None) == "":  # a class declared only as a target
            found.registry_name = name
        self._entries[name] = found
        self._unchecked.discard(name)

    def target(self, name: str) -> str | None:
        """The lazy target declared for ``name`` (None: registered as an object)."""
        self._scan()
        return self._targets.get(name)

    def __contains__(self, name: object) -> bool:
        self._scan()
        return name in self._entries or name in self._targets

    def names(self) -> list[str]:
        """Every known name, sorted; imports no lazy target."""
        self._scan()
        return sorted({*self._entries, *self._targets})

    def items(self) -> list[tuple[str, T]]:
        """Every (name, object), sorted by name; imports every lazy target."""
        return [(name, self.get(name)) for name in self.names()]


METHODS: Registry[Any] = Registry("method", "mtlbench.methods", "mtlbench.methods")
DATASETS: Registry[Any] = Registry("dataset", "mtlbench.datasets", "mtlbench.datasets")
# (model, taskset, budget, calibration batch, **engine_options) -> GradientEngine
ENGINES: Registry[Callable[..., Any]] = Registry(
    "engine",
    entry_point_group="mtlbench.engines",
    builtins={
        "loop": "mtlbench.harness.engines.base:GradientEngine",
        "batched": "mtlbench.harness.engines.batched:BatchedEngine",
        "representation": "mtlbench.harness.engines.batched:RepresentationEngine",
    },
)
# (suite: SuiteConfig) -> Executor (see mtlbench.harness.runner)
EXECUTORS: Registry[Callable[..., Any]] = Registry(
    "executor",
    entry_point_group="mtlbench.executors",
    builtins={"local": "mtlbench.harness.runner:local_executor"},
)
# typer command functions the CLI adds as ``mtlbench <name>`` (the cluster's ``submit``)
COMMANDS: Registry[Callable[..., Any]] = Registry("command", entry_point_group="mtlbench.commands")
register_method = METHODS.register
register_dataset = DATASETS.register
