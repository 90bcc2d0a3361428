"""Small files in each real dataset's published format, written into a test's tmp folder.

Each builder writes under ``root`` exactly where the loader looks (``root/mnist``,
``root/fashion_mnist``, ``root/UTKFace``, ``root/celeba``, ``root/census``, ``root/adult``) and
returns what it wrote, so tests can compare the loaded data with the source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mtlbench.datasets._files import write_idx
from mtlbench.datasets.celeba import ATTRIBUTES
from mtlbench.datasets.census import ADULT, KDD
from PIL import Image


def write_idx_dataset(
    folder: Path, train: int = 40, test: int = 16, gz: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """MNIST-format IDX files of random 28×28 images (each distinct) and labels 0..9."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {}
    for split, count, prefix in (("train", train, "train"), ("test", test, "t10k")):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def write_jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int] = (20, 24)) -> None:
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def write_utkface(root: Path, count: int = 30, seed: int = 0) -> list[tuple[str, int, int, int]]:
    """``count`` JPEGs named ``age_gender_race_datetime.jpg.chip.jpg``; returns (name, labels)."""
    rng = np.random.default_rng(seed)
    folder = root / "UTKFace"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(count):
        age, gender, race = (
            int(rng.integers(1, 90)),
            int(rng.integers(0, 2)),
            int(rng.integers(0, 5)),
        )
        name = f"{age}_{gender}_{race}_2017011617452{index:04d}.jpg.chip.jpg"
        write_jpeg(folder / name, rng)
        written.append((name, age, gender, race))
    return written


def write_celeba(root: Path, partition: list[int], seed: int = 0) -> np.ndarray:
    """One image per entry of ``partition`` (0/1/2); returns the ±1 attributes (N, 40)."""
    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    values = rng.choice([-1, 1], size=(len(partition), len(ATTRIBUTES)))
    names = [f"{index + 1:06d}.jpg" for index in range(len(partition))]
    lines = [str(len(names)), " ".join(ATTRIBUTES)]
    lines += [
        name + " " + " ".join(f"{v:2d}" for v in row)
        for name, row in zip(names, values, strict=True)
    ]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    split_lines = [f"{name} {code}" for name, code in zip(names, partition, strict=True)]
    (folder / "list_eval_partition.txt").write_text("\n".join(split_lines) + "\n")
    for name in names:
        write_jpeg(folder / "img_align_celeba" / name, rng, size=(18, 22))
    return values


KDD_VALUES = {
    "education": [
        "Children",
        "High school graduate",
        "Bachelors degree(BA AB BS)",
        "Some college but no degree",
        "Masters degree(MA MS MEng MEd MSW MBA)",
        "10th grade",
    ],
    "marital_status": ["Never married", "Married-civilian spouse present", "Divorced"],
    "income": ["- 50000.", "50000+."],
}
ADULT_VALUES = {
    "education": ["Bachelors", "HS-grad", "Masters", "11th", "Some-college", "Assoc-voc"],
    "marital_status": ["Never-married", "Married-civ-spouse", "Divorced"],
    "income": ["<=50K", ">50K"],
}


def census_rows(source: str, count: int, rng: np.random.Generator) -> list[list[str]]:
    """Rows of the given format with a few values per nominal column (including "?")."""
    schema = KDD if source == "kdd" else ADULT
    special = KDD_VALUES if source == "kdd" else ADULT_VALUES
    rows = []
    for _ in range(count):
        row = []
        for column in schema.columns:
            if column == "age":
                row.append(str(int(rng.integers(17, 80))))
            elif column in schema.continuous or column in ("instance_weight", "fnlwgt"):
                row.append(f"{rng.uniform(0, 100):.2f}")
            elif column in special:
                row.append(str(rng.choice(special[column])))
            else:
                row.append(str(rng.choice(["A", "B", "C", "?"])))
        rows.append(row)
    return rows


def write_census(root: Path, source: str = "kdd", train: int = 300, test: int = 100, seed: int = 0):
    """Census-Income (KDD) or Adult files in their comma-and-space format; returns the rows."""
    rng = np.random.default_rng(seed)
    schema = KDD if source == "kdd" else ADULT
    folder = root / schema.folder
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"train": census_rows(source, train, rng), "test": census_rows(source, test, rng)}
    header = "|1x3 Cross validator\n" if source == "adult" else ""
    for split, name in (("train", schema.train_file), ("test", schema.test_file)):
        lines = [
            ", ".join(row) + ("." if source == "adult" and split == "test" else "")
            for row in rows[split]
        ]
        (folder / name).write_text((header if split == "test" else "") + "\n".join(lines) + "\n")
    return rows
