"""``mmgen data download polymnist``: fetch the official PolyMNIST archive and unpack it.

The download goes to ``<archive>.part`` and resumes with an HTTP Range request when run again
after a broken connection. The archive's sha256 is checked when one is known, and the zip is
unpacked into a staging folder (members that would land outside it are refused) that is renamed
into place only when complete, so a failure never leaves a half-unpacked dataset behind.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from mmgen.checkpoint import as_created
from mmgen.errors import DataError

from .make import sha256_file

#: The archive published with MoPoE-VAE (Sutter et al. 2021) on Zenodo.
DEFAULT_URL = "https://zenodo.org/record/4899160/files/PolyMNIST.zip"
#: Its sha256 is not published; pass ``--sha256`` to pin the archive you expect.
DEFAULT_SHA256: str | None = None
CHUNK = 1 << 16
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """``(first byte, total or None)`` of a ``Content-Range: bytes a-b/total`` header."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not match:
        return None
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": "mmgen-data-download", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def fetch(url: str, target: Path, sha256: str | None = None, progress=None, timeout: float = 60.0) -> str:
    """Download ``url`` to ``target`` via ``target.part``, resuming it; return the sha256.

    A broken connection keeps the ``.part`` file (the next call resumes it) and raises
    :class:`DataError`; a checksum mismatch deletes it, since resuming a wrong file cannot help.
    """
    target = Path(target)
    part = target.with_name(target.name + ".part")
    if target.is_file() and not part.exists():  # downloaded before, but unpacking did not finish
        os.replace(target, part)
    start = part.stat().st_size if part.is_file() else 0
    try:
        try:
            resp = _open(url, start, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not start:
                raise
            # Nothing left past our offset: the .part is either complete or longer than the file.
            size = (exc.headers.get("Content-Range") or "").rpartition("/")[2]
            exc.close()
            if size.isdigit() and int(size) == start:
                resp = None
            else:
                part.unlink()
                start = 0
                resp = _open(url, 0, timeout)
        if resp is not None:
            with resp:
                rng = _content_range(resp.headers.get("Content-Range"))
                if start and resp.status == 206 and rng is not None and rng[0] == start:
                    mode, total = "ab", rng[1]
                else:  # the server ignored the Range request: start over
                    mode, start = "wb", 0
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                task = progress.add_task(f"download {target.name}", total=total, completed=start) \
                    if progress is not None else None
                done = start
                with open(part, mode) as f:
                    for block in iter(lambda: resp.read(CHUNK), b""):
                        f.write(block)
                        done += len(block)
                        if task is not None:
                            progress.update(task, completed=done)
            if total is not None and done != total:
                raise DataError(f"download of {url} stopped after {done} of {total} bytes; "
                                f"run the command again to resume from {part}")
    except DataError:
        raise
    except urllib.error.HTTPError as exc:
        raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        kept = f"; run the command again to resume from {part}" if part.is_file() and part.stat().st_size else ""
        raise DataError(f"download of {url} failed ({_why(exc)}){kept}") from None
    digest = sha256_file(part)
    if sha256 and digest != sha256.lower():
        part.unlink()
        raise DataError(f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {digest} "
                        f"(the downloaded file was deleted)")
    os.replace(part, target)
    return digest


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack the zip ``archive`` into ``dest``; refuse it whole if any member would escape ``dest``."""
    root = Path(dest).resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = info.filename
                pure = PurePosixPath(name.replace("\\", "/"))
                inside = (root / pure).resolve()
                if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", name) \
                        or not inside.is_relative_to(root):
                    raise DataError(f"{archive}: member {name!r} would be written outside the destination folder; "
                                    "refusing to unpack")
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DataError(f"{archive}: member {name!r} is a symbolic link; refusing to unpack")
            zf.extractall(root)
    except zipfile.BadZipFile as exc:
        raise DataError(f"corrupt archive {archive}: {exc} (delete it to download again)") from None
    except (OSError, EOFError, zipfile.LargeZipFile) as exc:
        raise DataError(f"cannot unpack {archive}: {_why(exc)}") from None


def find_dataset_root(folder: Path, depth: int = 3) -> Path | None:
    """The shallowest folder under ``folder`` that holds a ``train/`` folder (``__MACOSX`` ignored)."""
    level = [folder]
    for _ in range(depth + 1):
        for p in level:
            if (p / "train").is_dir():
                return p
        level = [c for p in level for c in sorted(p.iterdir()) if c.is_dir() and c.name != "__MACOSX"]
    return None


def archive_name(url: str) -> str:
    """The archive's file name: the last path segment of ``url`` (``PolyMNIST.zip`` by default)."""
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    return name if re.fullmatch(r"[\w.\-]+", name or "") else "PolyMNIST.zip"


def download_polymnist(dest: Path, url: str = DEFAULT_URL, sha256: str | None = DEFAULT_SHA256,
                       force: bool = False, progress=None) -> tuple[Path, str | None]:
    """Download and unpack PolyMNIST into ``dest/<archive stem>``; return that path and the sha256.

    An existing dataset there is kept (``force`` replaces it). The digest is None when the dataset
    was already present.
    """
    if sha256 and not SHA256_HEX.match(sha256):
        raise DataError(f"--sha256 {sha256!r}: expected 64 hexadecimal digits")
    dest = Path(dest).expanduser()
    name = archive_name(url)
    final = dest / Path(name).stem
    if (final / "train").is_dir() and not force:
        return final, None
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {dest}: {_why(exc)}") from None
    archive = dest / name
    digest = fetch(url, archive, sha256, progress)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest))
    as_created(staging)  # (the dataset may be this folder itself, moved into place)
    try:
        safe_extract(archive, staging)
        root = find_dataset_root(staging)
        if root is None:
            raise DataError(f"{archive}: no train/ folder inside; is this a PolyMNIST archive? (kept for inspection)")
        if final.exists():
            shutil.rmtree(final)
        root.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()  # the unpacked copy is what the readers use; the zip would only double the space
    return final, digest
