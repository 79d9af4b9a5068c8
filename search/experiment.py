"""The experiment folder ``results/<name>/``: everything one search leaves behind.

Its files are listed in ``results/README.md``: the resolved space without local paths
(``space.yaml``), the Ax state, ``experiment.json`` (sessions, status and one record per
trial), ``trials.csv``, ``history.jsonl``, ``best.yaml``, each trial's checkpoint folder
(``checkpoints/trial-0007/``), offline W&B runs, the report and ``final/``.

The folder can be shared: it holds no local path of the data, no host name and no user
name (see :mod:`search.privacy`). What is not for sharing lives beside it, in
``results/.local/<experiment id>/`` (the id is in ``experiment.json``; on a Ray cluster
it is on the shared file system with ``results/``, as Ray Tune's folder must be):
``paths.json`` (where the data is, read by resume), ``sessions.json`` (each session's
cluster address, command line, host and pid), Ray Tune's ``ray/session-N/`` and W&B's
debug logs (``wandb-logs/``).

Without it (the folder was copied alone), ``resume`` and ``promote`` refuse until the
data location is given again (``python -m search resume results/<name> --data DIR``).

State files are written atomically (temporary file, then rename), so a driver killed at
any moment leaves each of them either before or after a change, never half-written; a
full disk stops the driver with :class:`ExperimentDiskFull` and keeps the last good
state. ``.lock`` is held (``flock``) while a driver works on the folder, so a second run
or resume of the same experiment refuses to start, naming the driver that holds it; the
kernel releases it if the driver dies.

Fault injection for tests: ``RADSEARCH_TEST_KILL_AT=POINT:N`` makes the driver SIGKILL
itself the N-th time it passes ``POINT`` (``save_ax``: between the Ax state's temporary
file and its rename; ``save_state``, ``write_tables``: just before those writes).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from filelock import FileLock, Timeout

import pipeline
from search.privacy import ADDRESS, public_command, public_text, stow_wandb_logs
from search.sections import DataSection
from search.space import SpaceConfig
from search.statefiles import (
    DataLocationUnknown,
    ExperimentError,
    ExperimentLocked,
    disk_full_is_clear,
    display_path,
    fault_point,
    now_iso,
    resume_command,
)
from search.tables import QUEUED, RUNNING, TrialTables
from search.values import finite

if TYPE_CHECKING:
    from ax import Client

STATE_FILE = "experiment.json"
AX_FILE = "ax_state.json"
SPACE_FILE = "space.yaml"
TRIALS_FILE = "trials.csv"
HISTORY_FILE = "history.jsonl"
BEST_FILE = "best.yaml"
LOCK_FILE = ".lock"
LOCK_OWNER_FILE = ".lock.owner"
CHECKPOINTS_DIR = "checkpoints"
#: beside the experiment folders: what is not for sharing, one folder per experiment id
LOCAL_DIR = ".local"
PATHS_FILE = "paths.json"
SESSIONS_FILE = "sessions.json"
#: the data section's local paths: kept in ``results/.local/<id>/paths.json``, never in
#: the experiment folder (folder names can name patients); the first two are needed to go on
LOCAL_KEYS = ("data_dir", "labels", "cache_dir")
REQUIRED_LOCAL_KEYS = ("data_dir", "labels")


def _source_name(source: str) -> str:
    """The space file as recorded: a path relative to the working folder as given, else
    its name only (an absolute path names the user's folders)."""
    parts = Path(source).parts
    if source.startswith("<") or not parts:
        return source
    if Path(source).is_absolute() or source.startswith("~") or ".." in parts:
        return parts[-1]
    return source


class ExperimentFolder(TrialTables):
    """Reads and writes one experiment folder; the driver is its only writer."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).resolve()
        self._state: dict[str, Any] | None = None
        self._space: SpaceConfig | None = None
        self._local_paths: dict[str, str] | None = None

    # ---- paths ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ax_path(self) -> Path:
        return self.path / AX_FILE

    @property
    def trials_csv(self) -> Path:
        return self.path / TRIALS_FILE

    @property
    def best_path(self) -> Path:
        return self.path / BEST_FILE

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def checkpoints_dir(self) -> Path:
        """Each trial's checkpoint folder (``trial-0007``), written by the trial itself."""
        return self.path / CHECKPOINTS_DIR

    @property
    def id(self) -> str:
        """The experiment's random id, which names its local folder (given to a folder
        made before there was one, on first use)."""
        if not self.state.get("id"):
            self.state["id"] = secrets.token_hex(8)
            self.save_state()
        return str(self.state["id"])

    @property
    def local_dir(self) -> Path:
        """What is not for sharing (``results/.local/<id>``): see the module docstring."""
        return self.path.parent / LOCAL_DIR / self.id

    @property
    def ray_dir(self) -> Path:
        """Ray Tune's working folder (it names local folders and machines: kept local)."""
        return self.local_dir / "ray"

    @property
    def wandb_logs_dir(self) -> Path:
        """Where W&B's debug logs of finished runs go (they name local folders)."""
        return self.local_dir / "wandb-logs"

    @property
    def final_dir(self) -> Path:
        return self.path / "final"

    @property
    def display(self) -> str:
        return display_path(self.path)

    @property
    def exists(self) -> bool:
        """Whether the folder holds an experiment (its ``experiment.json``)."""
        return (self.path / STATE_FILE).is_file()

    # ---- creation, opening, locking ----------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], space: SpaceConfig) -> ExperimentFolder:
        """Make a new experiment folder for ``space``; refuse if one already exists.

        ``run`` takes the folder's lock first and then calls :meth:`initialize`, so two
        drivers started at once with one name cannot both write it.
        """
        folder = cls(path)
        folder.check_new()
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.initialize(space)
        return folder

    def check_new(self) -> None:
        """Refuse when the folder already holds an experiment (naming the driver that
        works on it, if one does)."""
        if (self.path / STATE_FILE).exists():
            if self.is_locked():
                raise ExperimentLocked(
                    f"{self.display} is in use by another driver{self._lock_owner()}: a "
                    "second run of the same experiment name would write into its folder. "
                    "Pick another --name, or wait for that run to finish (`python -m search "
                    f"status {self.display}`)"
                )
            raise ExperimentError(
                f"{self.display} already holds an experiment: continue it with "
                f"`{resume_command(self.path)}`, or pick another --name"
            )

    def initialize(self, space: SpaceConfig) -> None:
        """Write the resolved space and the initial state (``experiment.json`` last: the
        folder is an experiment once it exists)."""
        self.check_new()
        self.path.mkdir(parents=True, exist_ok=True)
        self._state = {
            "name": self.name,
            "id": secrets.token_hex(8),
            "space": space.name,
            "source": _source_name(space.source),
            "created": now_iso(),
            "status": "created",
            "check_names": space.check_names,
            "sessions": [],
            "trials": {},
        }
        self._write_space(space)
        self.save_state()

    @classmethod
    def open(cls, path: str | os.PathLike[str] | ExperimentFolder) -> ExperimentFolder:
        """The experiment folder at ``path`` (an open one as is); refuse if there is none."""
        if isinstance(path, ExperimentFolder):
            return path
        folder = cls(path)
        if not (folder.path / STATE_FILE).is_file():
            hint = ""
            parent = folder.path.parent
            if parent.is_dir():
                names = sorted(p.name for p in parent.iterdir() if (p / STATE_FILE).is_file())
                if names:
                    hint = ": " + pipeline.unknown_name_message("experiment", folder.name, names)
            raise ExperimentError(
                f"{folder.display} is not an experiment folder (no {STATE_FILE}){hint}"
            )
        return folder

    @contextlib.contextmanager
    def locked(self, *, command: str | None = None) -> Iterator[ExperimentFolder]:
        """Hold the folder's lock; refuse, naming the holder, if another driver holds it,
        and refuse (:class:`DataLocationUnknown`) when the experiment ran on a data folder
        this machine does not know (a driver needs it).

        ``command`` (``run ...``, ``resume ...``) is recorded beside the lock, without its
        local paths, so that a refused driver can say who holds it.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            owner = self._lock_owner()
            raise ExperimentLocked(
                f"{self.display} is in use by another driver{owner}: two drivers must not "
                f"write one experiment folder. Wait for it to finish (`python -m search status "
                f"{self.display}`), pick another --name for a new experiment, or stop that "
                f"driver and continue with `{resume_command(self.path)}`"
            ) from None
        try:
            if (self.path / STATE_FILE).is_file():
                self._check_data_location()
            # no host or user: the folder may be shared (the pid tells a local driver)
            info = {
                "pid": os.getpid(),
                "since": now_iso(),
                "command": public_command(command) if command else None,
            }
            with disk_full_is_clear(self.path / LOCK_OWNER_FILE, self.path):
                pipeline.atomic_write_json(self.path / LOCK_OWNER_FILE, info)
            yield self
        finally:
            with contextlib.suppress(FileNotFoundError):
                (self.path / LOCK_OWNER_FILE).unlink()
            lock.release()

    def is_locked(self) -> bool:
        """True while a live driver holds the lock."""
        lock = FileLock(str(self.path / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return True
        lock.release()
        return False

    def _lock_owner(self) -> str:
        try:
            info = json.loads((self.path / LOCK_OWNER_FILE).read_text())
            text = f" (pid {info['pid']} since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return ""
        if info.get("command"):
            text += f", running `python -m search {info['command']}`"
        return text + ")"

    # ---- state -----------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        if self._state is None:
            self._state = json.loads((self.path / STATE_FILE).read_text(encoding="utf-8"))
        return self._state

    def save_state(self) -> None:
        fault_point("save_state")
        with disk_full_is_clear(self.path / STATE_FILE, self.path):
            pipeline.atomic_write_json(self.path / STATE_FILE, self.state)

    def recover(self) -> list[str]:
        """Tidy what a killed driver can leave (call with the lock held): temporary files
        of interrupted atomic writes, a last line of ``history.jsonl`` cut short, and the
        debug logs of W&B runs that never finished (moved to the local folder).
        Returns what was removed or repaired."""
        done = []
        for tmp in self.path.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                done.append(tmp.name)
        for run_dir in sorted((self.path / "wandb").glob("*run-*")):
            if (run_dir / "logs").is_dir():
                stow_wandb_logs(run_dir, self.wandb_logs_dir)
                done.append(f"wandb/{run_dir.name}/logs (moved to the local folder)")
        if self.history_path.is_file():
            data = self.history_path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data[: data.rfind(b"\n") + 1]
                with disk_full_is_clear(self.history_path, self.path):
                    pipeline.atomic_write_bytes(self.history_path, keep)
                done.append(f"{HISTORY_FILE} (a torn last line)")
        return done

    def space(self) -> SpaceConfig:
        """The resolved space the experiment runs (validated when it was created), with
        the data location of ``results/.local/<id>/paths.json`` when this machine has it."""
        if self._space is None:
            d = yaml.safe_load((self.path / SPACE_FILE).read_text(encoding="utf-8"))
            d["data"] = {**(d.get("data") or {}), **self.local_paths()}
            check = self.state.get("check_names", True)
            self._space = SpaceConfig.from_dict(
                d, source=str(self.path / SPACE_FILE), check_names=check, check_choices=False
            )
        return self._space

    def save_space(self, space: SpaceConfig) -> None:
        self._write_space(space)
        self.save_state()

    def _write_space(self, space: SpaceConfig) -> None:
        """``space.yaml`` without the data section's local paths, which go to the local
        folder; the state records which keys were taken out (not saved here)."""
        d = space.to_dict()
        data = d.get("data") or {}
        local = {k: str(data.pop(k)) for k in LOCAL_KEYS if data.get(k) is not None}
        if local or self.state.get("local_keys"):
            self._save_local_paths(local)
        text = yaml.safe_dump(d, sort_keys=False, default_flow_style=None, width=100)
        with disk_full_is_clear(self.path / SPACE_FILE, self.path):
            pipeline.atomic_write_text(self.path / SPACE_FILE, text)
        self.state["check_names"] = space.check_names
        self.state["local_keys"] = sorted(local)
        self._space = space

    # ---- what is not for sharing ----------------------------------------------------
    def local_paths(self) -> dict[str, str]:
        """The data location this machine knows (``data_dir``, ``labels``, ``cache_dir``
        from ``results/.local/<id>/paths.json``); empty when it has none."""
        if self._local_paths is None:
            self._local_paths = {}
            if self.state.get("id"):
                with contextlib.suppress(FileNotFoundError):
                    paths = json.loads((self.local_dir / PATHS_FILE).read_text(encoding="utf-8"))
                    self._local_paths = {k: str(v) for k, v in paths.items() if k in LOCAL_KEYS}
        return dict(self._local_paths)

    def _save_local_paths(self, paths: Mapping[str, str]) -> None:
        self.local_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with disk_full_is_clear(self.local_dir / PATHS_FILE):
            pipeline.atomic_write_json(self.local_dir / PATHS_FILE, dict(paths))
        self._local_paths = dict(paths)

    def missing_data(self) -> list[str]:
        """The data keys the experiment ran with that this machine does not know."""
        known = self.local_paths()
        return [
            k
            for k in self.state.get("local_keys", [])
            if k in REQUIRED_LOCAL_KEYS and k not in known
        ]

    def _check_data_location(self) -> None:
        missing = self.missing_data()
        if not missing:
            return
        give = "--data DIR --labels CSV" if "labels" in self.state["local_keys"] else "--data DIR"
        raise DataLocationUnknown(
            f"{self.display} ran on a data folder whose location is kept beside the experiment "
            f"folder, in {display_path(self.local_dir / PATHS_FILE)}, and this machine has none "
            f"(the folder was copied without results/{LOCAL_DIR}): say where the data is with "
            f"`python -m search resume {self.display} {give}`"
        )

    def supply_data(
        self, data_dir: str | os.PathLike[str], labels: str | os.PathLike[str] | None = None
    ) -> None:
        """Record where the data is now (``resume --data DIR [--labels CSV]``): for a
        folder copied without its local folder, or data that moved. Without ``labels``,
        ``DIR/labels.csv``. Raises :class:`~search.problems.SpaceError` when the folder or
        the CSV is not there."""
        given = (
            {"data_dir": data_dir} if labels is None else {"data_dir": data_dir, "labels": labels}
        )
        section = DataSection.from_dict(given)  # made absolute, checked to exist
        paths = {k: v for k, v in self.local_paths().items() if k not in REQUIRED_LOCAL_KEYS}
        paths.update({k: str(v) for k, v in section.trial_settings().items()})
        self._save_local_paths(paths)
        self.state["local_keys"] = sorted(paths)
        self._space = None
        self.save_state()

    def public_text(self, text: str) -> str:
        """``text`` (an error, a reason) with this experiment's local folders replaced by
        ``<data>``, ``<labels>``, ``<cache>``, ``<experiment>``, ``<local>`` and ``~``."""
        paths = self.local_paths()
        if not paths:  # a folder made before the local folder: its paths are in the space
            with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
                data = yaml.safe_load((self.path / SPACE_FILE).read_text(encoding="utf-8"))
                paths = {k: v for k, v in (data.get("data") or {}).items() if k in LOCAL_KEYS}
        folders = {f"<{k.removesuffix('_dir')}>": v for k, v in paths.items()}
        folders["<experiment>"] = str(self.path)
        if self._space is not None and not self._space.source.startswith("<"):
            folders[_source_name(self._space.source)] = self._space.source
        if self.state.get("id"):
            folders["<local>"] = str(self.local_dir)
        return public_text(text, folders)

    @property
    def status(self) -> str:
        """created, running, finished, interrupted, failed, or crashed (running, no driver)."""
        status = self.state.get("status", "created")
        if status == "running" and not self.is_locked():
            return "crashed"
        return status

    def set_status(self, status: str, **session_fields: Any) -> None:
        """The experiment's status, also recorded on the current session."""
        self.state["status"] = status
        if self.state["sessions"]:
            self.state["sessions"][-1].update(session_fields, status=status)
        self.save_state()

    def begin_session(self, *, address: str | None, command: str) -> int:
        """Record a new session: in the folder without the machine (the command without
        its paths, a cluster's address as ``<address>``), in the local folder in full
        (``sessions.json``: the cluster address, the command, the host and the pid)."""
        n = len(self.state["sessions"]) + 1
        session = {"session": n, "started": now_iso()}
        local = self.local_dir / SESSIONS_FILE
        sessions: list[dict[str, Any]] = []
        with contextlib.suppress(FileNotFoundError, ValueError):
            sessions = json.loads(local.read_text(encoding="utf-8"))
        sessions = [s for s in sessions if s.get("session") != n]
        host = {"host": socket.gethostname(), "pid": os.getpid()}
        sessions.append({**session, "address": address, "command": command, **host})
        self.local_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with disk_full_is_clear(local):
            pipeline.atomic_write_json(local, sessions)
        self.state["sessions"].append(
            {
                **session,
                "ended": None,
                "status": "running",
                "address": address if address in (None, "auto") else ADDRESS,
                "command": public_command(command),
            }
        )
        self.state["status"] = "running"
        self.save_state()
        return n

    def note_data(self, counts: Mapping[str, Any], **fields: Any) -> None:
        """What the trials train and validate on (``pipeline.prepare``'s counts)."""
        fields = {k: self.public_text(v) if isinstance(v, str) else v for k, v in fields.items()}
        self.state["data"] = {**dict(counts), **fields}
        self.save_state()

    # ---- Ax state ----------------------------------------------------------------------
    def save_ax(self, client: Client) -> None:
        """Write the Ax client's JSON snapshot atomically (temporary file, fsync, rename)."""
        tmp = self.path / f".{AX_FILE}.{os.getpid()}.tmp"
        try:
            with disk_full_is_clear(self.ax_path, self.path):
                client.save_to_json_file(str(tmp))
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                fault_point("save_ax")
                os.replace(tmp, self.ax_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def load_ax(self) -> Client:
        from ax import Client

        return Client.load_from_json_file(str(self.ax_path))

    # ---- trials ---------------------------------------------------------------------
    @property
    def trials(self) -> dict[int, dict[str, Any]]:
        """Trial index -> record (keys are ints; a view on the state, except that a
        checkpoint folder, recorded relative to the experiment folder, comes absolute:
        change records with :meth:`trial_note`)."""
        out = {}
        for key, rec in self.state["trials"].items():
            checkpoint = rec.get("checkpoint")
            if checkpoint and not Path(checkpoint).is_absolute():
                rec = {**rec, "checkpoint": str(self.path / checkpoint)}
            out[int(key)] = rec
        return out

    def _record(self, index: int) -> dict[str, Any]:
        return self.state["trials"].setdefault(
            str(index),
            {
                "trial": index,
                "status": QUEUED,
                "params": {},
                "metrics": {},
                "epochs": 0,
                "attempts": 0,
            },
        )

    def trials_queued(self, params: Mapping[int, Mapping[str, Any]], **fields: Any) -> None:
        """New trials proposed (one write for a whole batch); ``fields`` go to each record."""
        for index, p in params.items():
            rec = self._record(index)
            rec.update(
                {k: v for k, v in fields.items() if v is not None}, params=dict(p), status=QUEUED
            )
        self.save_state()

    def trial_queued(self, index: int, params: Mapping[str, Any]) -> None:
        self.trials_queued({index: params})

    def trial_started(self, index: int, *, ray_trial: str, session: int) -> None:
        rec = self._record(index)
        rec.update(
            status=RUNNING,
            ray_trial=ray_trial,
            session=session,
            started=now_iso(),
            started_t=time.time(),
            finished=None,
            error=None,
            stop_reason=None,
        )
        rec["attempts"] = int(rec.get("attempts", 0)) + 1
        self.save_state()
        self.write_tables()

    def trial_result(self, index: int, result: Mapping[str, Any]) -> None:
        """One per-epoch report: appended to history.jsonl; the record keeps the latest."""
        rec = self._record(index)
        metrics = {
            k: self.public_text(v) if isinstance(v, str) else v
            for k, v in result.items()
            if finite(v) or isinstance(v, str)
        }
        epoch = result.get("epoch")
        if finite(epoch):
            rec["epochs"] = int(epoch)  # type: ignore[arg-type]
        if result.get("node"):
            rec["node"] = result["node"]
        rec["last"] = {k: v for k, v in metrics.items() if finite(v)}
        line = json.dumps(
            {"trial": index, "session": rec.get("session"), "time": time.time(), **metrics},
            default=str,
        )
        self._append_history(line)
        self.save_state()
        self.write_tables()

    def _append_history(self, line: str) -> None:
        """Append one line; on a full disk the file is cut back to its last whole line."""
        with disk_full_is_clear(self.history_path, self.path), open(self.history_path, "ab") as f:
            size = f.tell()
            try:
                f.write((line + "\n").encode("utf-8"))
                f.flush()
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(size)
                raise

    def trial_finished(
        self,
        index: int,
        status: str,
        *,
        metrics: Mapping[str, Any] | None = None,
        error: str | None = None,
        **fields: Any,
    ) -> None:
        """A trial ended (``fields``: more facts for its record, such as timings)."""
        rec = self._record(index)
        rec.update(self._public_fields(fields))
        rec["status"] = status
        if metrics:
            rec["metrics"] = {k: v for k, v in metrics.items() if finite(v)}
            if finite(metrics.get("epoch")):
                rec["epochs"] = int(metrics["epoch"])
        if error:
            rec["error"] = self.public_text(error)
        rec["finished"] = now_iso()
        if rec.get("started_t"):
            rec["duration_s"] = round(time.time() - float(rec["started_t"]), 3)
        self.save_state()
        self.write_tables()

    def trial_retried(self, index: int, reason: str, **fields: Any) -> None:
        """One more retry of a trial: counted, and ``reason`` added to its ``retry_reason``."""
        rec = self.trials.get(index, {})
        notes = [n for n in str(rec.get("retry_reason") or "").split("; ") if n]
        retries = int(rec.get("retries") or 0) + 1
        self.trial_note(index, retries=retries, retry_reason="; ".join([*notes, reason]), **fields)

    def trial_note(self, index: int, **fields: Any) -> None:
        """Add facts to a trial record (node, checkpoint, error text, timings)."""
        rec = self._record(index)
        rec.update(self._public_fields(fields))
        self.save_state()

    def _public_fields(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Record fields fit for the folder: texts without local folders, a checkpoint
        folder inside the experiment folder relative to it."""
        out: dict[str, Any] = {}
        for key, value in fields.items():
            if value is None:
                continue
            if key == "checkpoint":
                with contextlib.suppress(ValueError):
                    value = Path(value).resolve().relative_to(self.path).as_posix()
            if isinstance(value, str):
                value = self.public_text(value)
            out[key] = value
        return out
