"""``multifashion``: two Fashion-MNIST items on one canvas; tasks left and right item (10-way).

Reads the Fashion-MNIST IDX files (same names as MNIST's: ``train-images-idx3-ubyte[.gz]``, …,
``t10k-labels-idx1-ubyte[.gz]``) from ``<data root>/fashion_mnist/`` (or torchvision's
``<data root>/FashionMNIST/raw/``). Construction, splits and cache: ``datasets/_overlay.py``.
Default model: MultiLeNet, as for ``multimnist``.
"""

from __future__ import annotations

from mtlbench.datasets._overlay import FASHION, TwoItemOverlay
from mtlbench.harness.registry import register_dataset


@register_dataset("multifashion")
class MultiFashion(TwoItemOverlay):
    left_source = FASHION
    right_source = FASHION
    task_names = ("left", "right")
