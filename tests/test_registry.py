"""The one registry of methods, datasets, engines and executors: lazy targets, entry points,
duplicates, import failures, and that no harness module names a cluster module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mtlbench.harness.gradients import BatchedEngine, get_engine, register_engine
from mtlbench.harness.registry import (
    ENGINES,
    EXECUTORS,
    Registry,
    RegistryImportError,
    UnknownName,
)

HARNESS = Path(__file__).resolve().parents[1] / "harness"


@pytest.fixture
def module_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder on sys.path and a module name unique to the test (removed afterwards)."""
    name = f"registry_target_{uuid.uuid4().hex[:8]}"
    sys.path.insert(0, str(tmp_path))
    yield tmp_path, name
    sys.path.remove(str(tmp_path))
    sys.modules.pop(name, None)


def test_a_lazy_target_is_known_by_name_and_imported_on_first_get(module_folder) -> None:
    folder, name = module_folder
    (folder / f"{name}.py").write_text("class Thing:\n    registry_name = ''\n")
    things = Registry("thing", builtins={"thing": f"{name}:Thing"})
    assert things.names() == ["thing"] and "thing" in things and name not in sys.modules
    assert things.target("thing") == f"{name}:Thing"
    found = things.get("thing")
    assert found is sys.modules[name].Thing and found.registry_name == "thing"
    assert things.items() == [("thing", found)]


def test_a_target_that_fails_to_import_is_one_line_naming_it(module_folder) -> None:
    folder, name = module_folder
    (folder / f"{name}.py").write_text("import a_module_nobody_has\n")
    things = Registry("thing", builtins={"broken": f"{name}:Thing", "absent": f"{name}_x:Y"})
    with pytest.raises(RegistryImportError) as raised:
        things.get("broken")
    message = str(raised.value)
    assert message == (
        f"thing 'broken' cannot be imported from {name}:Thing: "
        "ModuleNotFoundError: No module named 'a_module_nobody_has'"
    )
    with pytest.raises(RegistryImportError, match=rf"^thing 'absent' .* {name}_x:Y: Module"):
        things.get("absent")
    (folder / f"{name}_attr.py").write_text("OTHER = 1\n")
    things.add_lazy("no_attribute", f"{name}_attr:Thing")
    with pytest.raises(RegistryImportError, match=r"AttributeError: .* no attribute 'Thing'"):
        things.get("no_attribute")
    sys.modules.pop(f"{name}_attr", None)


def test_unknown_names_and_duplicates() -> None:
    things: Registry[object] = Registry("thing")
    first, second = object(), object()
    things.add("one", first)
    things.add("one", first)  # the same object again (a module imported twice): fine
    with pytest.raises(ValueError, match="thing 'one' is registered twice"):
        things.add("one", second)
    with pytest.raises(ValueError, match="thing 'two' is registered twice"):
        things.add_lazy("two", "a:B")
        things.add_lazy("two", "a:C")
    with pytest.raises(ValueError, match="is not 'module:attribute'"):
        things.add_lazy("three", "a.B")
    with pytest.raises(UnknownName, match=r"unknown thing 'nine' \(known: one, two\)"):
        things.get("nine")
    things.unregister("one")
    assert things.names() == ["two"]


def test_a_module_registering_its_own_target_is_accepted_another_object_is_not(
    module_folder,
) -> None:
    """The module named by a lazy target may register its object itself when imported (the
    cluster engines did); a different object under that name is found out on first get."""
    folder, name = module_folder
    (folder / f"{name}.py").write_text(
        "from test_registry_shared import THINGS\n"
        "class Thing:\n    pass\n"
        "THINGS.add('thing', Thing)\n"
    )
    things: Registry[object] = Registry("thing", builtins={"thing": f"{name}:Thing"})
    shared = type(sys)("test_registry_shared")
    shared.THINGS = things  # type: ignore[attr-defined]
    sys.modules["test_registry_shared"] = shared
    try:
        assert things.get("thing") is sys.modules[name].Thing
        impostor: Registry[object] = Registry("thing", builtins={"thing": f"{name}:Thing"})
        impostor.add("thing", object())
        with pytest.raises(ValueError, match="thing 'thing' is registered twice"):
            impostor.get("thing")
    finally:
        del sys.modules["test_registry_shared"]


