"""What may be shared: settings, command lines and files without local paths, hosts or users.

Folder names can name people or places (a hospital archive's ``/archive/DOE^JANE
MRN123/``), and a home folder names its user, so what the search writes into the
experiment folder or sends to W&B is passed through these functions first: settings
(:func:`public`), command lines (:func:`public_command`), free text such as error
messages (:func:`public_text`) and the files of the final model's folder
(:func:`make_files_public`).

What is not for sharing (the data location, Ray Tune's working files, W&B's debug
logs) lives beside the experiment folder, in ``results/.local/<experiment id>/``
(:mod:`search.experiment`); :func:`stow_wandb_logs` moves W&B's debug logs there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

import pipeline

LOCAL_PATH = "<local path>"
ADDRESS = "<address>"
#: configuration keys whose values are local paths, at any depth
PATH_KEYS = frozenset({"data_dir", "labels", "cache_dir", "checkpoint_dir", "csv", "path", "root"})
#: command-line options whose value is a local path or a machine's address
PRIVATE_OPTIONS = frozenset(
    {"--data", "--labels", "--external", "--results", "--out", "--trainable", "--address"}
)
#: W&B's debug logs in each run folder (they name the folders the run wrote to)
WANDB_LOGS = "logs"
#: a POSIX absolute path of two parts or more inside a text (not a URL's, not ``a/b``)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~<>:/-])(?:/[^\s/'\"`:,;()\[\]{}<>]+){2,}/?")


def looks_like_path(text: str) -> bool:
    """An absolute or home-relative path (POSIX, Windows drive or UNC)."""
    return text.startswith(("/", "~", "\\\\")) or (len(text) > 2 and text[1:3] in (":\\", ":/"))


def public(value: Any, key: str = "") -> Any:
    """``value`` with local paths replaced by ``<local path>`` at any depth, keys made
    strings (W&B's need) and tuples made lists."""
    if isinstance(value, Mapping):
        return {str(k): public(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [public(v, key) for v in value]
    if isinstance(value, os.PathLike) or (
        isinstance(value, str) and (key in PATH_KEYS or looks_like_path(value))
    ):
        return LOCAL_PATH
    return value


def public_command(command: str) -> str:
    """A command line (``run spaces/x.yaml --data /archive/DOE_JANE``) fit to record:
    the values of :data:`PRIVATE_OPTIONS` replaced by ``<local path>`` (``<address>`` for
    ``--address``, ``auto`` kept), and so is every other absolute, home-relative or
    parent-relative path."""
    try:
        words = shlex.split(command)
    except ValueError:  # an unbalanced quote: keep the words, not the text between
        words = command.split()
    out: list[str] = []
    private_value = False
    for word in words:
        option, eq, value = word.partition("=")
        if private_value:
            out.append(word if word == "auto" else _placeholder(out[-1]))
            private_value = False
        elif option in PRIVATE_OPTIONS:
            if eq:
                out.append(f"{option}={value if value == 'auto' else _placeholder(option)}")
            else:
                out.append(word)
                private_value = True
        elif looks_like_path(word) or ".." in Path(word).parts:
            out.append(LOCAL_PATH)
        else:
            out.append(word)
    return " ".join(w if w.endswith((LOCAL_PATH, ADDRESS)) else shlex.quote(w) for w in out)


def _placeholder(option: str) -> str:
    return ADDRESS if option == "--address" else LOCAL_PATH


def public_text(text: str, folders: Mapping[str, str | os.PathLike[str] | None]) -> str:
    """``text`` with each known local path (``{"<data>": "/archive/DOE_JANE", ...}``)
    replaced by its short name, longest first, then the home folder by ``~``, then any
    other absolute path (two parts or more) by ``<local path>``."""
    pairs = [(str(Path(p)), name) for name, p in folders.items() if p]
    with contextlib.suppress(RuntimeError):  # no home folder
        pairs.append((str(Path.home()), "~"))
    for path, name in sorted(pairs, key=lambda pair: -len(pair[0])):
        if len(path) > 1:
            text = text.replace(path, name)
    return _ABSOLUTE_PATH.sub(LOCAL_PATH, text)


def make_files_public(folder: str | os.PathLike[str]) -> list[Path]:
    """Rewrite the YAML and JSON files directly in ``folder`` through :func:`public`
    (atomically, and only those that change). Returns the rewritten files."""
    changed = []
    for path in sorted(Path(folder).iterdir()):
        suffix = path.suffix.lower()
        if not path.is_file() or suffix not in (".yaml", ".yml", ".json"):
            continue
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
        clean = public(data)
        if clean == data:
            continue
        if suffix == ".json":
            pipeline.atomic_write_json(path, clean)
        else:
            pipeline.atomic_write_text(path, yaml.safe_dump(clean, sort_keys=False))
        changed.append(path)
    return changed


def stow_wandb_logs(run_dir: str | os.PathLike[str], dest: str | os.PathLike[str] | None) -> None:
    """Move a W&B run's debug logs (``run_dir/logs``) to ``dest/<run folder name>``, out
    of the folder that is shared; without ``dest`` they are deleted. Never raises:
    tracking must not fail a trial."""
    logs = Path(run_dir) / WANDB_LOGS
    if not logs.is_dir():
        return
    if dest is not None:
        target = Path(dest) / Path(run_dir).name
        with contextlib.suppress(OSError):
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(logs), str(target))
            return
    shutil.rmtree(logs, ignore_errors=True)
