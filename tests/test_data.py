"""Dataset: sources, safe and atomic extraction, content checks, subsets, batching."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch

from conftest import SHARED_TARBALL, make_archive, need_dataset
from vaelab import data


def unreachable(url: str, dest: Path, timeout_s: float) -> None:
    raise OSError("network is unreachable (test)")


def test_prepare_from_local_copy(fake_archive, tmp_path):
    target = tmp_path / "data" / data.BATCHES_DIR
    origin = data.prepare([tmp_path / "missing.tar.gz", fake_archive], "http://invalid", "0" * 32, target,
                          fetch=unreachable)
    assert "local copy" in origin and str(fake_archive) in origin
    ds = data.load(target)
    assert ds.train_x.shape == (50_000, 3, 32, 32) and ds.test_x.shape == (10_000, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8
    assert ds.label_names[0] == "airplane"
    # Nothing temporary is left beside the target.
    assert sorted(p.name for p in target.parent.iterdir()) == [data.BATCHES_DIR]


def test_download_is_md5_checked(fake_archive, tmp_path):
    def fetch(url, dest, timeout_s):
        dest.write_bytes(fake_archive.read_bytes())

    target = tmp_path / data.BATCHES_DIR
    with pytest.raises(data.DatasetError, match="md5 .* does not match"):
        data.prepare([], "http://example/cifar.tar.gz", "0" * 32, target, fetch=fetch)
    assert not target.exists()
    md5 = data.md5sum(fake_archive)
    assert data.prepare([], "http://example/cifar.tar.gz", md5, target, fetch=fetch).startswith("download")
    assert (target / "test_batch").is_file()


def test_no_source_names_every_attempt(tmp_path):
    target = tmp_path / "d" / data.BATCHES_DIR
    with pytest.raises(data.DatasetError) as e:
        data.prepare([tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"], "http://nowhere/x.tar.gz", "0" * 32, target,
                     fetch=unreachable)
    msg = str(e.value)
    assert "a.tar.gz: not found" in msg and "b.tar.gz: not found" in msg
    assert "http://nowhere/x.tar.gz" in msg and "unreachable" in msg
    assert list(target.parent.iterdir()) == []


def test_corrupt_gzip_is_rejected_and_leaves_nothing(fake_archive, tmp_path):
    bad = tmp_path / "bad.tar.gz"
    blob = fake_archive.read_bytes()
    bad.write_bytes(blob[: len(blob) // 2])  # truncated download
    target = tmp_path / "out" / data.BATCHES_DIR
    with pytest.raises(data.DatasetError, match="bad.tar.gz"):
        data.prepare([bad], "http://nowhere", "0" * 32, target, fetch=unreachable)
    assert list(target.parent.iterdir()) == []
    bad.write_bytes(b"this is not gzip at all")
    with pytest.raises(data.DatasetError, match="not a readable .tar.gz"):
        data.prepare([bad], "http://nowhere", "0" * 32, target, fetch=unreachable)


def test_wrong_content_is_rejected(tmp_path):
    small = make_archive(tmp_path / "small.tar.gz", n_train_per_batch=100, n_test=100)
    with pytest.raises(data.DatasetError, match=r"expected uint8 \(50000, 3, 32, 32\)"):
        data.prepare([small], "http://nowhere", "0" * 32, tmp_path / "o" / data.BATCHES_DIR, fetch=unreachable)
    partial = make_archive(tmp_path / "partial.tar.gz", n_train_per_batch=100, n_test=100, drop=("test_batch",))
    with pytest.raises(data.DatasetError, match="missing test_batch"):
        data.prepare([partial], "http://nowhere", "0" * 32, tmp_path / "o" / data.BATCHES_DIR, fetch=unreachable)


def test_member_escaping_target_is_rejected(tmp_path):
    evil = make_archive(tmp_path / "evil.tar.gz", n_train_per_batch=10, n_test=10, extra={"../escaped.txt": b"x"})
    with pytest.raises(data.DatasetError, match="escapes the target folder"):
        data.prepare([evil], "http://nowhere", "0" * 32, tmp_path / "o" / data.BATCHES_DIR, fetch=unreachable)
    assert not (tmp_path / "escaped.txt").exists()


def test_symlink_member_is_rejected(tmp_path):
    path = tmp_path / "link.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(data.DatasetError, match="link or special file"):
        data.safe_extract(path, tmp_path / "x")


def test_subset_is_seeded_and_proportional(fake_archive, tmp_path):
    target = tmp_path / data.BATCHES_DIR
    data.prepare([fake_archive], "http://nowhere", "0" * 32, target, fetch=unreachable)
    a = data.load(target, subset=1000, seed=3)
    b = data.load(target, subset=1000, seed=3)
    assert len(a.train_x) == 1000 and len(a.test_x) == 200
    assert torch.equal(a.train_y, b.train_y) and torch.equal(a.test_y, b.test_y)


def test_batch_indices_cover_epoch_and_shard():
    g = torch.Generator().manual_seed(0)
    batches = list(data.batch_indices(103, 10, g))
    assert len(batches) == 10 and all(len(b) == 10 for b in batches)  # partial batch dropped in training
    assert len(torch.cat(batches).unique()) == 100
    ordered = torch.cat(list(data.batch_indices(103, 10, None)))
    assert torch.equal(ordered, torch.arange(103))  # evaluation keeps every image, in order
    shards = [torch.cat(list(data.batch_indices(100, 10, torch.Generator().manual_seed(0), r, 2))) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 50
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_unit_scale_roundtrip():
    x = torch.arange(256, dtype=torch.uint8).repeat(12).reshape(1, 3, 32, 32)
    u = data.to_unit(x)
    assert u.min() == -1 and u.max() == 1
    assert torch.equal(data.to_uint8(u), x)


@pytest.mark.slow
def test_real_cifar10_copy(tmp_path):
    need_dataset()
    target = tmp_path / data.BATCHES_DIR
    data.prepare([SHARED_TARBALL], "http://nowhere", "0" * 32, target, fetch=unreachable)
    ds = data.load(target)
    assert ds.train_y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert 100 < ds.train_x.float().mean() < 140
