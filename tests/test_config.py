"""Suite validation: every bad input is one line naming the field and the problem."""

from pathlib import Path

import pytest
import yaml
from mtlbench.harness.config import ConfigError, load_suite, parse_suite
from mtlbench.harness.registry import DATASETS, METHODS
from mtlbench.harness.suite import expand_suite

GOOD = {
    "name": "t",
    "datasets": [{"name": "multidigits"}],
    "methods": [{"name": "ew"}, {"name": "single_task"}],
    "seeds": [0, 1],
    "budget": {"flops": 1e9},
}


def _with(**changes):
    data = {**GOOD, **changes}
    return data


def _error(data) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_suite(data, "suite.yaml")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_good_suite_expands_single_task_per_task_and_baselines_first() -> None:
    suite = parse_suite(GOOD)
    specs = expand_suite(suite)
    assert [s.method for s in specs] == ["single_task"] * 4 + ["ew"] * 2
    assert sorted({s.method_params["task"] for s in specs if s.method == "single_task"}) == [0, 1]
    assert len({s.run_hash for s in specs}) == 6


def test_run_hash_ignores_suite_name_but_not_budget() -> None:
    first = expand_suite(parse_suite(GOOD))
    renamed = expand_suite(parse_suite(_with(name="other")))
    assert [s.run_hash for s in first] == [s.run_hash for s in renamed]
    bigger = expand_suite(parse_suite(_with(budget={"flops": 2e9})))
    assert not {s.run_hash for s in first} & {s.run_hash for s in bigger}


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"methods": [{"name": "nope"}]}, "methods[0].name: unknown method 'nope' (known: "),
        ({"datasets": [{"name": "nope"}]}, "datasets[0].name: unknown dataset 'nope' (known: "),
        ({"budget": {"flops": 0}}, "budget.flops: Input should be greater than 0"),
        ({"budget": {"flops": -5}}, "budget.flops: Input should be greater than 0"),
        ({"budget": {"flops": "lots"}}, "budget.flops: Input should be a valid number"),
        ({"budget": {}}, "budget: give exactly one of 'flops' or 'seconds'"),
        (
            {"budget": {"flops": 1, "seconds": 1}},
            "budget: give exactly one of 'flops' or 'seconds'",
        ),
        (
            {"methods": [{"name": "ew", "params": {"preference": [1, 2, 3]}}]},
            "methods[0].params: preference has 3 entries",
        ),
        (
            {"methods": [{"name": "ew", "params": {"gamma": 1}}]},
            "methods[0].params.gamma: unknown field",
        ),
        (
            {"methods": [{"name": "ew", "engine": "warp"}]},
            "methods[0].engine: unknown engine 'warp'",
        ),
        ({"methods": [{"name": "ew"}, {"name": "ew"}]}, "methods[1].label: 'ew' is used twice"),
        ({"training": {"batch_size": 0}}, "training.batch_size: Input should be greater than 0"),
        ({"scoring": "best"}, "scoring: Input should be 'final' or 'best_val'"),
        ({"colour": "red"}, "colour: unknown field"),
        ({"methods": []}, "methods: List should have at least 1 item"),
    ],
)
def test_bad_suites_name_the_field(changes, expected) -> None:
    assert expected in _error(_with(**changes))


def test_missing_budget_and_non_mapping() -> None:
    data = dict(GOOD)
    del data["budget"]
    assert "budget: Field required" in _error(data)
    assert "the suite must be a YAML mapping" in _error(["a", "list"])


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmethods: [ew\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML at line \d+"):
        load_suite(path)
    with pytest.raises(ConfigError, match="no such suite file"):
        load_suite(tmp_path / "absent.yaml")


def test_shipped_suites_are_valid() -> None:
    for path in sorted(Path(__file__).parents[1].joinpath("suites").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if data.get("study") == "scaling":
            continue
        parse_suite(data, str(path))


def test_registries_list_builtins_and_reject_unknown() -> None:
    assert {"ew", "single_task"} <= set(METHODS.names())
    assert "multidigits" in DATASETS.names()
    with pytest.raises(KeyError, match=r"unknown method 'x' \(known: .*ew"):
        METHODS.get("x")
    with pytest.raises(ValueError, match="registered twice"):
        METHODS.register("ew")(object)


def test_yaml_merge_keys_may_be_overridden_but_plain_keys_not_twice(tmp_path: Path) -> None:
    """Only a key written twice is refused; overriding a key taken from a ``<<`` merge is YAML."""
    from mtlbench.harness.config import read_yaml

    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &b {lr: 0.1, batch_size: 8}\ntraining:\n  <<: *b\n  lr: 0.01\n")
    assert read_yaml(merged)["training"] == {"lr": 0.01, "batch_size": 8}
    twice = tmp_path / "twice.yaml"
    twice.write_text("training:\n  lr: 0.1\n  batch_size: 8\n  lr: 0.01\n")
    with pytest.raises(
        ConfigError,
        match=r"twice.yaml: malformed YAML at line 4, column 3: "
        r"key 'lr' is given twice \(first at line 2\)",
    ):
        read_yaml(twice)
