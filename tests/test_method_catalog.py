"""The method zoo is complete wherever it is listed: catalog fields, the zoo suite, the README's
method table, and the suite-load check of the engines a method runs on."""

from __future__ import annotations

from pathlib import Path

import pytest
from mtlbench.harness.catalog import method_catalog
from mtlbench.harness.config import ConfigError, load_suite, parse_suite

ROOT = Path(__file__).resolve().parents[1]


def test_every_method_states_its_paper_inputs_and_cost() -> None:
    for entry in method_catalog():
        assert entry.paper and entry.consumes and entry.cost, entry


def test_zoo_suite_runs_every_registered_method() -> None:
    suite = load_suite(ROOT / "suites" / "zoo.yaml")
    assert {m.name for m in suite.methods} == {e.name for e in method_catalog()}
    assert [d.name for d in suite.datasets] == ["multidigits"]


def test_readme_method_table_lists_every_method() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Methods") :]
    table = table[: table.index("\n\n", table.index("| name"))]
    for entry in method_catalog():
        assert f"| `{entry.name}` |" in table, f"README's method table lacks {entry.name}"


def test_a_method_on_an_engine_it_does_not_run_on_is_one_error_line() -> None:
    data = {
        "name": "bad",
        "datasets": [{"name": "multidigits"}],
        "methods": [{"name": "pareto_expansion", "engine": "deepspeed"}],
        "budget": {"flops": 1e9},
    }
    with pytest.raises(ConfigError, match=r"methods\[0\]\.engine: method 'pareto_expansion' "):
        parse_suite(data, "bad.yaml")


def test_readme_example_weighting_runs_and_computes_its_stated_weights() -> None:
    """The README's complete weighting, executed as written: registered, it passes the shared
    training properties on two engines and its weights are 1 / (T ||g_t||) from explicit vectors."""
    import re
    import types

    import torch
    from _method_checks import check_method_properties
    from _weighting_checks import make_weighting
    from mtlbench.harness.registry import METHODS

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Add a method") :]
    source = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    module = types.ModuleType("readme_unit_norm")
    try:
        # the README's own code, run as a user would
        exec(compile(source, "README.md", "exec"), module.__dict__)
        check_method_properties("unit_norm")
        check_method_properties("unit_norm", engine="batched")
        jacobian = torch.randn(4, 9, dtype=torch.float64)
        weights = make_weighting("unit_norm", 4).weights(jacobian @ jacobian.T, torch.ones(4))
        expected = torch.tensor([1 / (4 * float(row.norm())) for row in jacobian])
        torch.testing.assert_close(weights, expected.double())
    finally:
        METHODS.unregister("unit_norm")
