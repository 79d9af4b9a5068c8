"""Weights & Biases: one run per trial, one summary run per search, one promote run.

The mode comes from the space (``tracking.mode``) or ``--wandb``: ``auto`` is online
when ``WANDB_API_KEY`` is set and offline otherwise; offline runs are written under the
experiment folder (``results/<name>/wandb``) and can be uploaded later with
``wandb sync results/<name>/wandb/offline-run-*``. ``disabled`` logs nothing.

What leaves the machine is listed in README.md ("What is sent where"): the trial's
settings without local paths (:func:`search.privacy.public`) and its scalar metrics;
images only when the space sets ``tracking.log_images: true``; never the strings a trial
reports (they could carry file names), nor what W&B collects by itself (turned off by
:func:`wandb_settings` for every run, online and offline alike). W&B's debug logs, which
name local folders, are moved out of the experiment folder when a run finishes.

W&B 0.31 has no Python reader for its offline transaction logs (``run-<id>.wandb``), so
:func:`read_offline_run` decodes them with W&B's own record schema
(``wandb.proto.wandb_internal_pb2.Record``) from the LevelDB-style log they are written
in; the tests use it to check that the metrics are really in the runs.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search.experiment import ExperimentFolder
from search.privacy import public, stow_wandb_logs
from search.values import finite_or_none


@dataclass(frozen=True, kw_only=True)
class TrackingSetup:
    """Everything a worker process needs to open a W&B run (picklable)."""

    mode: str = "disabled"  # online | offline | disabled (already resolved)
    project: str = "radsearch"
    entity: str | None = None
    group: str = ""
    root: str | None = None  # the experiment folder; W&B writes root/wandb/
    logs: str | None = None  # where W&B's debug logs go (outside root); None: deleted
    log_images: bool = False

    @property
    def enabled(self) -> bool:
        return self.mode in ("online", "offline")

    @classmethod
    def for_experiment(
        cls, tracking: Any, name: str, path: str | os.PathLike[str], *, mode: str | None = None
    ) -> TrackingSetup:
        """The setup of one experiment: the space's ``tracking`` section, grouped by the
        experiment's name, offline runs under its folder, debug logs in its local folder;
        ``mode`` overrides the space's."""
        folder = ExperimentFolder(path)
        return cls(
            mode=mode or tracking.resolved_mode(),
            project=tracking.project,
            entity=tracking.entity,
            group=name,
            root=str(folder.path),
            # a folder from before the local folder gets its id from the driver, not here
            logs=str(folder.wandb_logs_dir) if folder.exists and folder.state.get("id") else None,
            log_images=tracking.log_images,
        )


#: a neutral program name in place of the script's path (W&B sends it as the run's program)
PROGRAM = "radsearch"


def wandb_settings() -> Any:
    """The W&B settings of every run (trials, the summary, the promoted model), online
    and offline alike: nothing about the machine, its user or the command line.

    Field names are those of ``wandb.Settings`` in wandb 0.31.
    """
    # wandb takes about 0.5 s to import: only runs that track pay it
    import wandb

    return wandb.Settings(
        silent=True,
        # no host name: W&B fills it from socket.gethostname() when unset, and sends it
        # with the run (upsertBucket's ``host``) and in the run record
        host="",
        username="",
        # the program and its paths (W&B's defaults: the script's absolute path)
        program=PROGRAM,
        program_abspath="",
        program_relpath="",
        x_executable="python",
        # wandb-metadata.json / the environment record: command line, working folder,
        # executable, host, OS, Python, CPU, GPU, disk, memory
        x_disable_meta=True,
        x_disable_machine_info=True,
        x_disable_stats=True,  # system metrics (CPU, GPU, memory, disk, network)
        disable_git=True,  # remote URL, commit, git root
        disable_code=True,
        save_code=False,  # also overrides an account's "save code" default when online
        disable_job_creation=True,  # a job records the program and its environment
        x_save_requirements=False,  # requirements.txt: the installed packages
        console="off",  # stdout/stderr capture (output.log): log lines name files
        symlink=False,  # wandb/debug.log, latest-run: links into the run folders
    )


