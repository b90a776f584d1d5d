"""The bars dataset on disk: Parquet per ticker, macro series, and a manifest with checksums.

Layout (hive style, one file per ticker so an update rewrites only what changed)::

    STORE/manifest.json
    STORE/ticker=SPY/data.parquet
    STORE/macro/VIX.parquet

A dataset is never modified in place. :func:`replace_store` assembles the new version in a
temporary sibling directory (unchanged files are hard links, so their bytes and mtimes stay),
then swaps it in with two renames. A build that raises or is killed leaves the previous dataset
intact; if it dies between the two renames the previous version sits in ``.NAME.old-*`` and is
renamed back by the next build (readers use it meanwhile). Leftover temporaries are removed by the
next build, which holds an exclusive lock so two builds never clean up each other's work.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import polars as pl

from ploutos.data.bars import BAR_COLUMNS, BAR_SCHEMA, canonical, to_utc
from ploutos.errors import DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_TMP, _OLD = "tmp", "old"


def ticker_file(ticker: str) -> str:
    """Relative path of a ticker's Parquet file; the ticker is %-escaped (``BRK/B`` -> ``BRK%2FB``)."""
    return f"ticker={quote(ticker, safe='')}/data.parquet"


def macro_file(name: str) -> str:
    """Relative path of a macro series' Parquet file."""
    return f"macro/{quote(name, safe='')}.parquet"


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the dataset at ``path`` (or of the intact previous version after a killed swap)."""
    root = _readable_root(Path(path))
    file = root / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise DataError(f"no dataset here (missing {MANIFEST}); run `ploutos data build`", path=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"manifest is not valid JSON ({err})", path=str(file), rule="manifest") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"dataset format version {version} is not {FORMAT_VERSION}; rebuild it with this ploutos",
            path=str(file),
            rule="manifest",
        )
    return manifest


def read_dataset(path: str | os.PathLike[str], tickers: Iterable[str] | None = None) -> pl.DataFrame:
    """Bars of ``tickers`` (default: all, manifest order), each file checked against its sha256 first."""
    root = _readable_root(Path(path))
    manifest = read_manifest(root)
    known: list[str] = list(manifest["tickers"])
    wanted = known if tickers is None else list(tickers)
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise DataError(
            f"ticker(s) {', '.join(unknown)} not in the dataset (has {', '.join(known)}); add them to data.tickers "
            "and run `ploutos data build`",
            path=str(path),
        )
    frames = [_read_verified(root, manifest, manifest["tickers"][t]["file"], ticker=t) for t in wanted]
    if not frames:
        return pl.DataFrame(schema=BAR_SCHEMA)
    return pl.concat([canonical(f, path=str(root)) for f in frames])


def read_macro(path: str | os.PathLike[str], names: Iterable[str] | None = None) -> dict[str, pl.DataFrame]:
    """Stored macro series (``date, value, published_at``) by name, checksums verified."""
    root = _readable_root(Path(path))
    manifest = read_manifest(root)
    entries: dict[str, Any] = manifest.get("macro", {})
    wanted = list(entries) if names is None else list(names)
    missing = [n for n in wanted if n not in entries]
    if missing:
        raise DataError(
            f"macro series {', '.join(missing)} not in the dataset; set data.macro and rebuild", path=str(path)
        )
    return {name: _read_verified(root, manifest, entries[name]["file"]) for name in wanted}


def read_bars_file(path: str | os.PathLike[str]) -> pl.DataFrame:
    """One Parquet file of bars with the canonical columns, timestamps made UTC (naive read as UTC)."""
    try:
        frame = pl.read_parquet(path)
    except (OSError, pl.exceptions.ComputeError) as err:
        raise DataError(f"cannot read Parquet: {str(err).splitlines()[0]}", path=str(path), rule="schema") from None
    missing = [c for c in BAR_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}", path=str(path), rule="schema")
    return canonical(to_utc(frame, path=str(path)), path=str(path))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(root: Path, manifest: Mapping[str, Any], rel: str) -> str | None:
    """Why ``rel`` does not match the manifest (missing, changed), or None when it does."""
    entry = manifest.get("files", {}).get(rel)
    if entry is None:
        return "is not listed in the manifest"
    file = root / rel
    if not file.is_file():
        return "is missing"
    if sha256_file(file) != entry["sha256"]:
        return "was changed or corrupted after the build (sha256 differs from the manifest)"
    return None


def replace_store(
    path: str | os.PathLike[str],
    manifest: dict[str, Any],
    write: Mapping[str, pl.DataFrame],
    keep: Iterable[str] = (),
) -> dict[str, Any]:
    """Atomically make ``path`` hold ``write`` (new files) plus ``keep`` (files of the current version).

    Fills ``manifest["files"]`` with the sha256 and size of every file and writes it last. Call it
    inside :func:`store_lock`. Returns the manifest as written.
    """
    root = Path(path)
    root.parent.mkdir(parents=True, exist_ok=True)
    _refuse_foreign(root)
    tmp = _sibling(root, _TMP)
    try:
        files: dict[str, Any] = {}
        old_files = _current_files(root)
        for rel in keep:
            _link_or_copy(root / rel, tmp / rel)
            files[rel] = old_files.get(rel) or _describe(tmp / rel)
        for rel, frame in write.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(target, compression="zstd", statistics=True)
            _fsync(target)
            files[rel] = _describe(target)
        manifest = {**manifest, "files": dict(sorted(files.items()))}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        _fsync(tmp / MANIFEST)
        _swap(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


@contextlib.contextmanager
def store_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on the store, recover a killed swap, and remove leftover temporaries.

    The lock is ``flock`` on ``.NAME.lock`` (released by the kernel if the process dies); on a
    filesystem without flock support building proceeds unlocked.
    """
    root = Path(path)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a+") as handle:
        _flock(handle, root)
        recover(root)
        yield


