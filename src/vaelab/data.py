"""CIFAR-10: find an archive, extract it safely and atomically, check its content, hold it as uint8 tensors."""
from __future__ import annotations

import hashlib
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
N_TRAIN, N_TEST, N_CLASSES = 50_000, 10_000, 10


class DatasetError(RuntimeError):
    """The dataset is missing, corrupt or has the wrong content; the message says what was tried."""


@dataclass(frozen=True)
class CIFAR10:
    """CIFAR-10 held in memory: images as uint8 (N, 3, 32, 32), labels as int64 (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    label_names: tuple[str, ...]


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 digest of a file."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        # latin1 decodes the Python 2 str keys of the official pickles, as torchvision does.
        return pickle.load(f, encoding="latin1")


def read_batches(batches_dir: Path) -> CIFAR10:
    """Load the python-version pickles of `batches_dir` into tensors (no content checks)."""
    batches_dir = Path(batches_dir)
    missing = [n for n in (*TRAIN_FILES, TEST_FILE, "batches.meta") if not (batches_dir / n).is_file()]
    if missing:
        raise DatasetError(f"{batches_dir} is missing {', '.join(missing)}; run the download stage (dvc repro download)")

    def split(names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for name in names:
            try:
                d = _unpickle(batches_dir / name)
                x = np.asarray(d["data"])
                y = np.asarray(d["labels"])
            except Exception as e:  # corrupt pickle, wrong keys: one clear message
                raise DatasetError(f"{batches_dir / name} is not a CIFAR-10 batch: {type(e).__name__}: {e}") from None
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x):
                raise DatasetError(
                    f"{batches_dir / name}: expected uint8 data of shape (N, 3072) and N labels, "
                    f"got {x.dtype} {x.shape} with {len(y)} labels"
                )
            xs.append(x)
            ys.append(y)
        # Rows are 1024 R, 1024 G, 1024 B values, each row-major: exactly (3, 32, 32).
        x = torch.from_numpy(np.concatenate(xs)).reshape(-1, 3, 32, 32)  # (N, 3, 32, 32)
        return x, torch.from_numpy(np.concatenate(ys).astype(np.int64))

    train_x, train_y = split(TRAIN_FILES)
    test_x, test_y = split([TEST_FILE])
    try:
        names = tuple(_unpickle(batches_dir / "batches.meta")["label_names"])
    except Exception as e:
        raise DatasetError(f"{batches_dir / 'batches.meta'} is unreadable: {type(e).__name__}: {e}") from None
    return CIFAR10(train_x, train_y, test_x, test_y, names)


def check_content(ds: CIFAR10) -> None:
    """Raise DatasetError unless `ds` is 50,000 + 10,000 32x32x3 uint8 images in 10 balanced classes."""
    for split, x, y, n in (("train", ds.train_x, ds.train_y, N_TRAIN), ("test", ds.test_x, ds.test_y, N_TEST)):
        if tuple(x.shape) != (n, 3, 32, 32) or x.dtype != torch.uint8:
            raise DatasetError(f"{split} images: expected uint8 ({n}, 3, 32, 32), got {x.dtype} {tuple(x.shape)}")
        if y.shape != (n,) or int(y.min()) < 0 or int(y.max()) >= N_CLASSES:
            raise DatasetError(f"{split} labels: expected {n} labels in 0..9")
        counts = torch.bincount(y, minlength=N_CLASSES).tolist()
        if counts != [n // N_CLASSES] * N_CLASSES:
            raise DatasetError(f"{split} classes are not balanced ({n // N_CLASSES} each): counts {counts}")
    if len(ds.label_names) != N_CLASSES:
        raise DatasetError(f"batches.meta lists {len(ds.label_names)} label names, expected {N_CLASSES}")


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a .tar.gz into `dest`, refusing members that escape it, links and special files."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts:
                    raise DatasetError(f"{archive}: member '{m.name}' escapes the target folder")
                if not (m.isfile() or m.isdir()):
                    raise DatasetError(f"{archive}: member '{m.name}' is a link or special file")
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise DatasetError(f"{archive} is not a readable .tar.gz: {type(e).__name__}: {e}") from None


def download(url: str, dest: Path, timeout_s: float) -> None:
    """Stream `url` to `dest` (a temporary path chosen by the caller)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f, length=1 << 20)


def prepare(
    sources: Sequence[Path],
    url: str,
    md5: str,
    target: Path,
    timeout_s: float = 60.0,
    fetch: Callable[[str, Path, float], None] = download,
) -> str:
    """Make `target` (a cifar-10-batches-py folder) from the first source that works; return its description.

    Local archives are tried in order, then `url` (whose md5 must match). Each candidate is extracted into a
    temporary folder beside `target`, content-checked, and only then renamed into place, so a failure leaves
    nothing behind. Raises DatasetError listing every attempt if none works.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tried: list[str] = []

    def install(archive: Path) -> None:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".extract-") as tmp:
            safe_extract(archive, Path(tmp))
            extracted = Path(tmp) / BATCHES_DIR
            check_content(read_batches(extracted))
            if target.exists():
                shutil.rmtree(target)
            extracted.rename(target)  # same filesystem: atomic

    for src in sources:
        src = Path(src)
        if not src.is_file():
            tried.append(f"local {src}: not found")
            continue
        try:
            install(src)
            return f"local copy {src.resolve()}"
        except DatasetError as e:
            tried.append(f"local {src}: {e}")

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        try:
            fetch(url, archive, timeout_s)
            got = md5sum(archive)
            if got != md5:
                raise DatasetError(f"md5 {got} does not match the expected {md5}")
            install(archive)
            return f"download {url}"
        except DatasetError as e:
            tried.append(f"{url}: {e}")
        except OSError as e:  # URLError, timeouts, refused connections, disk errors
            tried.append(f"{url}: {type(e).__name__}: {e}")

    raise DatasetError("no CIFAR-10 source worked:\n  - " + "\n  - ".join(tried))


def load(batches_dir: Path, subset: int = 0, seed: int = 0) -> CIFAR10:
    """Load the extracted dataset, optionally a seeded random subset (test cut in the same proportion)."""
    ds = read_batches(batches_dir)
    check_content(ds)
    if subset == 0 or subset >= N_TRAIN:
        return ds
    g = torch.Generator().manual_seed(seed)
    n_test = max(1, round(subset * N_TEST / N_TRAIN))
    tr = torch.randperm(N_TRAIN, generator=g)[:subset]
    te = torch.randperm(N_TEST, generator=g)[:n_test]
    return CIFAR10(ds.train_x[tr], ds.train_y[tr], ds.test_x[te], ds.test_y[te], ds.label_names)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float in [-1, 1] (the scale the model and likelihoods use)."""
    return x.float().mul_(2.0 / 255.0).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> uint8 in [0, 255]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator | None, rank: int = 0, world_size: int = 1
) -> Iterator[torch.Tensor]:
    """Index batches for one epoch: a seeded shuffle (None = in order), sharded by rank for DDP, last partial kept
    only when unshuffled (evaluation)."""
    if generator is None:
        order = torch.arange(n)
        drop_last = False
    else:
        order = torch.randperm(n, generator=generator)
        drop_last = True
    # Equal-length shards, so every DDP rank runs the same number of steps.
    order = order[: (n // world_size) * world_size][rank::world_size]
    stop = (len(order) // batch_size) * batch_size if drop_last else len(order)
    for i in range(0, stop, batch_size):
        yield order[i : i + batch_size]
