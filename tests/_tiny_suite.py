"""A suite of tiny `synthetic` runs (seconds each), shared by tests that need real records."""

from __future__ import annotations

TINY_SYNTHETIC = {
    "name": "synthetic",
    "params": {
        "num_tasks": 2,
        "input_features": 4,
        "classes": 2,
        "width": 8,
        "depth": 1,
        "train_samples": 64,
        "val_samples": 32,
        "test_samples": 32,
    },
}
"""2 tasks, an 8-unit encoder, 64 training samples: about 1e4 FLOPs per step at batch 32."""


def tiny_suite(name: str, seeds: list[int], budget_flops: float, checkpoint_every: int) -> dict:
    """The suite mapping: ``ew`` on :data:`TINY_SYNTHETIC`, batch 32, logs every 5 steps."""
    return {
        "name": name,
        "datasets": [TINY_SYNTHETIC],
        "methods": [{"name": "ew"}],
        "seeds": seeds,
        "budget": {"flops": budget_flops},
        "training": {
            "batch_size": 32,
            "log_every": 5,
            "eval_every": 10,
            "checkpoint_every": checkpoint_every,
        },
    }
