"""Datasets: the real MNIST files, generated IDX and CIFAR-10 files, checksums and the offline path."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from vfnn.errors import DataError
from vfnn.train import data
from vfnn.train.data import DataFile, load_dataset, md5sum, read_cifar10, read_idx

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write an IDX file of unsigned bytes (gzip-compressed when the name ends in .gz)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def write_cifar(path: Path, rng: np.random.Generator, per_batch: int = 7) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A tiny tarball in the CIFAR-10 python format: 5 training batches and a test batch."""
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
            blob = pickle.dumps({b"data": x, b"labels": labels, b"batch_label": name.encode()})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            batches[name] = (x, labels)
    return batches


@pytest.fixture
def mnist_dir() -> Path:
    if not (SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(f"real MNIST expected at {SHARED_DATA / 'mnist'}")
    return SHARED_DATA


def test_real_mnist_loads_with_checksums(mnist_dir: Path) -> None:
    x, y = load_dataset("mnist", "test", mnist_dir, download=False)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert sorted(set(y.tolist())) == list(range(10))
    # The first test digit is a 7 and the test-set pixel mean is 0.1325 (well-known figures).
    assert y[0] == 7 and abs(float(x.mean()) - 0.1325) < 5e-4


def test_generated_idx_roundtrip_and_load_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28)),
              "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 20),
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (5, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 5)}
    for name, arr in arrays.items():
        write_idx(folder / name, arr)
        assert np.array_equal(read_idx(folder / name), arr)
    # The generated files are not the official ones: the checksum check must refuse them ...
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("fashion-mnist", "train", tmp_path, download=False)
    # ... and accept them once the table names their sums.
    info = data.DATASETS["fashion-mnist"]
    files = {k: DataFile(f.name, md5sum(folder / f.name), f.urls) for k, f in info.files.items()}
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", data.DatasetInfo(
        info.name, info.input_shape, info.n_classes, files, info.default_eps))
    x, y = load_dataset("fashion-mnist", "train", tmp_path, download=False)
    assert x.shape == (20, 1, 28, 28)
    assert np.allclose(x[:, 0] * 255, arrays["train-images-idx3-ubyte.gz"])
    assert np.array_equal(y, arrays["train-labels-idx1-ubyte.gz"])


def test_bad_idx_file_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(bad)
    short = write_idx(tmp_path / "short", np.zeros((3, 2), np.uint8))
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(DataError, match="payload"):
        read_idx(short)


def test_generated_cifar_tarball(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar10"
    folder.mkdir()
    tarball = folder / "cifar-10-python.tar.gz"
    batches = write_cifar(tarball, np.random.default_rng(1))
    x, y = read_cifar10(tarball, "train")
    assert x.shape == (35, 3, 32, 32) and y.shape == (35,)
    first = batches["data_batch_1"][0][0]
    assert np.allclose(x[0] * 255, first.reshape(3, 32, 32))  # channel-major rows, as in the official format
    assert y.tolist()[:7] == batches["data_batch_1"][1]
    xt, yt = read_cifar10(tarball, "test")
    assert xt.shape == (7, 3, 32, 32) and yt.tolist() == batches["test_batch"][1]
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("cifar10", "test", tmp_path, download=False)
    info = data.DATASETS["cifar10"]
    spec = info.files["tarball"]
    monkeypatch.setitem(data.DATASETS, "cifar10", data.DatasetInfo(
        info.name, info.input_shape, info.n_classes, {"tarball": DataFile(spec.name, md5sum(tarball), spec.urls)},
        info.default_eps))
    x2, y2 = load_dataset("cifar10", "test", tmp_path, download=False)
    assert np.array_equal(x2, xt) and np.array_equal(y2, yt)


def test_missing_files_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="downloads are disabled") as exc:
        load_dataset("mnist", "test", tmp_path, download=False)
    assert str(tmp_path / "mnist") in str(exc.value) and "\n" not in str(exc.value)
    monkeypatch.setenv("VFNN_NO_DOWNLOAD", "1")
    with pytest.raises(DataError, match="downloads are disabled"):
        load_dataset("mnist", "test", tmp_path)
    # A download that cannot reach its server fails with one line naming the file and the place for it.
    monkeypatch.delenv("VFNN_NO_DOWNLOAD")
    info = data.DATASETS["mnist"]
    dead = {k: DataFile(f.name, f.md5, ("http://127.0.0.1:9/" + f.name,)) for k, f in info.files.items()}
    monkeypatch.setitem(data.DATASETS, "mnist", data.DatasetInfo(info.name, info.input_shape, info.n_classes, dead,
                                                                 info.default_eps))
    with pytest.raises(DataError, match="could not be downloaded") as exc:
        load_dataset("mnist", "test", tmp_path)
    assert "\n" not in str(exc.value)
    assert not list((tmp_path / "mnist").glob("*.part"))


def test_official_locations_are_recorded() -> None:
    mnist = data.DATASETS["mnist"].files["train_images"]
    assert mnist.md5 == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert any("ossci-datasets.s3.amazonaws.com/mnist" in u for u in mnist.urls)
    assert data.DATASETS["cifar10"].files["tarball"].urls[0].startswith("https://www.cs.toronto.edu/~kriz/")
    assert "fashion-mnist" in data.DATASETS["fashion-mnist"].files["test_images"].urls[0]


def test_default_data_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VFNN_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.delenv("VFNN_DATA")
    assert data.default_data_dir() == Path.home() / ".cache" / "vfnn"


def test_digits_split_is_fixed_and_disjoint() -> None:
    xtr, ytr = load_dataset("digits", "train")
    xte, yte = load_dataset("digits", "test")
    assert xtr.shape == (1438, 1, 8, 8) and xte.shape == (359, 1, 8, 8)
    assert 0.0 <= xtr.min() and xtr.max() == 1.0
    again, _ = load_dataset("digits", "test")
    assert np.array_equal(xte, again)
    train_rows = {row.tobytes() + bytes([lab]) for row, lab in zip(xtr, ytr, strict=True)}
    overlap = sum(row.tobytes() + bytes([lab]) in train_rows for row, lab in zip(xte, yte, strict=True))
    assert overlap < 5  # the 8x8 digits contain a few exact duplicates, not a shared split


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet", "train")
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("digits", "val")
