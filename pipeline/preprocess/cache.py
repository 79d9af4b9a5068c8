"""The on-disk 16-bit preprocessing cache shared by every trial with the same configuration.

Layout (``cache_root/<config key>/``)::

    config.json                     the configuration and code version (self-description)
    stat_index.json                 {absolute path: [size, mtime_ns, content hash]}
    objects/ab/<content hash>.json        sidecar: de-identified meta, the out-of-scope
                                          decision and one record per crop
    objects/ab/<content hash>-<i>.npy     crop i, uint16 (H, W)
    objects/ab/<content hash>.lock        the entry's lock file (held while it is being built)

An entry is keyed by the file's content hash, so renamed or copied files hit the
cache and an edited file misses it. The stat index remembers (size, mtime_ns) ->
hash per path, so a warm run neither re-hashes nor decodes an unchanged file: it
costs one ``os.stat`` and one small JSON read per file.

Concurrency: an entry is built under its own file lock (``flock``) and published by writing
the arrays first and the sidecar last, each to a temporary file renamed into
place; a sidecar's presence therefore means a complete entry. A second process
that wanted the same entry waits on the lock and then finds it built. The stat
index is merged under its own lock. Object writes skip ``fsync`` (the cache can be
rebuilt; an entry damaged by a power cut fails to load with a message naming the
file to delete); the stat index and ``config.json`` go through
:func:`pipeline.io.atomic_write_json`.

Unreadable files are recorded in :attr:`CacheIndex.errors` and never stop a build;
they are retried on the next build (an installed codec may fix them).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from filelock import FileLock
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from threadpoolctl import threadpool_limits

from pipeline.deid import resolve_salt
from pipeline.dicom import read_meta
from pipeline.io import atomic_write_json, cache_home, content_hash
from pipeline.preprocess.chain import RadiographLike, preprocess
from pipeline.preprocess.config import PREPROCESS_VERSION, PreprocessConfig
from pipeline.preprocess.cropfirst import process_file
from pipeline.preprocess.scope import ScopeDecision, decide_image
from pipeline.preprocess.steps import PreprocessWarning

try:
    import fcntl  # POSIX: entry locks die with their process
except ImportError:  # Windows: filelock's locks instead
    fcntl = None

Reader = Callable[..., RadiographLike]

LOCK_TIMEOUT_S = 3600.0
_COUNTERS = {"stat_hit": "stat_hits", "hash_hit": "hash_hits", "built": "built"}


def default_cache_root() -> Path:
    """``$RADSEARCH_CACHE/preprocess`` (default ``./.cache/radsearch/preprocess``)."""
    return cache_home() / "preprocess"


@dataclass(frozen=True, kw_only=True)
class CacheEntry:
    """One cached crop of one file."""

    file: str  # the file as the caller named it (relative to data_dir when given)
    content_hash: str  # XXH3-128 of the file's bytes (pipeline.io.content_hash)
    crop: int  # crop number within the file (bilateral: 0 and 1)
    laterality: str | None
    array_path: str  # the uint16 .npy
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in the source image
    confidence: float
    fallback: bool
    meta: dict[str, Any]  # de-identified meta of the file
    # the file's out-of-scope decision (ScopeDecision.to_dict(): scope, score, in_scope,
    # knee, reason); None in an entry written before the decision existed
    scope: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class CacheError:
    """A file that could not be read or preprocessed."""

    file: str
    error: str  # exception class name (DicomError subclass, ...)
    reason: str  # its one-line message


@dataclass(kw_only=True)
class CacheIndex:
    """The result of :func:`build_cache`: entries, errors and what the build did."""

    root: Path
    config: PreprocessConfig
    entries: list[CacheEntry] = field(default_factory=list)
    errors: list[CacheError] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)  # stat_hits, hash_hits, built, errors

    @staticmethod
    def load(entry: CacheEntry) -> np.ndarray:
        """The cached crop: uint16 (H, W)."""
        try:
            return np.load(entry.array_path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise OSError(
                f"{entry.array_path}: cannot load cached crop of {entry.file} ({e}); "
                f"delete {Path(entry.array_path).with_name(entry.content_hash + '.json')} to rebuild it"
            ) from e

    def __len__(self) -> int:
        return len(self.entries)

    def out_of_scope(self) -> list[tuple[str, str]]:
        """(file, reason) of every file whose pixels say it is not a frontal knee."""
        seen: dict[str, str] = {}
        for e in self.entries:
            if e.scope is not None and not e.scope.get("in_scope", True):
                seen.setdefault(e.file, str(e.scope.get("reason", "out of scope")))
        return list(seen.items())

    def summary(self) -> str:
        # out-of-scope images are no knees to find: only the kept ones count
        fallbacks = sum(e.fallback for e in self.entries if (e.scope or {}).get("in_scope", True))
        s = self.stats
        out = self.out_of_scope()
        kinds = Counter(reason.partition(" (")[0] for _, reason in out)
        detail = f" ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})" if out else ""
        return (
            f"{len(self.entries)} crops from {s.get('files', 0)} files in {self.root} "
            f"({s.get('stat_hits', 0)} unchanged, {s.get('hash_hits', 0)} found by content, "
            f"{s.get('built', 0)} built, {len(self.errors)} unreadable, {fallbacks} centre-crop fallbacks); "
            f"{len(out)} files out of scope by their pixels{detail}"
        )


# --------------------------------------------------------------------------- file helpers


def _write_replace(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``.

    The temporary name is unique to this process and thread (created exclusively),
    which is all a concurrent writer needs and cheaper than ``tempfile.mkstemp``.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileExistsError:  # left by a crashed process that had our pid and thread id
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _entry_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing) for the duration.

    POSIX ``flock`` on an open descriptor: released when the descriptor closes,
    also when the process dies, so a crashed builder never leaves a stale lock.
    Elsewhere, :class:`filelock.FileLock`. The (empty) lock files stay.
    """
    if fcntl is None:
        with FileLock(str(path), timeout=LOCK_TIMEOUT_S):
            yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _jsonable(obj: Any) -> Any:
    """Meta values as JSON types (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)


def salt_id(salt: str | bytes | None) -> str:
    """A fingerprint of the pseudonym salt, so entries built under another salt are refreshed.

    The salt itself is never stored; this is a one-way digest of it.
    """
    return hashlib.sha256(b"radsearch-cache-salt-id:" + resolve_salt(salt)).hexdigest()[:16]


class _Store:
    """Paths and atomic reads/writes of one configuration's cache folder."""

    def __init__(self, root: Path):
        self.root = root

    def sidecar(self, sha: str) -> Path:
        return self.root / "objects" / sha[:2] / f"{sha}.json"

    def array(self, sha: str, i: int) -> Path:
        return self.root / "objects" / sha[:2] / f"{sha}-{i}.npy"

    def lock(self, sha: str) -> contextlib.AbstractContextManager[None]:
        path = self.root / "objects" / sha[:2] / f"{sha}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return _entry_lock(path)

    def read_sidecar(self, sha: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.sidecar(sha).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, or damaged (power cut): rebuild
            return None
        return data if isinstance(data, dict) and data.get("content_hash") == sha else None

    def write_entry(
        self,
        sha: str,
        crops: Sequence[Any],
        meta: Mapping[str, Any],
        salt: str,
        scope: ScopeDecision | None = None,
    ) -> dict[str, Any]:
        records = []
        for i, c in enumerate(crops):
            _write_replace(self.array(sha, i), _npy_bytes(c.image))
            records.append(
                {
                    "crop": i,
                    "laterality": c.laterality,
                    "box": [int(v) for v in c.box],
                    "confidence": round(float(c.confidence), 6),
                    "fallback": bool(c.fallback),
                    "shape": list(c.image.shape),
                }
            )
        sidecar = {
            "content_hash": sha,
            "version": PREPROCESS_VERSION,
            "salt_id": salt,
            "meta": _jsonable(meta),
            "scope": scope.to_dict() if scope is not None else None,
            "crops": records,
        }
        return self.write_sidecar(sha, sidecar)

    def write_sidecar(self, sha: str, sidecar: dict[str, Any]) -> dict[str, Any]:
        _write_replace(self.sidecar(sha), (json.dumps(sidecar, indent=1) + "\n").encode("utf-8"))
        return sidecar

    def entries(self, file: str, sidecar: Mapping[str, Any]) -> list[CacheEntry]:
        sha = sidecar["content_hash"]
        return [
            CacheEntry(
                file=file,
                content_hash=sha,
                crop=int(r["crop"]),
                laterality=r["laterality"],
                array_path=str(self.array(sha, int(r["crop"]))),
                box=tuple(int(v) for v in r["box"]),  # type: ignore[arg-type]
                confidence=float(r["confidence"]),
                fallback=bool(r["fallback"]),
                meta=dict(sidecar["meta"]),
                scope=sidecar.get("scope"),
            )
            for r in sidecar["crops"]
        ]


# --------------------------------------------------------------------------- one file


@dataclass(frozen=True)
class _Job:
    """What every file of one build needs, sent (pickled) to the worker processes."""

    root: str  # the configuration's cache folder
    config: PreprocessConfig
    salt: str | bytes | None
    sid: str  # salt_id(salt)
    reader: Reader | None  # None: decode once and preprocess crop-first


def _process(path: str, job: _Job, sha: str | None = None) -> dict[str, Any]:
    """Hash, look up and (on a miss) decode, preprocess and store one file.

    Returns ``{"path", "sha", "size", "mtime_ns", "sidecar", "how"}`` or ``{"path", "error", "reason"}``.
    Runs in worker processes: everything it needs comes in its arguments.
    """
    config, salt, sid, reader = job.config, job.salt, job.sid, job.reader
    store = _Store(Path(job.root))
    try:
        st = os.stat(path)
        if sha is None:
            sha = content_hash(path)
        how = "hash_hit"
        sidecar = store.read_sidecar(sha)
        if sidecar is None:
            with store.lock(sha):
                sidecar = store.read_sidecar(sha)  # built by another process meanwhile?
                if sidecar is None:
                    # an unsure localisation is recorded in the entry (``fallback``) and
                    # counted once in the summary, not printed per file with its path
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", PreprocessWarning)
                        crops, meta, scope = _build(path, config, salt, reader)
                    sidecar = store.write_entry(sha, crops, meta, sid, scope)
                    how = "built"
        if sidecar.get("salt_id") != sid:  # pseudonyms from another salt: refresh the meta only
            meta = read_meta(path, salt=salt)
            with store.lock(sha):
                sidecar = store.write_sidecar(sha, dict(sidecar, meta=_jsonable(meta), salt_id=sid))
        return {
            "path": path,
            "sha": sha,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sidecar": sidecar,
            "how": how,
        }
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # recorded, never stops the build
        return _error(path, e, str(e).splitlines()[0] if str(e) else repr(e))


def _error(path: str, e: BaseException, reason: str) -> dict[str, Any]:
    return {"path": path, "error": type(e).__name__, "reason": reason}


def _build(
    path: str, config: PreprocessConfig, salt: str | bytes | None, reader: Reader | None
) -> tuple[list[Any], dict[str, Any], Any]:
    """The crops, meta and out-of-scope decision of one file."""
    if reader is None:  # decode once, preprocess crop-first
        return process_file(path, config, salt=salt)
    radiograph = reader(path, salt=salt)
    return preprocess(radiograph, config), radiograph.meta, decide_image(radiograph.image)


def _process_chunk(paths: list[tuple[str, str | None]], job: _Job) -> list[dict[str, Any]]:
    return [_process(p, job, sha) for p, sha in paths]


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """OpenCV and BLAS on one thread for the duration (restored after).

    The steps work on small images, where thread pools cost more than they give,
    and stall badly when the CPUs are shared; a build is parallel over processes.
    """
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        cv2.setNumThreads(before)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # parallel over processes, not threads
    threadpool_limits(limits=1)


# --------------------------------------------------------------------------- stat index


def _load_stat_index(path: Path) -> dict[str, list[Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _merge_stat_index(root: Path, updates: Mapping[str, list[Any]]) -> None:
    if not updates:
        return
    path = root / "stat_index.json"
    with _entry_lock(root / "stat_index.lock"):
        index = _load_stat_index(path)
        index.update(updates)
        atomic_write_json(path, index, indent=None)


# --------------------------------------------------------------------------- build


def _display_name(path: Path, given: str, data_dir: Path | None) -> str:
    if data_dir is not None:
        with contextlib.suppress(ValueError):
            return path.relative_to(data_dir).as_posix()
    return given


def build_cache(
    files: Iterable[str | os.PathLike[str]],
    config: PreprocessConfig,
    cache_root: str | os.PathLike[str] | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
    salt: str | bytes | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    reader: Reader | None = None,
) -> CacheIndex:
    """Preprocess ``files`` into ``cache_root/<config.key()>/``, reusing what is there.

    ``workers`` > 1 builds in that many processes. ``data_dir``: relative ``files``
    are resolved against it and entries name files relative to it (as the labels
    CSV does). ``reader(path, salt=...)`` decodes a file (default
    :func:`pipeline.dicom.read_radiograph`; must be picklable when ``workers`` > 1).
    Returns a :class:`CacheIndex` whose entries follow the order of ``files``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    base = Path(data_dir).resolve() if data_dir is not None else None
    root = Path(cache_root if cache_root is not None else default_cache_root()) / config.key()
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "config.json").exists():
        atomic_write_json(root / "config.json", {"version": PREPROCESS_VERSION, **config.to_dict()})
    store = _Store(root)
    sid = salt_id(salt)

    requests: list[tuple[str, str]] = []  # (display name, absolute path)
    for f in files:
        p = Path(f)
        if base is not None and not p.is_absolute():
            p = base / p
        p = p.absolute()
        requests.append((_display_name(p, os.fspath(f), base), str(p)))

    results, todo = _stat_hits(requests, _load_stat_index(root / "stat_index.json"), store, sid)
    if todo:
        job = _Job(str(root), config, salt, sid, reader)
        for r in _run(todo, job, workers=workers, progress=progress):
            results[r["path"]] = r

    index = CacheIndex(root=root, config=config)
    updates: dict[str, list[Any]] = {}
    counts = {"files": len(requests), "stat_hits": 0, "hash_hits": 0, "built": 0, "errors": 0}
    for name, path in requests:
        r = results[path]
        if "error" in r:
            index.errors.append(CacheError(file=name, error=r["error"], reason=r["reason"]))
            counts["errors"] += 1
            continue
        counts[_COUNTERS[r["how"]]] += 1
        if "size" in r:
            updates[path] = [r["size"], r["mtime_ns"], r["sha"]]
        index.entries.extend(store.entries(name, r["sidecar"]))
    index.stats = counts
    _merge_stat_index(root, updates)
    return index


def _stat_hits(
    requests: list[tuple[str, str]], stat_index: Mapping[str, list[Any]], store: _Store, sid: str
) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str | None]]]:
    """Which requested files the stat index answers (unchanged size and mtime, entry built
    under this salt), which cannot be read, and which need work: (results by path, todo).

    A todo item is (path, known content hash or None).
    """
    results: dict[str, dict[str, Any]] = {}
    todo: list[tuple[str, str | None]] = []
    for _, path in requests:
        if path in results:
            continue
        rec = stat_index.get(path)
        try:
            st = os.stat(path)
        except OSError as e:
            results[path] = _error(path, e, f"{path}: {e.strerror or e}")
            continue
        if rec and rec[0] == st.st_size and rec[1] == st.st_mtime_ns:
            sidecar = store.read_sidecar(rec[2])
            if sidecar is not None and sidecar.get("salt_id") == sid:
                results[path] = {"path": path, "sha": rec[2], "sidecar": sidecar, "how": "stat_hit"}
                continue
            todo.append((path, rec[2]))  # known content, entry missing: rebuild without re-hashing
        else:
            todo.append((path, None))
    return results, todo


def _run(
    todo: list[tuple[str, str | None]],
    job: _Job,
    *,
    workers: int,
    progress: bool,
) -> list[dict[str, Any]]:
    bar = Progress(
        TextColumn("preprocess"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        disable=not progress,
        transient=True,
    )
    out: list[dict[str, Any]] = []
    with bar:
        task = bar.add_task("preprocess", total=len(todo))
        if workers == 1 or len(todo) == 1:
            with single_threaded():
                for item in todo:
                    out.extend(_process_chunk([item], job))
                    bar.advance(task)
            return out
        # Small chunks keep both processes busy to the end and the bar moving.
        size = max(1, min(16, len(todo) // (workers * 4)))
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding OpenCV threads
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker
        ) as pool:
            pending = {pool.submit(_process_chunk, c, job): len(c) for c in chunks}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    out.extend(fut.result())
                    bar.advance(task, pending.pop(fut))
    return out