def test_register_engine_still_registers_a_local_engine() -> None:
    class Wide(BatchedEngine):
        name = "test_wide"

    register_engine(Wide.name, Wide)
    try:
        assert get_engine("test_wide") is Wide and "test_wide" in ENGINES.names()
    finally:
        ENGINES.unregister("test_wide")
    with pytest.raises(KeyError, match="unknown engine 'test_wide'"):
        get_engine("test_wide")


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_no_harness_module_imports_a_cluster_module() -> None:
    files = sorted(HARNESS.rglob("*.py"))
    assert len(files) > 20
    offenders = [
        f"{path.relative_to(HARNESS)}: {module}"
        for path in files
        for module in _imported_modules(path)
        if module.startswith("mtlbench.cluster")
    ]
    assert offenders == []


PROBE = """
import json, sys
from mtlbench.harness.config import engine_options_problem
from mtlbench.harness.gradients import engine_names
from mtlbench.harness.registry import ENGINES, EXECUTORS
names = engine_names()
cluster_before = sorted(m for m in sys.modules if m.startswith("mtlbench.cluster"))
problem = engine_options_problem("ray_sharded", {"actors": 2, "actor": 1})
import ray
print(json.dumps({
    "engines": names,
    "executors": EXECUTORS.names(),
    "targets": {n: ENGINES.target(n) for n in ("ray_sharded", "deepspeed")},
    "cluster_before": cluster_before,
    "problem": problem,
    "sharded_imported": "mtlbench.cluster.sharded" in sys.modules,
    "ray_started": ray.is_initialized(),
}))
"""


def test_cluster_engines_are_entry_points_imported_only_when_used() -> None:
    """In a fresh process: the cluster engines and the ``ray`` executor are known by name from
    the installed package's entry points with no cluster module imported; checking a suite's
    ``ray_sharded`` options imports its module, and Ray is not started."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"loop", "batched", "representation", "ray_sharded", "deepspeed"} <= set(
        probe["engines"]
    )
    assert probe["executors"] == ["local", "ray"]
    assert probe["targets"] == {
        "ray_sharded": "mtlbench.cluster.sharded:RayShardedEngine",
        "deepspeed": "mtlbench.cluster.deepspeed_engine:DeepSpeedEngine",
    }
    assert probe["cluster_before"] == []
    assert probe["problem"].startswith(".actor: unknown option of engine 'ray_sharded'")
    assert probe["sharded_imported"] and not probe["ray_started"]


def test_executors_are_factories_of_the_suite() -> None:
    from mtlbench.harness.config import parse_suite
    from mtlbench.harness.runner import execute_local, executor_for, local_executor

    suite = parse_suite(
        {
            "name": "x",
            "methods": [{"name": "ew"}],
            "datasets": [{"name": "synthetic"}],
            "budget": {"flops": 1e9},
            "output": {"keep_checkpoints": True},
        }
    )
    assert EXECUTORS.get("local") is local_executor
    executor = executor_for("local", suite)  # a functools.partial of execute_local
    assert getattr(executor, "func", None) is execute_local
    assert getattr(executor, "keywords", None) == {"keep_checkpoints": True}


def test_the_engine_catalog_lists_every_engine_with_its_options() -> None:
    from mtlbench.harness.catalog import engine_catalog
    from mtlbench.harness.gradients import BatchedOptions

    catalog = {entry.name: entry for entry in engine_catalog()}
    assert sorted(catalog) == ENGINES.names()
    assert catalog["loop"].options == () and catalog["loop"].summary.startswith("The reference")
    (chunk,) = catalog["batched"].options
    field = BatchedOptions.model_fields["chunk_size"]
    assert (chunk.name, chunk.type, chunk.default) == ("chunk_size", "int", "64")
    assert chunk.description == field.description
    assert catalog["batched"].target == "mtlbench.harness.engines.batched:BatchedEngine"
