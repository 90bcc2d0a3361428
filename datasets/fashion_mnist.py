"""``fashion_mnist`` (Multi-Fashion+MNIST): an MNIST digit (left) and a Fashion-MNIST item (right).

Reads both the MNIST IDX files (``<data root>/mnist/``) and the Fashion-MNIST IDX files
(``<data root>/fashion_mnist/``); tasks ``digit`` (left, 10-way) and ``item`` (right, 10-way).
The validation pool of each source is carved with the same seed. Construction, splits and
cache: ``datasets/_overlay.py``. Default model: MultiLeNet.
"""

from __future__ import annotations

from mtlbench.datasets._overlay import FASHION, MNIST, TwoItemOverlay
from mtlbench.harness.registry import register_dataset


@register_dataset("fashion_mnist")
class FashionAndMNIST(TwoItemOverlay):
    left_source = MNIST
    right_source = FASHION
    task_names = ("digit", "item")
