"""Every registered method passes the shared property checks (tests/_method_checks.py)."""

import pytest
from _method_checks import check_method_properties
from mtlbench.harness.registry import METHODS


@pytest.mark.parametrize("name", METHODS.names())
def test_registered_method_properties(name: str) -> None:
    check_method_properties(name)


def test_ew_properties_on_batched_engine() -> None:
    check_method_properties("ew", {"preference": [1.0, 2.0, 3.0]}, engine="batched")


def test_property_checks_catch_weights_off_the_simplex() -> None:
    """The checks are not vacuous: a method whose weights sum to 2 is rejected."""
    import torch
    from mtlbench.harness.method import Method

    class BrokenWeights(Method):
        produces_weights = True
        weights_on_simplex = True

        def step(self, batch, engine):
            self.optimizer.zero_grad()
            state = engine.forward(batch)
            weights = torch.full((len(self.taskset),), 2.0 / len(self.taskset))
            engine.backward(state, weights)
            self.optimizer.step()
            return {"weights": weights}

    METHODS.register("_broken_weights")(BrokenWeights)
    try:
        with pytest.raises(AssertionError, match="weights sum"):
            check_method_properties("_broken_weights")
    finally:
        METHODS.unregister("_broken_weights")