def _loggable(metrics: Mapping[str, Any], log_images: bool) -> dict[str, Any]:
    """Scalars always; 2-D/3-D arrays under ``images/`` only when images are allowed."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        scalar = finite_or_none(value)
        if scalar is not None:
            out[key] = scalar
        elif (
            log_images
            and key.startswith("images/")
            and isinstance(value, np.ndarray)
            and value.ndim in (2, 3)
        ):
            # wandb takes about 0.5 s to import: only runs that track pay it
            import wandb

            out[key] = wandb.Image(value)
    return out


class TrialRun:
    """A W&B run for one trial; a no-op when tracking is disabled."""

    def __init__(
        self,
        setup: TrackingSetup,
        *,
        name: str,
        config: Mapping[str, Any],
        job_type: str = "trial",
        tags: tuple[str, ...] = (),
    ):
        self.setup = setup
        self._run: Any = None
        self._run_dir: str | None = None
        if not setup.enabled:
            return
        # wandb takes about 0.5 s to import: only runs that track pay it
        import wandb

        root = setup.root
        if root is not None:
            Path(root).mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=setup.project,
            entity=setup.entity,
            group=setup.group or None,
            name=name,
            job_type=job_type,
            config=public(config),  # no local paths: folder names can name people
            mode=setup.mode,
            dir=root,
            tags=list(tags),
            reinit="create_new",
            settings=wandb_settings(),
        )
        self._run_dir = self._run.settings.sync_dir

    @property
    def active(self) -> bool:
        return self._run is not None

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self._run is None:
            return
        data = _loggable(metrics, self.setup.log_images)
        if data:
            self._run.log(data, step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        if self._run is None:
            return
        for key, value in values.items():
            scalar = finite_or_none(value)
            if scalar is not None:
                self._run.summary[key] = scalar
            elif isinstance(value, str | dict | list):
                self._run.summary[key] = public(value, key)

    def log_object(self, key: str, obj: Any) -> None:
        """Log a W&B object (a Table, Html, ...) built by the caller."""
        if self._run is not None:
            self._run.log({key: obj})

    def finish(self, *, failed: bool = False) -> None:
        """End the run, then move its debug logs out of the experiment folder."""
        if self._run is None:
            return
        # tracking must never turn a finished trial into a failure
        with contextlib.suppress(Exception):
            self._run.finish(exit_code=1 if failed else 0)
        self._run = None
        if self._run_dir is not None:
            stow_wandb_logs(self._run_dir, self.setup.logs)


def log_summary_run(
    setup: TrackingSetup,
    *,
    name: str,
    rows: list[dict[str, Any]],
    best: dict[str, Any] | None,
    space: Mapping[str, Any],
    report_html: Path | None = None,
) -> None:
    """One run for the whole search: the trial table, the best configuration, the report.

    The trial table is logged as an HTML page, not a ``wandb.Table``: a Table is an
    artifact whose manifest records the path W&B staged it at, in the user's home folder.
    """
    if not setup.enabled:
        return
    # wandb takes about 0.5 s to import: only runs that track pay it
    import wandb

    run = TrialRun(
        setup, name=f"{name}-summary", config={"space": space}, job_type="search-summary"
    )
    if rows:
        columns = sorted(
            {k for r in rows for k in r},
            key=lambda k: list(rows[0]).index(k) if k in rows[0] else 999,
        )
        run.log_object("trials", wandb.Html(_html_table(columns, rows)))
    if best is not None:
        run.summary(
            {
                "best/trial": best["trial"],
                "best/value": best["objective"]["value"],
                "best/metric": best["objective"]["metric"],
                "best/config": json.loads(json.dumps(public(best["config"]), default=str)),
            }
        )
    if report_html is not None and report_html.is_file():
        run.log_object("report", wandb.Html(report_html.read_text(encoding="utf-8")))
    run.finish()


def _html_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """A plain HTML table of ``rows`` (empty cells for missing values)."""

    def cell(value: Any, tag: str) -> str:
        text = "" if value is None else html.escape(str(public(value)))
        return f"<{tag}>{text}</{tag}>"

    head = "".join(cell(c, "th") for c in columns)
    body = "".join("<tr>" + "".join(cell(r.get(c), "td") for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ------------------------------------------------------------------------------------------
# Reading offline runs back (W&B's transaction log, decoded with W&B's record schema)
# ------------------------------------------------------------------------------------------
_BLOCK = 32 * 1024
_HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run holds: identity, config, every logged row, summary, exit code,
    the host it names (empty: none) and the kinds of record in it (``run``, ``history``,
    ... ``environment`` only when W&B collected the machine's metadata)."""

    path: Path
    run_id: str = ""
    host: str = ""
    records: set[str] = field(default_factory=set)
    name: str = ""
    group: str = ""
    project: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    def metric(self, key: str) -> list[Any]:
        """The logged values of one metric, in step order."""
        return [row[key] for row in self.history if key in row]


def _records(data: bytes) -> list[bytes]:
    """Split a W&B transaction log into record payloads (LevelDB log format)."""
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log (missing ':W&B' header)")
    out: list[bytes] = []
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        payload = data[pos + 7 : pos + 7 + length]
        if len(payload) < length:  # a torn last record of a killed writer
            break
        pos += 7 + length
        if kind == _FULL:
            out.append(payload)
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            out.append(pending + payload)
            pending = b""
    return out


def _item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_offline_run(path: str | os.PathLike[str]) -> OfflineRun:
    """Read a run folder (``offline-run-*``) or its ``run-<id>.wandb`` file."""
    # wandb takes about 0.5 s to import: only runs that track pay it
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    log_file = (
        path if path.suffix == ".wandb" else next(iter(sorted(path.glob("run-*.wandb"))), None)
    )
    if log_file is None:
        raise FileNotFoundError(f"{path}: no run-*.wandb transaction log")
    run = OfflineRun(path=path if path.is_dir() else path.parent)
    for raw in _records(log_file.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        run.records.add(str(kind))
        if kind == "run":
            r = rec.run
            run.host, run.run_id, run.name = r.host, r.run_id, r.display_name
            run.group, run.project, run.job_type = r.run_group, r.project, r.job_type
            for item in r.config.update:
                run.config[_item_key(item)] = _json(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                run.config[_item_key(item)] = _json(item.value_json)
        elif kind == "history":
            run.history.append({_item_key(i): _json(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                key = _item_key(item)
                if key:
                    run.summary[key] = _json(item.value_json)
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    # config values are stored as {"value": ...}
    run.config = {
        k: (v.get("value") if isinstance(v, dict) and "value" in v else v)
        for k, v in run.config.items()
        if not k.startswith("_")
    }
    return run


def offline_runs(root: str | os.PathLike[str]) -> list[OfflineRun]:
    """Every offline run under ``root`` (an experiment folder or its ``wandb`` folder)."""
    root = Path(root)
    base = root / "wandb" if (root / "wandb").is_dir() and root.name != "wandb" else root
    return [
        read_offline_run(folder)
        for folder in sorted(base.rglob("offline-run-*"))
        if folder.is_dir() and not folder.is_symlink() and any(folder.glob("run-*.wandb"))
    ]
