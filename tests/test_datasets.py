"""Real-format dataset files -> registry -> loader: contents, splits, errors and counted skips.

Fixtures are written in each published format (IDX with its magic numbers, plain and gzipped;
UTKFace-named JPEGs; CelebA's text files and images; Census-Income and Adult CSVs). Oracles
independent of the loaders: Pillow's nearest resize for the overlay, scikit-learn's one-hot
encoder and scaler for the census encoding, the file names for UTKFace labels.
"""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
import torch
from _dataset_fixtures import (
    write_celeba,
    write_census,
    write_idx_dataset,
    write_jpeg,
    write_utkface,
)
from mtlbench.datasets._files import (
    DATA_ROOT_ENV,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    read_idx,
    write_idx,
)
from mtlbench.datasets._models import ResNet18Encoder
from mtlbench.datasets.celeba import ATTRIBUTES
from mtlbench.datasets.census import KDD, input_columns
from mtlbench.harness.dataset import DatasetFileError
from mtlbench.harness.model import count_parameters
from mtlbench.harness.registry import DATASETS
from PIL import Image
from sklearn.preprocessing import OneHotEncoder, StandardScaler

REAL = ["multimnist", "multifashion", "fashion_mnist", "utkface", "celeba", "census"]


def load(name: str, root, **params):
    cls = DATASETS.get(name)
    dataset = cls(cls.Params(data_root=root, **params))
    return dataset, dataset.load()


# ---- IDX -------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    path = tmp_path / ("images.gz" if gz else "images")
    write_idx(path, images)
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    assert int.from_bytes(raw[:4], "big") == 2051 and int.from_bytes(raw[4:8], "big") == 3
    np.testing.assert_array_equal(read_idx(path, IDX_IMAGES_MAGIC, (28, 28)), images)


