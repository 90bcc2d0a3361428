"""``multimnist``: two MNIST digits on one canvas; tasks left digit and right digit (10-way each).

Reads the MNIST IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``) from
``<data root>/mnist/`` (or torchvision's ``<data root>/MNIST/raw/``). Construction, splits
(54,000 / 6,000 / 10,000 canvases by default) and cache: see ``datasets/_overlay.py``.
Default model: MultiLeNet (Sener & Koltun 2018). Settings of the seeds (PaMaL, Dimitriadis et
al. 2023): Adam, lr 1e-3, batch 256, 10 epochs.
"""

from __future__ import annotations

from mtlbench.datasets._overlay import MNIST, TwoItemOverlay
from mtlbench.harness.registry import register_dataset


@register_dataset("multimnist")
class MultiMNIST(TwoItemOverlay):
    left_source = MNIST
    right_source = MNIST
    task_names = ("left", "right")