def recover(root: Path) -> None:
    """Put back a previous version stranded by a killed swap and delete leftover temporaries."""
    if not root.exists():
        stranded = _siblings(root, _OLD)
        intact = [p for p in stranded if (p / MANIFEST).is_file()]
        if intact:
            os.rename(max(intact, key=lambda p: p.stat().st_mtime), root)
    for leftover in _siblings(root, _TMP) + _siblings(root, _OLD):
        shutil.rmtree(leftover, ignore_errors=True)


def now_iso() -> str:
    """Current UTC time as an ISO string for manifests."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _read_verified(root: Path, manifest: Mapping[str, Any], rel: str, *, ticker: str | None = None) -> pl.DataFrame:
    problem = verify_file(root, manifest, rel)
    if problem:
        raise DataError(
            f"{problem}; rebuild with `ploutos data build`", path=str(root / rel), ticker=ticker, rule="checksum"
        )
    return pl.read_parquet(root / rel)


def _readable_root(root: Path) -> Path:
    """``root``, or the intact previous version if a swap was interrupted between its two renames."""
    if root.exists():
        return root
    stranded = [p for p in _siblings(root, _OLD) if (p / MANIFEST).is_file()]
    return max(stranded, key=lambda p: p.stat().st_mtime) if stranded else root


def _refuse_foreign(root: Path) -> None:
    if root.is_dir() and not (root / MANIFEST).is_file() and any(root.iterdir()):
        raise DataError(f"{root} exists but holds no {MANIFEST}; refusing to replace a directory ploutos did not build")
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} exists and is not a directory")


def _current_files(root: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((root / MANIFEST).read_text()).get("files", {}))
    except (OSError, ValueError):
        return {}


def _describe(file: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(file), "bytes": file.stat().st_size}


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _swap(tmp: Path, root: Path) -> None:
    """Rename ``tmp`` to ``root``; an existing ``root`` is moved aside first and deleted after."""
    _fsync_dir(tmp)
    if root.exists():
        old = _sibling(root, _OLD, create=False)
        os.rename(root, old)
        os.rename(tmp, root)
        _fsync_dir(root.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, root)
        _fsync_dir(root.parent)


def _sibling(root: Path, kind: str, *, create: bool = True) -> Path:
    path = root.parent / f".{root.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if create:
        path.mkdir()
    return path


def _siblings(root: Path, kind: str) -> list[Path]:
    if not root.parent.is_dir():
        return []
    return sorted(root.parent.glob(f".{root.name}.{kind}-*"))


def _flock(handle: Any, root: Path) -> None:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DataError("another `ploutos data build` is writing this dataset; wait for it", path=str(root)) from None
    except OSError:  # filesystem without flock (some NFS/Lustre mounts)
        return


def _fsync(file: Path) -> None:
    with open(file, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
