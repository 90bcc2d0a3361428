"""Registries of methods and datasets, filled by ``@register_method`` / ``@register_dataset``.

Modules under ``methods/`` and ``datasets/`` are imported on first lookup (every module whose
name does not start with ``_``), so adding a method is writing one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """Lookup of a name nobody registered; the message lists the known names."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            entry.registry_name = name  # type: ignore[attr-defined]
            return entry

        return decorate

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._entries.items())


METHODS: Registry = Registry("method", "mtlbench.methods")
DATASETS: Registry = Registry("dataset", "mtlbench.datasets")
register_method = METHODS.register
register_dataset = DATASETS.register