def test_idx_wrong_magic_truncation_and_shape_are_errors(tmp_path) -> None:
    labels = tmp_path / "labels"
    write_idx(labels, np.arange(10, dtype=np.uint8))
    with pytest.raises(DatasetFileError, match=r"labels: IDX magic number is 2049, expected 2051"):
        read_idx(labels, IDX_IMAGES_MAGIC)
    images = tmp_path / "images"
    write_idx(images, np.zeros((4, 28, 28), dtype=np.uint8))
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DatasetFileError, match=r"images: truncated: header declares 4 items"):
        read_idx(images, IDX_IMAGES_MAGIC, (28, 28))
    small = tmp_path / "small"
    write_idx(small, np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(DatasetFileError, match=r"shape \(8, 8\), expected \(28, 28\)"):
        read_idx(small, IDX_IMAGES_MAGIC, (28, 28))
    assert read_idx(labels, IDX_LABELS_MAGIC).tolist() == list(range(10))


# ---- MultiMNIST family -----------------------------------------------------------------------
def pillow_overlay(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    canvas = np.zeros((36, 36), dtype=np.uint8)
    canvas[:28, :28] = left
    canvas[6:34, 6:34] = np.maximum(canvas[6:34, 6:34], right)
    return np.asarray(Image.fromarray(canvas).resize((28, 28), Image.NEAREST))


def test_multimnist_overlay_matches_pillow_and_labels(tmp_path) -> None:
    source = write_idx_dataset(tmp_path / "mnist", train=40, test=16, gz=True)
    dataset, splits = load("multimnist", tmp_path, val_fraction=0.25)
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [30, 10, 16]
    inputs, targets = splits.test.tensors
    assert inputs.shape == (16, 1, 28, 28) and targets.shape == (16, 2)
    canvases = dataset.canvases()["test_inputs"]
    images, labels = source["test_images"], source["test_labels"]
    for k in range(16):  # left item k in order; find the right item by brute force
        matches = [
            j
            for j in range(16)
            if np.array_equal(pillow_overlay(images[k], images[j]), canvases[k])
        ]
        assert matches, f"canvas {k} is no Pillow overlay of test image {k} with any test image"
        assert int(targets[k, 0]) == labels[k] and int(targets[k, 1]) in {
            int(labels[j]) for j in matches
        }
    train_inputs = splits.train.tensors[0]
    assert abs(float(train_inputs.mean())) < 1e-5 and abs(float(train_inputs.std()) - 1) < 1e-3


def test_overlay_cache_is_reused_and_rebuilt_when_sources_change(tmp_path) -> None:
    write_idx_dataset(tmp_path / "mnist", train=40, test=16)
    _, first = load("multimnist", tmp_path, val_fraction=0.25, seed=3)
    cache = next((tmp_path / "mtlbench_cache").glob("multimnist_seed3_*.npz"))
    stamp = cache.stat().st_mtime_ns
    _, second = load("multimnist", tmp_path, val_fraction=0.25, seed=3)
    assert cache.stat().st_mtime_ns == stamp and not list(cache.parent.glob("*.tmp"))
    for a, b in zip(first.train.tensors, second.train.tensors, strict=True):
        assert torch.equal(a, b)
    _, other_seed = load("multimnist", tmp_path, val_fraction=0.25, seed=4)
    assert not torch.equal(other_seed.train.tensors[0], first.train.tensors[0])
    write_idx_dataset(tmp_path / "mnist", train=44, test=16)
    _, rebuilt = load("multimnist", tmp_path, val_fraction=0.25, seed=3)
    assert len(rebuilt.train) == 33 and cache.stat().st_mtime_ns != stamp


def test_fashion_mnist_pairs_a_digit_with_an_item(tmp_path) -> None:
    digits = write_idx_dataset(tmp_path / "mnist", train=20, test=8, seed=1)
    write_idx_dataset(tmp_path / "FashionMNIST" / "raw", train=20, test=8, seed=2, gz=True)
    dataset, splits = load("fashion_mnist", tmp_path, val_fraction=0.2)
    assert type(dataset).taskset(dataset.params).names == ["digit", "item"]
    assert splits.test.tensors[1][:, 0].tolist() == digits["test_labels"].astype(float).tolist()
    _, fashion = load("multifashion", tmp_path, val_fraction=0.2)
    assert len(fashion.train) == 16


def test_missing_files_and_data_root_are_one_line_errors(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    with pytest.raises(DatasetFileError, match=f"no data root.*{DATA_ROOT_ENV}"):
        load("multimnist", None)
    with pytest.raises(DatasetFileError) as error:
        load("multimnist", tmp_path)
    message = str(error.value)
    assert (
        "\n" not in message
        and "train-images-idx3-ubyte" in message
        and str(tmp_path / "mnist") in message
    )
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    with pytest.raises(DatasetFileError, match=r"list_attr_celeba\.txt not found in .*celeba"):
        load("celeba", None)
    with pytest.raises(
        DatasetFileError, match=r"census-income\.data \(or census-income\.data\.gz\)"
    ):
        load("census", None)
    with pytest.raises(DatasetFileError, match=r"image folder UTKFace/ not found"):
        load("utkface", None)


def test_mismatched_label_count_is_an_error(tmp_path) -> None:
    write_idx_dataset(tmp_path / "mnist", train=20, test=8)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8))
    with pytest.raises(DatasetFileError, match=r"t10k-labels-idx1-ubyte: 7 labels for 8 images"):
        load("multimnist", tmp_path)


# ---- UTKFace ---------------------------------------------------------------------------------
def test_utkface_labels_from_names_and_counted_skips(tmp_path) -> None:
    written = write_utkface(tmp_path, count=30)
    folder = tmp_path / "UTKFace"
    write_jpeg(folder / "39_1_20170116174525125.jpg.chip.jpg", np.random.default_rng(9))  # no race
    (folder / "40_0_1_20170116174525999.jpg.chip.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.warns(UserWarning) as record:
        dataset, splits = load("utkface", tmp_path, image_size=16)
    messages = [str(w.message) for w in record]
    assert any("skipped 1 file(s) with names" in m and "39_1_2017" in m for m in messages)
    assert any("skipped 1 file(s) with undecodable" in m and "40_0_1_" in m for m in messages)
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [21, 3, 6]
    by_name = {name: (age, gender, race) for name, age, gender, race in written}
    for split in (splits.train, splits.val, splits.test):
        for index in range(len(split)):
            age, gender, race = by_name[split.paths[index].name]
            z_age, z_gender, z_race = split.targets[index].tolist()
            assert z_age * dataset.age_std_years + dataset.age_mean_years == pytest.approx(
                age, abs=1e-4
            )
            assert (z_gender, z_race) == (gender, race)
    image, target = splits.train[0]
    assert (
        image.shape == (3, 16, 16)
        and image.min() >= -1
        and image.max() <= 1
        and target.shape == (3,)
    )
    train_ages = np.array([by_name[p.name][0] for p in splits.train.paths])
    assert dataset.age_mean_years == pytest.approx(train_ages.mean())


def test_utkface_corrupt_image_without_verification_fails_naming_the_file(tmp_path) -> None:
    write_utkface(tmp_path, count=9)
    corrupt = tmp_path / "UTKFace" / "40_0_1_20170116174525999.jpg"
    corrupt.write_bytes(b"garbage")
    _, splits = load("utkface", tmp_path, verify_images=False)
    items = [
        (split, i) for split in (splits.train, splits.val, splits.test) for i in range(len(split))
    ]
    split, index = next((s, i) for s, i in items if s.paths[i] == corrupt)
    with pytest.raises(
        DatasetFileError, match=r"40_0_1_20170116174525999\.jpg: cannot decode image"
    ):
        split[index]


# ---- CelebA ----------------------------------------------------------------------------------
def test_celeba_partition_targets_and_missing_images(tmp_path) -> None:
    partition = [0] * 10 + [1] * 3 + [2] * 4
    values = write_celeba(tmp_path, partition)
    (tmp_path / "celeba" / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.warns(
        UserWarning, match=r"celeba: skipped 1 file\(s\) with no image in .*: 000002\.jpg"
    ):
        _, splits = load("celeba", tmp_path, image_size=16, width=4)
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [9, 3, 4]
    names = [p.name for p in splits.train.paths]
    assert names[0] == "000001.jpg" and "000002.jpg" not in names
    expected = torch.from_numpy((values[[0, *range(2, 10)]] == 1).astype(np.float32))
    assert torch.equal(splits.train.targets, expected)
    image, target = splits.test[0]
    assert image.shape == (3, 16, 16) and target.shape == (40,)


def test_celeba_row_with_39_attributes_is_one_error(tmp_path) -> None:
    write_celeba(tmp_path, [0, 0, 1, 2])
    path = tmp_path / "celeba" / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0]  # image 3: drop the last value
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFileError) as error:
        load("celeba", tmp_path)
    assert str(error.value) == (
        f"{path}:5: expected a file name and 40 attribute values, got 39 values"
    )


def test_celeba_header_and_partition_errors(tmp_path) -> None:
    write_celeba(tmp_path, [0, 1, 2])
    path = tmp_path / "celeba" / "list_attr_celeba.txt"
    text = path.read_text()
    path.write_text(text.replace("Young", "Old", 1))
    with pytest.raises(
        DatasetFileError, match=r":2: not the 40 CelebA attributes \(name 40 is 'Old'"
    ):
        load("celeba", tmp_path)
    path.write_text("4\n" + text.split("\n", 1)[1])
    with pytest.raises(DatasetFileError, match=r":1: declares 4 images, the file lists 3"):
        load("celeba", tmp_path)
    path.write_text(text)
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    partition.write_text("000001.jpg 0\n000002.jpg 7\n")
    with pytest.raises(DatasetFileError, match=r"list_eval_partition\.txt:2: expected"):
        load("celeba", tmp_path)


# ---- Census ----------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["kdd", "adult"])
def test_census_encoding_matches_sklearn(tmp_path, source) -> None:
    rows = write_census(tmp_path, source, train=200, test=60)
    tasks = ("age", "education", "never_married", "income")
    dataset, splits = load("census", tmp_path, source=source, tasks=tasks, val_fraction=0.25)
    schema = dataset.params.source
    from mtlbench.datasets.census import SCHEMAS

    schema = SCHEMAS[source]
    continuous, nominal = input_columns(schema, tasks)
    position = {c: i for i, c in enumerate(schema.columns)}
    table = {s: np.array(r, dtype=object) for s, r in rows.items()}
    train_all = table["train"]
    order = np.random.default_rng(0).permutation(len(train_all))
    val_index, train_index = np.sort(order[:50]), np.sort(order[50:])
    scaler = StandardScaler().fit(
        train_all[train_index][:, [position[c] for c in continuous]].astype(float)
    )
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    encoder.fit(train_all[:, [position[c] for c in nominal]].astype(str))

    def expected(split_rows):
        numbers = scaler.transform(split_rows[:, [position[c] for c in continuous]].astype(float))
        return np.concatenate(
            [numbers, encoder.transform(split_rows[:, [position[c] for c in nominal]].astype(str))],
            1,
        )

    test_inputs, test_targets = splits.test.tensors
    np.testing.assert_allclose(test_inputs.numpy(), expected(table["test"]), atol=1e-5)
    np.testing.assert_allclose(
        splits.val.tensors[0].numpy(), expected(train_all[val_index]), atol=1e-5
    )
    assert dataset.input_features == test_inputs.shape[1]
    ages = table["test"][:, position["age"]].astype(int)
    assert test_targets[:, 0].tolist() == (ages >= 40).astype(float).tolist()
    education = table["test"][:, position["education"]]
    beyond = [e.startswith(("Bachelors", "Some", "Masters", "Asso")) for e in education]
    assert test_targets[:, 1].tolist() == [float(b) for b in beyond]
    married = [m.startswith("Never") for m in table["test"][:, position["marital_status"]]]
    assert test_targets[:, 2].tolist() == [float(m) for m in married]
    income = [("50000+" in v or ">50K" in v) for v in table["test"][:, position["income"]]]
    assert test_targets[:, 3].tolist() == [float(i) for i in income]
    model = dataset.build_model()
    assert model(test_inputs[:5]).shape == (5, 4, 2)


def test_census_short_row_is_one_error_naming_the_line(tmp_path) -> None:
    write_census(tmp_path, "kdd", train=20, test=5)
    path = tmp_path / "census" / "census-income.data"
    lines = path.read_text().splitlines()
    lines[6] = lines[6].rsplit(",", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DatasetFileError, match=r"census-income\.data:7: expected 42 fields, got 41"
    ):
        load("census", tmp_path)


# ---- models and data-free descriptions (what `mtlbench info` shows) ---------------------------
def test_default_models_match_the_papers_counts() -> None:
    encoder = ResNet18Encoder(64)
    assert count_parameters(encoder) == 11_168_832
    assert encoder(torch.zeros(2, 3, 64, 64)).shape == (2, 2048)
    multimnist = DATASETS.get("multimnist")
    lenet = multimnist(multimnist.Params()).build_model()
    assert count_parameters(lenet.encoder) == 21_330 and count_parameters(lenet.heads) == 2 * 3_060
    celeba = DATASETS.get("celeba")
    model = celeba(celeba.Params()).build_model()
    assert count_parameters(model.heads) == 40 * (2048 * 2 + 2)
    census = DATASETS.get("census")
    assert census(census.Params()).nominal_input_features() == 492
    cpmtl = census.Params(tasks=("age", "education", "never_married"), hidden=(256, 128))
    assert census(cpmtl).nominal_input_features() == 485
    assert census(census.Params(source="adult")).nominal_input_features() == 89
    continuous, nominal = input_columns(KDD, ("age", "education"))
    assert len(continuous) == 6 and "instance_weight" not in nominal and "income" not in nominal


@pytest.mark.parametrize("name", REAL)
def test_taskset_and_model_need_no_data(name, monkeypatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    cls = DATASETS.get(name)
    params = cls.Params()
    taskset = cls.taskset(params)
    model = cls(params).build_model()
    assert cls.model_description and len(taskset) >= 2 and model.num_tasks == len(taskset)
    assert len(taskset.hv_reference) == len(taskset)
    if name == "celeba":
        assert taskset.names == ATTRIBUTES


def test_no_warning_when_files_are_clean(tmp_path) -> None:
    write_utkface(tmp_path, count=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load("utkface", tmp_path, image_size=16)


# ---- stand-in batches (scaling studies measure costs on them where files are absent) ---------
SMALL_MODELS = {"utkface": {"image_size": 16, "width": 4}, "celeba": {"image_size": 16, "width": 4}}


@pytest.mark.parametrize("name", sorted(DATASETS.names()))
def test_stand_in_batch_has_the_input_shape_and_valid_targets(name, monkeypatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    cls = DATASETS.get(name)
    params = cls.Params(**SMALL_MODELS.get(name, {}))
    taskset = cls.taskset(params)
    inputs, targets = cls.stand_in_batch(params, 5, torch.Generator().manual_seed(0))
    assert inputs.shape == (5, *cls.input_shape(params)) and targets.shape == (5, len(taskset))
    for column, task in enumerate(taskset):
        if task.kind == "classification":  # class indices in range
            values = targets[:, column]
            assert torch.equal(values, values.round()) and values.min() >= 0
            assert values.max() < task.num_outputs
    again = cls.stand_in_batch(params, 5, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)
    model = cls(params).build_model().to(inputs.dtype)
    losses = taskset.per_sample_losses(model(inputs), targets)
    assert losses.shape == (5, len(taskset)) and torch.isfinite(losses).all()


def test_stand_in_shapes_equal_the_loaded_items(tmp_path) -> None:
    write_idx_dataset(tmp_path / "mnist", train=30, test=10)
    write_utkface(tmp_path, count=10)
    write_celeba(tmp_path, [0] * 4 + [1] * 2 + [2] * 2)
    for name in ("multimnist", "utkface", "celeba"):
        dataset, splits = load(name, tmp_path, **SMALL_MODELS.get(name, {}))
        item = splits.train[0][0]
        assert tuple(item.shape) == type(dataset).input_shape(dataset.params), name
    digits, digit_splits = load("multidigits", None, train_pairs=4)
    assert tuple(digit_splits.train[0][0].shape) == type(digits).input_shape(digits.params)


def _census_rows_with_every_value(source: str, count: int) -> list[list[str]]:
    """Rows whose nominal column c takes exactly ``Schema.distinct[c]`` values, as the full
    published training file does."""
    from mtlbench.datasets.census import SCHEMAS

    schema = SCHEMAS[source]
    rows = []
    for index in range(count):
        row = []
        for column in schema.columns:
            if column in schema.continuous or column in ("instance_weight", "fnlwgt"):
                row.append(str(17 + (index * 7) % 60))
            elif column == "income":
                row.append("50000+." if index % 2 else "- 50000.")
            else:
                row.append(f"value{index % schema.distinct[column]}")
        rows.append(row)
    return rows


@pytest.mark.parametrize("source", ["kdd", "adult"])
def test_census_stand_in_width_is_the_loaders_width_on_the_full_files(tmp_path, source) -> None:
    """The loader's one-hot width on files holding every value of every nominal column equals
    the width the stand-in states from the column specification (492 on KDD, 89 on Adult)."""
    from mtlbench.datasets.census import SCHEMAS

    schema = SCHEMAS[source]
    folder = tmp_path / schema.folder
    folder.mkdir()
    rows = _census_rows_with_every_value(source, 120)
    for name in (schema.train_file, schema.test_file):
        (folder / name).write_text("\n".join(", ".join(row) for row in rows) + "\n")
    dataset, splits = load("census", tmp_path, source=source)
    width = splits.train.tensors[0].shape[1]
    assert width == DATASETS.get("census").input_shape(dataset.params)[0]
    assert width == {"kdd": 492, "adult": 89}[source]
    inputs, _ = DATASETS.get("census").stand_in_batch(dataset.params, 3, torch.Generator())
    continuous, nominal = input_columns(schema, dataset.params.tasks)
    one_hot = inputs[:, len(continuous) :]
    assert torch.equal(one_hot.sum(dim=1), torch.full((3,), float(len(nominal))))
