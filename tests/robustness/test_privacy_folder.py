"""Nothing identifying in the experiment folder: W&B run metadata, paths, hosts, users.

A real two-trial search (Ray, ``run_trial``, W&B offline) and a promote run on a
phantom stored in a folder named like a patient (a name, an MRN, a date of birth),
under the home folder of a known user, on a known host: the driver and every Ray
worker see the host name ``ward7-pacs-ws042`` (a ``sitecustomize`` on ``PYTHONPATH``),
the user is ``rad_jdoe42`` (``USER``, ``LOGNAME``, and the data, the results, the cache
and W&B's own folders are in their home folder). Every byte of every file
under the experiment folder (W&B run files read raw) and every file name is searched
for the folder's name and its parts, the absolute paths of the data, the labels, the
cache, the home and the experiment folder, the host and user names and every identifying
header value of the phantom's DICOM files: no hit. (The machine's own names are not
looked for: short or common ones, "vm" or "server", are spelled by chance in images and
in plotly's JavaScript.) The same strings are found in what stays local
(``results/.local/<id>``), so the search would see them if they leaked.

The W&B settings are the same for online and offline runs (one code path), and a
folder copied without its local folder asks for the data again.
"""

from __future__ import annotations

import json
import platform
import socket
import types
from pathlib import Path

import pytest
import yaml

from robustness.phi import phi_strings, scan_tree, tiny_space
from search.experiment import ExperimentFolder
from search.privacy import public_command, public_text
from search.statefiles import DataLocationUnknown
from search.tracking import TrackingSetup, TrialRun, offline_runs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

HOST = "ward7-pacs-ws042"
USER = "rad_jdoe42"
FOLDER = "DOE_JANE_MRN0048151623_DOB1964-03-12"
FOLDER_PARTS = ("DOE_JANE", "MRN0048151623", "0048151623", "DOB1964-03-12", "1964-03-12")
SITECUSTOMIZE = f"""
import platform, socket
socket.gethostname = lambda: {HOST!r}
platform.node = lambda: {HOST!r}
"""


