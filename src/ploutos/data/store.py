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

from ploutos.data.bars import BAR_COLUMNS, BAR_SCHEMA, canonical, check_tickers, to_utc
from ploutos.errors import DataError, first_line

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
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"no dataset here (missing {MANIFEST}); run `ploutos data build`", path=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"manifest is not valid JSON ({first_line(err)})", path=str(file), rule="manifest") from None
    except (OSError, RecursionError) as err:  # a folder named manifest.json, no permission; JSON nested too deep
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise DataError(f"cannot read the manifest ({reason})", path=str(file), rule="manifest") from None
    if not isinstance(manifest, dict):
        raise DataError(
            f"manifest is a JSON {_json_type(manifest)}, not an object; rebuild with `ploutos data build`",
            path=str(file),
            rule="manifest",
        )
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"dataset format version {version!r} is not {FORMAT_VERSION}; rebuild it with this ploutos",
            path=str(file),
            rule="manifest",
        )
    problem = manifest_problem(manifest)
    if problem is not None:
        raise DataError(f"manifest field {problem}; rebuild with `ploutos data build`", path=str(file), rule="manifest")
    return manifest


_SESSIONS = ("regular", "extended", "24h", "24x7")


def manifest_problem(manifest: Mapping[str, Any]) -> str | None:
    """What is wrong with the shape of a manifest (``field: problem``), or None when readers can trust it.

    Checks what readers and builds use: every ticker's entry (its file where ploutos puts it, a row
    count, ISO times), the file checksums, the macro entries, and the dataset's identity fields.
    """
    for key in ("source", "session", "calendar", "on_invalid"):
        if not isinstance(manifest.get(key), str):
            return f"{key}: {_missing_or(manifest, key, 'a string')}"
    if manifest["session"] not in _SESSIONS:
        return f"session: {manifest['session']!r} is not one of {', '.join(_SESSIONS)}"
    for key in ("start", "end", "created", "updated", "ploutos_version"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            return f"{key}: expected a string or null, got {_json_type(manifest[key])}"
    if "max_gap_bars" in manifest and not _count(manifest["max_gap_bars"]):
        return f"max_gap_bars: expected a count, got {manifest['max_gap_bars']!r}"
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        return f"files: expected an object, got {_json_type(files)}"
    for rel, entry in files.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            return f"files: {rel!r} is not a path inside the dataset"
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            return f"files.{rel}.sha256: expected a hex digest"
    tickers = manifest.get("tickers")
    if not isinstance(tickers, dict):
        return f"tickers: {_missing_or(manifest, 'tickers', 'an object of ticker entries')}"
    for ticker, entry in tickers.items():
        where = f"tickers.{ticker}"
        if not isinstance(entry, dict):
            return f"{where}: expected an object, got {_json_type(entry)}"
        if entry.get("file") != ticker_file(ticker):
            return f"{where}.file: expected {ticker_file(ticker)!r}, got {entry.get('file')!r}"
        for key in ("rows", "session_dropped"):
            if not _count(entry.get(key, 0)):
                return f"{where}.{key}: expected a count, got {entry.get(key)!r}"
        for key in ("first", "last", "covered_start", "covered_end"):
            if entry.get(key) is not None and _iso_problem(entry[key]):
                return f"{where}.{key}: {_iso_problem(entry[key])}"
        if entry.get("covered_end") is None:
            return f"{where}.covered_end: missing"
    macro = manifest.get("macro", {})
    if not isinstance(macro, dict):
        return f"macro: expected an object, got {_json_type(macro)}"
    for name, entry in macro.items():
        if not isinstance(entry, dict) or entry.get("file") != macro_file(name):
            return f"macro.{name}.file: expected {macro_file(name)!r}"
        if not _count(entry.get("rows", 0)):
            return f"macro.{name}.rows: expected a count, got {entry.get('rows')!r}"
    repairs = manifest.get("repairs", [])
    if not isinstance(repairs, list) or not all(isinstance(r, dict) for r in repairs):
        return "repairs: expected a list of objects"
    counts = manifest.get("repair_counts", {})
    if not isinstance(counts, dict) or not all(
        isinstance(per, dict) and all(_count(n) for n in per.values()) for per in counts.values()
    ):
        return "repair_counts: expected an object of {rule: count} per ticker"
    return None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _iso_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected an ISO time, got {_json_type(value)}"
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return f"{value[:40]!r} is not an ISO time"
    return None


def _missing_or(manifest: Mapping[str, Any], key: str, expected: str) -> str:
    return "missing" if key not in manifest else f"expected {expected}, got {_json_type(manifest[key])}"


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


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
    frames = []
    for ticker in wanted:
        rel = manifest["tickers"][ticker]["file"]
        frames.append(canonical(_read_verified(root, manifest, rel, ticker=ticker), path=str(root / rel)))
    if not frames:
        return pl.DataFrame(schema=BAR_SCHEMA)
    return pl.concat(frames)


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
    frame = read_parquet(path, rule="schema")
    missing = [c for c in BAR_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}", path=str(path), rule="schema")
    check_tickers(frame, path=str(path))
    return canonical(to_utc(frame, path=str(path)), path=str(path))


def read_parquet(path: str | os.PathLike[str], *, ticker: str | None = None, rule: str = "file") -> pl.DataFrame:
    """A whole Parquet file; a file Polars cannot read (truncated, not Parquet) is a one-line :class:`DataError`."""
    try:
        return pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError, ValueError) as err:
        raise DataError(f"cannot read Parquet: {first_line(err)}", path=str(path), ticker=ticker, rule=rule) from None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(root: Path, manifest: Mapping[str, Any], rel: str) -> str | None:
    """Why ``rel`` does not match the manifest (missing, changed), or None when it does."""
    files = manifest.get("files", {})
    entry = files.get(rel) if isinstance(files, dict) else None
    if not isinstance(entry, dict):
        return "is not listed in the manifest"
    file = root / rel
    if not file.is_file():
        return "is missing"
    try:
        digest = sha256_file(file)
    except OSError as err:
        return f"cannot be read ({err.strerror or type(err).__name__})"
    if digest != entry.get("sha256"):
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
    except OSError as err:  # disk full, permissions: the previous version is still in place
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(
            f"cannot write the dataset ({err.strerror or type(err).__name__}); the previous version is unchanged",
            path=str(root),
        ) from None
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
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        handle = open(root.parent / f".{root.name}.lock", "a+")  # noqa: SIM115 - closed below, after the yield
    except OSError as err:
        raise DataError(
            f"cannot create the dataset here ({err.strerror or type(err).__name__}); check data.store", path=str(root)
        ) from None
    with handle:
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
    try:
        return read_parquet(root / rel, ticker=ticker)
    except DataError as err:
        raise DataError(f"{err}; rebuild with `ploutos data build`") from None


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
    """The file entries of the current manifest, or nothing when it cannot be trusted (it is being replaced)."""
    try:
        files = json.loads((root / MANIFEST).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError, RecursionError):
        return {}
    return dict(files) if isinstance(files, dict) else {}


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
