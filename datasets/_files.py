"""Reading the published dataset files: where they lie, IDX parsing, atomic cache writes.

Every real dataset reads its files from one *data root*: the dataset parameter ``data_root``
(a suite sets it under ``datasets[].params``) or, when that is unset, the environment variable
``MTLBENCH_DATA_ROOT``. Each dataset looks in its own folder under the root (``mnist/``,
``fashion_mnist/``, ``UTKFace/``, ``celeba/``, ``census/``); nothing is ever downloaded. A missing
or malformed file raises :class:`DatasetFileError` with one line naming the file and where it was
expected (with ``absent`` set where the files are not there at all).
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from mtlbench.harness.dataset import DatasetFileError, DatasetParams

DATA_ROOT_ENV = "MTLBENCH_DATA_ROOT"
CACHE_FOLDER = "mtlbench_cache"
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
GZIP_MAGIC = b"\x1f\x8b"


def data_root(params: DatasetParams, dataset: str) -> Path:
    """The folder holding the downloaded datasets: ``params.data_root``, else the env var."""
    root = params.data_root or os.environ.get(DATA_ROOT_ENV)
    if not root:
        raise DatasetFileError(
            f"{dataset}: no data root; set datasets[].params.data_root in the suite "
            f"or the environment variable {DATA_ROOT_ENV}",
            absent=True,
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetFileError(f"{dataset}: data root {root} is not a folder", absent=True)
    return root


def find_file(folders: Sequence[Path], names: Sequence[str], what: str) -> Path:
    """The first existing ``folder/name`` (folders, then names, in order of preference).

    Raises DatasetFileError naming the first name and every folder searched.
    """
    for folder in folders:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    where = folders[0] if len(folders) == 1 else " or ".join(str(f) for f in folders)
    alternatives = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    raise DatasetFileError(f"{what}: {names[0]}{alternatives} not found in {where}", absent=True)


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    raw = path.read_bytes()
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise DatasetFileError(f"{path}: corrupt gzip data ({error})") from None


def read_idx(path: Path, expected_magic: int, item_shape: tuple[int, ...] = ()) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (the MNIST format) into an array (N, *item_shape).

    Format (big-endian): two zero bytes, type code 0x08 (ubyte), number of dimensions D, then D
    uint32 sizes, then the data. ``expected_magic`` is 2049 for labels (D = 1) or 2051 for images
    (D = 3). Checked: magic, item shape, and that the data length equals the header's (a truncated
    or padded file is an error). Hand-written because the format is 10 lines of numpy and the only
    library readers (torchvision, python-mnist) cannot be installed here or are unmaintained.
    """
    content = read_bytes(path)
    if len(content) < 4:
        raise DatasetFileError(f"{path}: not an IDX file (only {len(content)} bytes)")
    magic = int.from_bytes(content[:4], "big")
    if magic != expected_magic:
        kind = "labels" if expected_magic == IDX_LABELS_MAGIC else "images"
        raise DatasetFileError(
            f"{path}: IDX magic number is {magic}, expected {expected_magic} ({kind} file)"
        )
    dims = content[3]
    header_length = 4 + 4 * dims
    if len(content) < header_length:
        raise DatasetFileError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if item_shape and shape[1:] != item_shape:
        raise DatasetFileError(f"{path}: IDX items have shape {shape[1:]}, expected {item_shape}")
    expected_bytes = int(np.prod(shape))
    actual_bytes = len(content) - header_length
    if actual_bytes != expected_bytes:
        state = "truncated" if actual_bytes < expected_bytes else "has trailing bytes"
        raise DatasetFileError(
            f"{path}: {state}: header declares {shape[0]} items ({expected_bytes} data bytes), "
            f"file holds {actual_bytes}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_length).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends with ``.gz``); for fixtures."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(size).to_bytes(4, "big") for size in array.shape
    )
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)


def cache_path(root: Path, name: str) -> Path:
    return root / CACHE_FOLDER / name


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> bool:
    """Write ``arrays`` to ``path`` atomically (temporary file + rename in the same folder).

    Returns False (and writes nothing) when the folder is not writable, so a read-only data root
    still works, only without the cache.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    except OSError:
        return False
    try:
        with os.fdopen(handle, "wb") as stream:
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as the allow_pickle flag
            stream.write(buffer.getvalue())
        os.replace(temporary, path)
        return True
    except OSError:
        Path(temporary).unlink(missing_ok=True)
        return False


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or None if it is absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError):
        return None


def carve_validation(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices 0..count-1 into (train, val): a fixed permutation from ``seed``; the first
    ``round(val_fraction * count)`` indices of it are validation. Both returned sorted."""
    order = np.random.default_rng(seed).permutation(count)
    val_count = round(val_fraction * count)
    return np.sort(order[val_count:]), np.sort(order[:val_count])