def _space(data_dir: Path, cache_dir: Path) -> dict:
    """The two-trial search of ``robustness.phi``, named "knees", on the validation loss."""
    space = tiny_space(data_dir, cache_dir)
    space["parameters"].update(batch_size=4, steps_per_epoch=2)
    return {
        **space,
        "name": "knees",
        "objective": {"metric": "val/loss", "direction": "minimize"},
    }


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A search and a promote by USER on HOST, on data in a folder named like a patient."""
    import ray

    from pipeline.synth import generate
    from search.promote import promote
    from search.runner import run_search
    from search.space import SpaceConfig

    root = tmp_path_factory.mktemp("identity")
    home = root / "home" / USER
    data = home / "archive" / FOLDER
    generate(data, n=24, seed=11, size=128, labeled_fraction=0.9, fracture_rate=0.4)
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    cache = home / ".cache" / "radsearch"

    mp = pytest.MonkeyPatch()
    for name in ("USER", "LOGNAME", "USERNAME"):
        mp.setenv(name, USER)
    # W&B's data and cache folders (platformdirs) in the user's home; HOME itself stays,
    # since Ray reads its cluster token from ~/.ray and keeps it for the process
    mp.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    mp.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    mp.setenv("RADSEARCH_CACHE", str(cache))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("PYTHONPATH", str(site), prepend=":")  # Ray's workers see HOST too
    mp.setattr(socket, "gethostname", lambda: HOST)
    mp.setattr(platform, "node", lambda: HOST)
    ray.shutdown()  # a Ray started by an earlier test would not see HOST
    try:
        space = SpaceConfig.from_dict(_space(data, cache), source=str(home / "knees.yaml"))
        result = run_search(
            space,
            name="knees",
            results_dir=home / "results",
            progress=False,
            num_cpus=2,
            command=f"run {home / 'knees.yaml'} --data {data} --name knees",
        )
        assert result.status == "finished", result
        promote(result.path, epochs=1, wandb_mode="offline")
    finally:
        ray.shutdown()
        mp.undo()
    folder = ExperimentFolder(result.path)
    return types.SimpleNamespace(folder=folder, data=data, cache=cache, home=home, root=root)


def _identifiers(shared) -> dict[str, str]:
    """value -> what it is: every string that must not be in the experiment folder."""
    data = shared.data
    out = {FOLDER: "data folder name", HOST: "host name", USER: "user name"}
    out.update({part: "part of the data folder's name" for part in FOLDER_PARTS})
    for name, path in {
        "data folder": data,
        "labels CSV": data / "labels.csv",
        "cache folder": shared.cache,
        "home folder": shared.home,
        "experiment folder": shared.folder.path,
        "local folder": shared.folder.local_dir,
        "test folder": shared.root,
    }.items():
        out[str(path)] = f"absolute path of the {name}"
    out.update(phi_strings(sorted((data / "dicom").glob("*.dcm"))))
    return out


def test_the_run_names_the_host_user_and_data_where_they_stay_local(shared):
    """Positive control: Ray's workers saw HOST, W&B's logs name the home folder, the
    local folder knows the data; so a leak of any of them would be seen."""
    local = shared.folder.local_dir
    assert local.parent.name == ".local" and local.parent.parent == shared.folder.path.parent
    paths = json.loads((local / "paths.json").read_text())
    assert paths["data_dir"] == str(shared.data) and paths["cache_dir"] == str(shared.cache)
    results = list((local / "ray").rglob("result.json"))
    assert results and any(HOST in p.read_text() for p in results), "workers saw HOST"
    logs = [p for p in (local / "wandb-logs").rglob("*.log")]
    assert logs and any(USER in p.read_text(errors="replace") for p in logs)
    assert (shared.folder.final_dir / "predictions.csv").is_file(), "the promote ran"


def test_nothing_under_the_experiment_folder_identifies_anyone(shared):
    folder = shared.folder.path
    identifiers = _identifiers(shared)
    assert len(identifiers) > 100
    wandb_files = list((folder / "wandb").rglob("*.wandb"))
    assert len(wandb_files) == 4, "two trials, the summary and the promote, read raw"
    scanned, hits = scan_tree([folder], identifiers)
    assert scanned > 30
    assert not hits, "\n".join(
        f"{h.file.relative_to(folder)}: {h.value!r} ({h.source}) in ...{h.context}..."
        for h in hits[:20]
    )
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*")]
    assert not [(n, v) for n in names for v in identifiers if len(v) >= 4 and v in n]
    assert not list(folder.rglob("logs")), "W&B's debug logs went to the local folder"
    assert not (folder / "ray").exists(), "Ray Tune's working folder is local"


def test_wandb_runs_hold_no_machine_metadata(shared):
    runs = offline_runs(shared.folder.path)
    assert {r.job_type for r in runs} == {"trial", "search-summary", "promote"}
    for run in runs:
        assert run.host == "", run.name
        assert "environment" not in run.records, f"{run.name}: W&B collected the machine"
        files = run.path / "files"
        assert not (files / "wandb-metadata.json").exists()
        assert not (files / "output.log").exists() and not (files / "requirements.txt").exists()


def test_the_experiment_folder_records_what_it_needs_without_local_paths(shared):
    folder = shared.folder
    state = json.loads((folder.path / "experiment.json").read_text())
    assert state["source"] == "knees.yaml"
    assert state["data"]["warning"].startswith("knees.yaml: the validation split is too small")
    assert state["local_keys"] == ["cache_dir", "data_dir"]
    session = state["sessions"][0]
    assert "host" not in session and "pid" not in session
    assert session["command"] == "run <local path> --data <local path> --name knees"
    written = yaml.safe_load((folder.path / "space.yaml").read_text())
    assert "data_dir" not in written["data"] and "cache_dir" not in written["data"]
    assert folder.space().data.values["data_dir"] == str(shared.data), "merged back here"
    for index, rec in folder.trials.items():  # the trial's model of record, in the folder
        assert Path(rec["checkpoint"]) == folder.path / "checkpoints" / f"trial-{index:04d}"
        assert state["trials"][str(index)]["checkpoint"] == f"checkpoints/trial-{index:04d}"
        assert (Path(rec["checkpoint"]) / "model.pt").is_file()
    promoted = yaml.safe_load((folder.final_dir / "promote.yaml").read_text())
    assert promoted["config"]["data_dir"] == "<local path>"
    config = yaml.safe_load((folder.final_dir / "config.yaml").read_text())
    assert config["data_dir"] == "<local path>" and config["lr"] == promoted["config"]["lr"]


# ---------------------------------------------------------------------------------------
# One code path for online and offline W&B runs
# ---------------------------------------------------------------------------------------
def test_online_and_offline_runs_start_with_the_same_settings(tmp_path, monkeypatch):
    import wandb

    calls: list[dict] = []

    def init(**kwargs):
        calls.append(kwargs)
        return types.SimpleNamespace(
            settings=types.SimpleNamespace(sync_dir=str(tmp_path / "run")),
            finish=lambda **_: None,
        )

    monkeypatch.setattr(wandb, "init", init)
    for mode in ("offline", "online"):
        setup = TrackingSetup(mode=mode, project="p", group="g", root=str(tmp_path))
        TrialRun(setup, name="t", config={"data_dir": "/archive/DOE_JANE", "lr": 0.1}).finish()
    offline, online = calls
    assert offline.pop("mode") == "offline" and online.pop("mode") == "online"
    settings = [call.pop("settings").model_dump() for call in (offline, online)]
    assert settings[0] == settings[1] and offline == online
    assert offline["config"] == {"data_dir": "<local path>", "lr": 0.1}
    s = settings[0]
    assert s["host"] == "" and s["username"] == "" and s["program"] == "radsearch"
    assert s["x_disable_meta"] and s["x_disable_machine_info"] and s["x_disable_stats"]
    assert s["disable_git"] and s["disable_code"] and s["save_code"] is False
    assert s["console"] == "off" and not s["x_save_requirements"]


# ---------------------------------------------------------------------------------------
# The local folder, and a folder copied without it
# ---------------------------------------------------------------------------------------
def _tiny_space(phantom_dir: Path):
    from search.space import SpaceConfig

    return SpaceConfig.from_dict(
        {
            "name": "copied",
            "data": {"data_dir": str(phantom_dir), "labels": str(phantom_dir / "labels.csv")},
            "objective": {"metric": "val/auroc", "direction": "maximize"},
            "parameters": {"lr": {"type": "range", "bounds": [1e-4, 1e-2], "scale": "log"}},
            "tracking": {"mode": "disabled"},
        },
        source="copied.yaml",
    )


def test_a_folder_copied_without_its_local_folder_asks_for_the_data(
    phantom_dir, tmp_path, monkeypatch, capsys
):
    import shutil

    from search.__main__ import main

    folder = ExperimentFolder.create(tmp_path / "results" / "copied", _tiny_space(phantom_dir))
    assert str(phantom_dir) not in (folder.path / "space.yaml").read_text()
    shutil.rmtree(tmp_path / "results" / ".local")

    copy = ExperimentFolder(folder.path)
    assert copy.missing_data() == ["data_dir", "labels"]
    with pytest.raises(DataLocationUnknown, match=r"--data DIR --labels CSV"), copy.locked():
        pass
    assert main(["resume", str(folder.path)]) == 2
    assert "say where the data is" in capsys.readouterr().err

    seen = {}

    def resume_search(path, **kwargs):
        again = ExperimentFolder.open(path)
        with again.locked():
            seen["data"] = again.space().data.values
        return types.SimpleNamespace(
            path=again.path, status="finished", counts={}, seconds=0.0, best=None, notes=()
        )

    monkeypatch.setattr("search.runner.resume_search", resume_search)
    moved = tmp_path / "moved"
    shutil.copytree(phantom_dir, moved)
    assert main(["resume", str(folder.path), "--data", str(moved)]) == 0
    assert seen["data"]["data_dir"] == str(moved.resolve())
    assert "labels" not in seen["data"], "DIR/labels.csv, the trial's default"
    assert str(moved) not in (folder.path / "experiment.json").read_text()


def test_command_lines_and_texts_are_recorded_without_local_paths(tmp_path):
    command = (
        "run /home/jdoe/spaces/x.yaml --data /archive/DOE_JANE --labels=../l.csv "
        "--address 10.1.2.3:6379 --trials 3 --results results"
    )
    assert public_command(command) == (
        "run <local path> --data <local path> --labels=<local path> --address <address> "
        "--trials 3 --results <local path>"
    )
    assert public_command("resume results/x --address auto") == "resume results/x --address auto"
    text = "DicomError: /archive/DOE_JANE/0001.dcm: not a DICOM file"
    assert public_text(text, {"<data>": "/archive/DOE_JANE"}) == (
        "DicomError: <data>/0001.dcm: not a DICOM file"
    )
    assert public_text(text, {}) == "DicomError: <local path>: not a DICOM file"
    assert public_text("see https://docs.ray.io/en/x and val/auroc", {}).endswith("val/auroc")
