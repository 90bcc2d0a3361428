"""What a run stands on: its device, seeds and (cached) dataset, and what is recorded about them.

``train_run`` (``harness.trainer``) builds every run from these: ``resolve_device`` picks the
device, ``seed_everything`` seeds Python's, NumPy's and torch's global generators, and
``load_dataset`` reads a dataset's splits once per process (the runs of a suite share them).
``environment`` (versions, device, host) and ``peak_memory`` are recorded with every run, for
reproducibility; the Ray executor records ``environment`` of its workers too.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import random
import resource
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mtlbench.harness.dataset import MultiTaskDataset, Splits
from mtlbench.harness.registry import DATASETS


# ---- the run's inputs ------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _load_dataset(name: str, params_json: str) -> tuple[MultiTaskDataset, Splits]:
    dataset_cls = DATASETS.get(name)
    dataset = dataset_cls(dataset_cls.Params.model_validate(json.loads(params_json)))
    return dataset, dataset.load()


def load_dataset(name: str, params: dict[str, Any]) -> tuple[MultiTaskDataset, Splits]:
    """The dataset object and its splits, cached per process (runs share loaded data)."""
    return _load_dataset(name, json.dumps(params, sort_keys=True, default=str))


def resolve_device(requested: str) -> torch.device:
    """The device a run asks for: ``auto`` is the first GPU if there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    """Seed the global generators of Python, NumPy and torch (every device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- what is recorded about them -------------------------------------------------------------
@lru_cache(maxsize=1)
def _code_version() -> str:
    """``<package version>+<git commit>`` of this checkout, or the package version alone."""
    try:
        package = importlib.metadata.version("mtlbench")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,  # outside a git checkout: no commit, stdout empty
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{package}+{commit}" if commit else package


def _installed_version(distribution: str) -> str:
    """A distribution's installed version, read from its metadata (no import), or "absent"."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def environment(device: torch.device) -> dict[str, str]:
    """Versions and device recorded with every run (reproducibility)."""
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    )
    return {
        "mtlbench_version": _code_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "mlflow": _installed_version("mlflow"),
        "pyarrow": _installed_version("pyarrow"),
        "device": str(device),
        "device_name": device_name or platform.machine(),
        "torch_threads": str(torch.get_num_threads()),
        "hostname": platform.node(),
    }


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(peak memory in bytes, how it was measured): the CUDA allocator's peak since its last
    reset on a GPU, the process's maximum resident set size on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_max_rss"
