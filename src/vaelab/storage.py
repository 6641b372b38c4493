"""Atomic file writes and model checkpoints: every output appears whole or not at all."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)  # atomic on POSIX: readers never see a truncated file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def save_model(path: str | Path, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """Save weights with the resolved config (plain types only, so loading needs no unpickling of objects)."""
    save_state(path, model.state_dict(), config)


def save_state(path: str | Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Save named tensors with a config of plain types, atomically; `load_state` reads them back."""
    state = {k: v.detach().cpu() for k, v in state.items()}
    # Through memory: torch.save names its zip records after the file it writes, which for an atomic write is a
    # random temporary name; a buffer's records are always named "archive", so the same weights give the same bytes.
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "config": config}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_state(path: str | Path, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and config saved by `save_model` (weights_only=True: nothing arbitrary is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path} (run its stage: dvc repro)")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    return ckpt["state_dict"], ckpt["config"]


def weights_md5(path: str | Path) -> str:
    """md5 of the weights in a file saved by `save_model` (names, dtypes, shapes and values, in name order): the
    model's identity, whatever else the file holds (its config, or the record names of files saved before
    `save_state` wrote through memory)."""
    state, _ = load_state(path)
    h = hashlib.md5()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())  # raw bytes, bf16 included
    return h.hexdigest()


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write a training checkpoint (tensors, numbers, strings, lists and dicts only) atomically."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """A checkpoint written by `save_checkpoint`, or None if there is none (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
