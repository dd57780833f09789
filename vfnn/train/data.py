"""Datasets for training and for building robustness specs, always as pixels in [0, 1].

``load_dataset(name, split, data_dir)`` returns ``(X, y)``: ``X`` float32 ``(N, C, H, W)`` in
[0, 1], ``y`` int64.  Normalisation is *not* applied here; it is the first layer of the model, so
specs and verifiers work in pixel space.

Files live in ``<data_dir>/<name>/`` under their official names and are checked against the
official MD5 sums before they are read.  A missing file is downloaded from the official location
(unless downloads are disabled); when that fails the error says which file to put where.
``digits`` (scikit-learn's bundled 8x8 digits) needs no download at all.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vfnn.errors import DataError

ENV_DATA_DIR = "VFNN_DATA"
ENV_NO_DOWNLOAD = "VFNN_NO_DOWNLOAD"
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class DataFile:
    """One official file: its name, MD5 and the URLs it can be fetched from (tried in order)."""

    name: str
    md5: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class DatasetInfo:
    """What vfnn knows about a dataset: shape, classes, files and per-channel statistics."""

    name: str
    input_shape: tuple[int, int, int]
    n_classes: int
    files: dict[str, DataFile]
    default_eps: float
    classes: tuple[str, ...] = ()


def _idx_files(base_urls: tuple[str, ...], md5s: dict[str, str]) -> dict[str, DataFile]:
    return {key: DataFile(name, md5s[name], tuple(u + name for u in base_urls))
            for key, name in (("train_images", "train-images-idx3-ubyte.gz"),
                              ("train_labels", "train-labels-idx1-ubyte.gz"),
                              ("test_images", "t10k-images-idx3-ubyte.gz"),
                              ("test_labels", "t10k-labels-idx1-ubyte.gz"))}


MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
FASHION_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", (1, 28, 28), 10,
        _idx_files(MNIST_URLS, {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        }),
        default_eps=0.1, classes=tuple(str(i) for i in range(10))),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", (1, 28, 28), 10,
        _idx_files(FASHION_URLS, {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        }),
        default_eps=0.1,
        classes=("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")),
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10,
        {"tarball": DataFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", (CIFAR10_URL,))},
        default_eps=2 / 255,
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
    "digits": DatasetInfo("digits", (1, 8, 8), 10, {}, default_eps=0.05, classes=tuple(str(i) for i in range(10))),
}

SPLITS = ("train", "test")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def default_data_dir() -> Path:
    """``$VFNN_DATA`` if set, else ``~/.cache/vfnn``."""
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vfnn"


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (DataError for an unknown name)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    return DATASETS[name]


def load_dataset(name: str, split: str, data_dir: str | Path | None = None,
                 download: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pixels in [0, 1] as float32 ``(N, C, H, W)`` and int64 labels of one split.

    ``data_dir`` defaults to :func:`default_data_dir`; files are looked up in
    ``data_dir/<name>/``.  ``download`` defaults to true unless ``$VFNN_NO_DOWNLOAD`` is set.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (use 'train' or 'test')")
    if name == "digits":
        return _load_digits(split)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if download is None:
        download = os.environ.get(ENV_NO_DOWNLOAD, "") in ("", "0")
    folder = root / name
    if name == "cifar10":
        return read_cifar10(ensure_file(folder, info.files["tarball"], download), split)
    prefix = "train" if split == "train" else "test"
    images = read_idx(ensure_file(folder, info.files[f"{prefix}_images"], download))
    labels = read_idx(ensure_file(folder, info.files[f"{prefix}_labels"], download))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
    return (images[:, None].astype(np.float32) / 255.0), labels.astype(np.int64)


def md5sum(path: Path) -> str:
    """MD5 hex digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_file(folder: Path, spec: DataFile, download: bool) -> Path:
    """Path of a checksum-verified copy of ``spec`` in ``folder``, downloading it if missing."""
    path = folder / spec.name
    if not path.exists():
        if not download:
            raise DataError(f"{path} is missing and downloads are disabled; "
                            f"get it from {spec.urls[0]} or point --data-dir/${ENV_DATA_DIR} at a copy")
        _download(spec, path)
    digest = md5sum(path)
    if digest != spec.md5:
        raise DataError(f"{path}: checksum mismatch (md5 {digest}, expected {spec.md5}); delete it to re-download")
    return path


def _download(spec: DataFile, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data directory {path.parent}: {exc.strerror}") from None
    tmp = path.with_name(path.name + ".part")
    reasons = []
    for url in spec.urls:
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(tmp, "wb") as out:
                shutil.copyfileobj(resp, out)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reasons.append(f"{url}: {getattr(exc, 'reason', exc)}")
            tmp.unlink(missing_ok=True)
            continue
        if md5sum(tmp) != spec.md5:
            reasons.append(f"{url}: downloaded file has the wrong checksum")
            tmp.unlink(missing_ok=True)
            continue
        os.replace(tmp, path)
        return
    raise DataError(f"{path} is missing and could not be downloaded ({'; '.join(reasons)}); "
                    f"copy {spec.name} there or point --data-dir/${ENV_DATA_DIR} at a folder that has it")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) of unsigned bytes into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise DataError(f"{path}: IDX element type 0x{data[2]:02x} is not unsigned byte")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    count = int(np.prod(dims)) if dims else 0
    if len(data) - header != count:
        raise DataError(f"{path}: IDX payload has {len(data) - header} bytes, header says {count}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_cifar10(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one split of the CIFAR-10 python tarball (``data_batch_1..5`` or ``test_batch``).

    The batches are pickles; they are only read from a file whose MD5 matched the official one
    (see :func:`ensure_file`) or that the caller vouches for.
    """
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in names:
                if name not in members:
                    raise DataError(f"{path}: member {name} missing from the CIFAR-10 tarball")
                f = tar.extractfile(members[name])
                assert f is not None
                batch = pickle.load(f, encoding="bytes")  # noqa: S301 (checksum-verified official file)
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    except (tarfile.TarError, OSError, EOFError, KeyError, pickle.UnpicklingError, ValueError) as exc:
        raise DataError(f"{path}: cannot read CIFAR-10 tarball ({type(exc).__name__}: {exc})") from None
    return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits in [0, 1] with a fixed 80/20 split (seeded permutation)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the 'digits' dataset needs scikit-learn (pip install 'vfnn[demo]')") from None
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(y))
    n_test = int(round(len(y) * DIGITS_TEST_FRACTION))
    idx = order[n_test:] if split == "train" else order[:n_test]
    return np.ascontiguousarray(x[idx]), y[idx]
