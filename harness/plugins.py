"""Plugins: a user's own modules that register methods, datasets, engines or executors.

A suite's top-level ``plugins: [my_methods, lab.datasets]`` and ``mtlbench run --plugin MODULE``
(repeatable; also on ``status``, ``scale`` and ``info``) name modules that are imported before the
suite is validated, so what they register with ``@register_method`` / ``@register_dataset`` (or
``register_engine``) is known by name like a built-in. A module name is looked up, in order, in
the suite file's folder, the current working directory, then ``sys.path``; those two folders are
added to the front of ``sys.path`` (and stay there, for what the plugin imports later).

On the Ray executor each worker imports the same plugins before it looks a name up:
:func:`plugin_sources` says where each module was found (the ``sys.path`` folder holding it), and
:func:`import_on_worker` puts those folders on the worker's ``sys.path`` and imports the modules.
On a multi-node cluster the folder must exist on every node (a shared filesystem, or the
project shipped as the job's working dir by ``mtlbench submit``).

Plugins are not part of a run's hash: a plugin method's name is in every row, as a built-in's is,
and neither's code is hashed (the package version is recorded with the run).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


class PluginError(ValueError):
    """A plugin module that cannot be found or imported; the message is one line."""


@dataclass(frozen=True)
class PluginSource:
    """A plugin module and the ``sys.path`` folder it was imported from ("" if none)."""

    module: str
    folder: str


def _search_folders(suite_folder: Path | None) -> list[str]:
    folders = [Path.cwd()]
    if suite_folder is not None:
        folders.insert(0, Path(suite_folder))
    return [str(folder.resolve()) for folder in folders]


def _prepend_to_path(folders: Iterable[str]) -> None:
    """Put each existing folder (in order) at the front of ``sys.path``, unless already there."""
    for folder in reversed(list(folders)):
        if folder and folder not in sys.path and Path(folder).is_dir():
            sys.path.insert(0, folder)


def import_plugins(modules: Sequence[str], suite_folder: Path | None = None) -> None:
    """Import each of ``modules`` (dotted names), searching ``suite_folder``, the working
    directory, then ``sys.path``. Raises PluginError naming the module and the problem."""
    if not modules:
        return
    _prepend_to_path(_search_folders(suite_folder))
    searched = "the suite's folder, " if suite_folder is not None else ""
    for name in modules:
        import_plugin(name, f"{searched}the working directory and sys.path")


def import_plugin(name: str, searched: str = "sys.path") -> None:
    """Import one plugin module already on ``sys.path``; PluginError if it is not there
    (``searched``: where it was looked for, for the message) or fails to import."""
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise PluginError(f"{name!r} is not a module name (e.g. my_methods or lab.datasets)")
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a parent package missing or broken
        found = None
    if found is None:
        raise PluginError(f"no module named {name!r} (looked in {searched})")
    try:
        importlib.import_module(name)
    except Exception as error:  # a plugin's own error, whatever it is, is the user's to fix
        cause = " ".join(f"{type(error).__name__}: {error}".split())
        raise PluginError(f"module {name!r} failed to import: {cause}") from None


def _root_folder(name: str) -> str:
    """The ``sys.path`` folder from which the imported module ``name`` was loaded ("" if it has
    no file)."""
    location = getattr(sys.modules[name], "__file__", None)
    if location is None:
        return ""
    path = Path(location).resolve().parent  # the folder of the module file or of the package
    levels = name.count(".") + (1 if Path(location).name == "__init__.py" else 0)
    for _ in range(levels):
        path = path.parent
    return str(path)


def plugin_sources(modules: Sequence[str]) -> tuple[PluginSource, ...]:
    """Where each imported plugin module came from (call after :func:`import_plugins`)."""
    return tuple(PluginSource(name, _root_folder(name)) for name in modules)


def import_on_worker(sources: Sequence[PluginSource]) -> None:
    """On a Ray worker: put the plugins' folders on ``sys.path`` and import them (once per
    worker process; a module already imported is not imported again)."""
    _prepend_to_path(source.folder for source in sources)
    for source in sources:
        if source.module not in sys.modules:
            import_plugin(source.module, f"{source.folder or 'no folder'} and sys.path")
