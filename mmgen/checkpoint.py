"""Checkpoints: written atomically, read without executing code.

A checkpoint is a plain dict of tensors and plain data (the resolved config, plugin versions,
RNG states), so it loads with ``torch.load(weights_only=True)``: nothing in it is unpickled as an
object. It is written to a temporary file in the same folder, fsynced and renamed over the old
one, so a kill at any moment leaves either the previous checkpoint or the new one, never half.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch

from mmgen import __version__
from mmgen.errors import CheckpointError, MMGenError

FORMAT = "mmgen-checkpoint-v1"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_created(path: str | Path) -> None:
    """Give a temporary file or folder the permissions ``open()`` or ``mkdir()`` would have given
    it (0666 / 0777 less the umask): ``mkstemp``/``mkdtemp`` make them private (0600 / 0700), which
    renamed into place would hide runs, checkpoints and datasets from the other users of a shared
    file system."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def staging_folder(out: Path) -> Path:
    """A new hidden folder beside ``out`` to build ``out`` in and rename into place, with the
    permissions ``mkdir`` gives. Its name records this host and process
    (``.NAME.tmp-HOST-PID-<random suffix>``), so that the left-overs of a build on this host whose process
    is gone (killed before it could clean up) are found and removed here first; a build still
    running, or one on another host of a shared file system, is left alone."""
    prefix = f".{out.name}.tmp-{socket.gethostname()}-"
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob(glob.escape(prefix) + "*"):
        pid = old.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=out.parent))
    as_created(tmp)
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (temp file, fsync, rename, fsync the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        as_created(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    as_created(tmp)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Torch's RNG states (CPU and every CUDA device)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, *, config: dict, plugins: dict[str, str], model: dict, optimizer: dict,
                    progress: dict[str, int], extra: dict | None = None,
                    rng_per_process: list[dict[str, Any]] | None = None) -> None:
    """Write a training checkpoint atomically. ``rng_per_process``: in a multi-process run, every
    process's :func:`rng_state` (by rank), so that each goes on with its own random stream."""
    state = {
        "format": FORMAT,
        "mmgen_version": __version__,
        "config": config,
        "plugins": plugins,
        "model": model,
        "optimizer": optimizer,
        "progress": progress,
        "rng": rng_state(),
        "extra": extra or {},
    }
    if rng_per_process is not None:
        state["rng_per_process"] = rng_per_process
    atomic_save(state, path)


def process_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of process ``rank``'s random stream in a multi-process run (rank 0 keeps ``seed``'s
    own stream): distinct per process, so that the processes do not draw the same noise (the same
    reparameterisation samples, the same prior Langevin negatives) on their different batches."""
    digest = hashlib.sha256(f"mmgen-process-seed:{seed}:{rank}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def safe_load(path: str | Path, what: str, problem: str, error: type[MMGenError] = MMGenError) -> Any:
    """``torch.load(weights_only=True)`` (plain data and tensors only, never code), with a missing
    or unreadable file reported as one line: ``{what} not found: PATH`` / ``{what} PATH {problem} (...)``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise error(f"{what} {path} {problem} ({load_failure(exc)})") from None


def load_failure(exc: Exception) -> str:
    """What a failed ``torch.load`` says about the file, in a few words (torch's own messages run
    to several sentences of advice that does not apply here)."""
    text = str(exc).strip()
    if text.startswith("Weights only load failed"):
        # The reason is the part after torch's advice ("Unsupported global: ...", ...).
        reason = next((line.strip() for line in text.splitlines()[1:] if line.strip()
                       and not line.startswith(("Please", "Check", "WeightsUnpickler", "(1)", "(2)", "	"))), "")
        return "not a PyTorch file of tensors and plain data" + (f": {reason[:120]}" if reason else "")
    if text.startswith("PytorchStreamReader failed"):
        return "not a complete PyTorch zip archive: " + text.split(":", 1)[1].split(".")[0].strip()
    first = (text.splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; a missing, truncated or foreign file is a one-line error."""
    ckpt = safe_load(path, "checkpoint", "is corrupt or truncated", CheckpointError)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mmgen checkpoint (expected format {FORMAT})")
    return ckpt
