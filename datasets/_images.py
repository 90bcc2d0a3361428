"""Lazily decoded image files (UTKFace, CelebA): Pillow decode, resize, normalise.

Each item is decoded when the trainer's ``DataLoader`` asks for it: the image is converted to
RGB, resized to ``side × side`` with Pillow's bilinear filter (antialiased when shrinking) and
mapped to ``[-1, 1]`` per channel (``x / 127.5 - 1``). A file that cannot be decoded at that point
raises :class:`DatasetFileError` naming it (never a silent drop); :func:`verify_images` checks a
list of files up front so a loader can count and skip them instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from mtlbench.harness.dataset import DatasetFileError
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def decode_image(path: Path, side: int) -> Tensor:
    """One image as a float tensor (3, side, side) in [-1, 1]."""
    try:
        with Image.open(path) as image:
            pixels = image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    except DECODE_ERRORS as error:
        raise DatasetFileError(f"{path}: cannot decode image ({error})") from None
    array = np.asarray(pixels, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def stand_in_images(batch_size: int, side: int, generator: torch.Generator) -> Tensor:
    """Stand-in decoded images (batch_size, 3, side, side) float32, uniform in [-1, 1] (the
    range :func:`decode_image` maps pixels to)."""
    return torch.rand((batch_size, 3, side, side), generator=generator) * 2.0 - 1.0


def verify_images(paths: Sequence[Path]) -> list[bool]:
    """Whether each file decodes (full decode, so truncated JPEG data is caught too)."""
    readable = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
            readable.append(True)
        except DECODE_ERRORS:
            readable.append(False)
    return readable


def report_skipped(dataset: str, reason: str, skipped: Sequence[str], limit: int = 3) -> None:
    """Warn once about files left out, with their count and the first few names."""
    if not skipped:
        return
    examples = ", ".join(skipped[:limit]) + (", …" if len(skipped) > limit else "")
    warnings.warn(
        f"{dataset}: skipped {len(skipped)} file(s) with {reason}: {examples}", stacklevel=3
    )


class ImageFiles(Dataset):
    """Images decoded on access. paths: N files; targets: (N, T) float; side: output size.
    Items: (x (3, side, side) float in [-1, 1], targets (T,) float)."""

    def __init__(self, paths: Sequence[Path], targets: Tensor, side: int):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths for {len(targets)} target rows")
        self.paths = list(paths)
        self.targets = targets
        self.side = side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return decode_image(self.paths[index], self.side), self.targets[index]
