"""The Ax searcher driven directly (as Ray Tune would), and the experiment folder."""

from __future__ import annotations

import json

import pytest
import yaml
from ray.tune.search import Searcher

from search.cluster import fit_concurrency
from search.experiment import ExperimentFolder
from search.keys import FINAL_KEY, INDEX_KEY
from search.runner import reconcile
from search.searcher import (
    AxSearcher,
    RandomProposer,
    TPEProposer,
    ax_trial_statuses,
    build_client,
)
from search.space import SpaceConfig
from search.statefiles import ExperimentError, ExperimentLocked

SPACE = {
    "name": "unit",
    "seed": 3,
    "objective": {"metric": "val/auroc", "direction": "maximize"},
    "parameters": {
        "lr": {"type": "range", "bounds": [1e-4, 1e-1], "scale": "log"},
        "lambda_u": {"type": "range", "bounds": [0.0, 2.0]},
        "loss": ["ce", "focal"],
        "focal_gamma": {"type": "range", "bounds": [1.0, 3.0], "when": {"loss": "focal"}},
    },
    "budget": {"trials": 5, "concurrency": 2, "initial_trials": 4},
}


def _space(**budget) -> SpaceConfig:
    d = json.loads(json.dumps(SPACE))
    d["budget"].update(budget)
    return SpaceConfig.from_dict(d, source="unit.yaml")


def _folder(tmp_path, space):
    return ExperimentFolder.create(tmp_path / "exp", space)


def test_searcher_lifecycle_batches_and_statuses(tmp_path):
    space = _space()
    folder = _folder(tmp_path, space)
    client = build_client(space)
    stopped: dict[str, str] = {}
    s = AxSearcher(client, space, folder=folder, max_trials=5, concurrency=2, stopped=stopped)

    a = s.suggest("a")
    assert INDEX_KEY in a and "lr" in a
    assert len(folder.trials) == 2, "two free slots: one batch of two proposals"
    b = s.suggest("b")
    assert b[INDEX_KEY] != a[INDEX_KEY]
    assert s.suggest("c") is None, "both slots busy: no third proposal"
    for trial in (a, b):
        assert ("focal_gamma" in trial) == (trial["loss"] == "focal"), (
            "inactive parameters are absent"
        )

    s.on_trial_result("a", {"epoch": 1, "val/auroc": 0.7})
    s.on_trial_complete(
        "a", {FINAL_KEY: 1, "epoch": 2, "val/auroc": 0.8, "search/trainable_s": 0.1}
    )
    s.on_trial_result("b", {"epoch": 1, "val/auroc": 0.6})
    stopped["b"] = "stopped by the test"
    s.on_trial_complete("b", {"epoch": 1, "val/auroc": 0.6})
    c = s.suggest("c")
    d = s.suggest("d")
    s.on_trial_complete("c", None, error=True)
    s.on_trial_result("d", {"epoch": 1, "val/auroc": 0.65})
    s.on_trial_complete("d", {"epoch": 1, "val/auroc": 0.65})  # not stopped, no final: interrupted
    e = s.suggest("e")
    assert s.suggest("f") == Searcher.FINISHED, "budget of five trials spent"
    s.on_trial_complete("e", {FINAL_KEY: 1, "epoch": 2, "val/auroc": 0.9})

    ax = ax_trial_statuses(client)
    idx = {k: t[INDEX_KEY] for k, t in zip("abcde", (a, b, c, d, e))}
    assert ax[idx["a"]] == "COMPLETED" and ax[idx["e"]] == "COMPLETED"
    assert ax[idx["b"]] == "EARLY_STOPPED"
    assert ax[idx["c"]] == "FAILED"
    assert ax[idx["d"]] == "RUNNING", "an interrupted trial stays running in Ax, to be run again"
    st = {i: r["status"] for i, r in folder.trials.items()}
    assert (
        st[idx["a"]] == "completed" and st[idx["b"]] == "early_stopped" and st[idx["c"]] == "failed"
    )
    assert st[idx["d"]] == "interrupted"
    assert folder.trials[idx["a"]]["trainable_s"] == pytest.approx(0.1)

    # the state on disk is the same as in memory (written after every change)
    again = ExperimentFolder.open(folder.path)
    assert ax_trial_statuses(again.load_ax()) == ax
    best = yaml.safe_load(again.best_path.read_text())
    assert best["trial"] == idx["e"] and best["objective"]["value"] == pytest.approx(0.9)
    assert best["config"]["lr"] == e["lr"] and best["config"]["seed"] == 3
    rows = again.rows()
    assert [r["trial"] for r in rows] == sorted(idx.values())
    assert (
        again.trials_csv.read_text()
        .splitlines()[0]
        .startswith("trial,status,lr,lambda_u,loss,focal_gamma,val/auroc")
    )

    # resume: the interrupted trial is handed out again first, same index and parameters
    rerun = reconcile(again, again.load_ax())
    assert rerun == [idx["d"]]
    s2 = AxSearcher(
        again.load_ax(), space, folder=again, max_trials=5, concurrency=2, rerun=rerun, session=2
    )
    again_d = s2.suggest("d2")
    assert again_d == d
    assert s2.suggest("x") == Searcher.FINISHED


def test_reconcile_repairs_a_half_written_change(tmp_path):
    """Folder ahead of Ax (killed between the two writes): the folder's completion wins."""
    space = _space()
    folder = _folder(tmp_path, space)
    client = build_client(space)
    s = AxSearcher(client, space, folder=None, max_trials=5, concurrency=1)
    t = s.suggest("a")
    index = t[INDEX_KEY]
    folder.trial_queued(index, {k: v for k, v in t.items() if k != INDEX_KEY})
    folder.save_ax(client)  # Ax saw the trial start ...
    folder.trial_finished(
        index, "completed", metrics={"val/auroc": 0.75, "epoch": 3}
    )  # ... not its end
    assert reconcile(folder, folder.load_ax()) == []
    assert ax_trial_statuses(folder.load_ax())[index] == "COMPLETED"


def test_folder_refuses_a_second_driver_and_a_second_create(tmp_path):
    space = _space()
    folder = _folder(tmp_path, space)
    with pytest.raises(ExperimentError, match="python -m search resume"):
        ExperimentFolder.create(folder.path, space)
    with folder.locked():
        assert folder.is_locked()
        with (
            pytest.raises(ExperimentLocked, match="in use by another driver"),
            ExperimentFolder.open(folder.path).locked(),
        ):
            pass
    assert not folder.is_locked()
    with pytest.raises(ExperimentError, match="not an experiment folder"):
        ExperimentFolder.open(tmp_path / "nope")


def test_status_crashed_when_running_without_a_driver(tmp_path):
    folder = _folder(tmp_path, _space())
    folder.begin_session(address=None, command="run")
    assert folder.status == "crashed"
    with folder.locked():
        assert folder.status == "running"


@pytest.mark.parametrize("proposer", [RandomProposer, TPEProposer])
def test_other_proposers_respect_conditions_and_constraints(proposer):
    d = json.loads(json.dumps(SPACE))
    d["parameters"]["focal_gamma"].pop("when")
    d["parameters"]["T"] = {"type": "range", "bounds": [0.1, 1.0], "when": {"loss": "focal"}}
    d["parameter_constraints"] = ["lambda_u + 0.5 * focal_gamma <= 2"]
    space = SpaceConfig.from_dict(d, source="p.yaml")
    p = proposer(space, seed=0)
    points = []
    for _ in range(20):
        params, token = p.propose()
        p.observe(token, params["lambda_u"])
        points.append(params)
    for params in points:
        assert 1e-4 <= params["lr"] <= 1e-1
        assert ("T" in params) == (params["loss"] == "focal")
        assert params["lambda_u"] + 0.5 * params["focal_gamma"] <= 2 + 1e-9
    assert len({round(q["lr"], 12) for q in points}) > 10


def test_concurrency_is_capped_at_what_fits():
    space = _space(concurrency=8, cpus_per_trial=2)
    assert fit_concurrency(space, {"CPU": 4.0})[0] == 2
    gpu = _space(concurrency=8, gpus_per_trial=0.5)
    assert fit_concurrency(gpu, {"CPU": 16.0, "GPU": 2.0})[0] == 4
    from search.errors import SearchError

    with pytest.raises(SearchError, match="--gpus-per-trial 0"):
        fit_concurrency(gpu, {"CPU": 16.0})


class _Trial:
    """What Ray's schedulers read from a trial."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def test_ax_early_stopping_scheduler_stops_a_bad_curve():
    from ray.tune.schedulers import TrialScheduler

    from search.stopping import build_scheduler

    space = _space(trials=6, concurrency=4, scheduler="ax", grace_period=1, initial_trials=6)
    client = build_client(space)
    stopped: dict[str, str] = {}
    s = AxSearcher(client, space, max_trials=6, concurrency=4, stopped=stopped)
    scheduler = build_scheduler(space, s, stopped)
    good = [s.suggest(t) for t in ("a", "b", "c")]
    assert all(isinstance(g, dict) for g in good)
    for tid, final in zip("abc", (0.80, 0.85, 0.90)):
        for epoch in (1, 2, 3):
            value = final * epoch / 3
            assert (
                scheduler.on_trial_result(None, _Trial(tid), {"epoch": epoch, "val/auroc": value})
                == TrialScheduler.CONTINUE
            )
            s.on_trial_result(tid, {"epoch": epoch, "val/auroc": value})
        s.on_trial_complete(tid, {FINAL_KEY: 1, "epoch": 3, "val/auroc": final})
    index_d = s.suggest("d")[INDEX_KEY]
    decisions = [
        scheduler.on_trial_result(None, _Trial("d"), {"epoch": e, "val/auroc": 0.05})
        for e in (1, 2)
    ]
    assert TrialScheduler.STOP in decisions and "d" in stopped
    s.on_trial_complete("d", {"epoch": 2, "val/auroc": 0.05})
    assert ax_trial_statuses(client)[index_d] == "EARLY_STOPPED"


def test_asha_records_its_stops_and_lets_the_last_epoch_finish():
    from ray.tune.schedulers import TrialScheduler

    from search.stopping import build_scheduler

    space = _space(trials=8, scheduler="asha", epochs=4, grace_period=1, reduction_factor=2)
    stopped: dict[str, str] = {}
    scheduler = build_scheduler(
        space, AxSearcher(build_client(space), space, max_trials=8, concurrency=2), stopped
    )
    for tid in "abcd":
        scheduler.on_trial_add(None, _Trial(tid))
    for tid, value in zip("abc", (0.9, 0.8, 0.7)):
        for epoch in (1, 2, 3, 4):
            assert scheduler.on_trial_result(
                None, _Trial(tid), {"epoch": epoch, "val/auroc": value}
            ) in (TrialScheduler.CONTINUE, TrialScheduler.STOP)
    assert "a" not in stopped, "the best trial reaches its last epoch and finishes on its own"
    decision = scheduler.on_trial_result(None, _Trial("d"), {"epoch": 1, "val/auroc": 0.1})
    assert decision == TrialScheduler.STOP and "d" in stopped
    assert (
        scheduler.on_trial_result(None, _Trial("a"), {FINAL_KEY: 1, "epoch": 4, "val/auroc": 0.9})
        == TrialScheduler.CONTINUE
    )


def test_botorch_generation_strategy_is_pinned_and_survives_resume(tmp_path):
    """The platform's own strategy (not Ax's dispatch default): centre, seeded Sobol up to
    ``initial_trials``, then BoTorch with a Matern-5/2 GP and qLogNEI; saved and restored
    with the Ax state, and used after a resume."""
    from ax import Client
    from ax.generators.torch.botorch_modular.kernels import DefaultMaternKernel
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement

    from search.axclient import ACQF_OPTIMIZER

    space = _space(trials=8, concurrency=1, initial_trials=4)
    client = build_client(space)
    path = tmp_path / "ax.json"
    client.save_to_json_file(str(path))
    restored = Client.load_from_json_file(str(path))
    for c in (client, restored):
        gs = c._generation_strategy
        assert list(gs.nodes_by_name) == ["CenterOfSearchSpace", "Sobol", "MBM"]
        sobol = gs.nodes_by_name["Sobol"]
        assert sobol.generator_specs[0].generator_kwargs["seed"] == space.seed
        assert {tc.threshold for tc in sobol.transition_criteria} == {4, 2}, (
            "four initialization trials (the centre included), two of them observed"
        )
        (mbm,) = gs.nodes_by_name["MBM"].generator_specs
        (model,) = mbm.generator_kwargs["surrogate_spec"].model_configs
        assert model.covar_module_class is DefaultMaternKernel
        assert model.covar_module_options == {"nu": 2.5}
        assert model.botorch_model_class is None, "Ax picks the single-task GP"
        assert mbm.generator_kwargs["botorch_acqf_class"] is qLogNoisyExpectedImprovement
        assert mbm.generator_gen_kwargs["model_gen_options"]["optimizer_kwargs"] == ACQF_OPTIMIZER

    # four initialization trials, then the restored strategy proposes with BoTorch
    s = AxSearcher(restored, space, max_trials=8, concurrency=1)
    for i in range(5):
        t = s.suggest(str(i))
        s.on_trial_complete(
            str(i), {FINAL_KEY: 1, "epoch": 1, "val/auroc": 0.5 + t["lambda_u"] / 4}
        )
    nodes = [
        t.generator_runs[0]._generation_node_name for t in restored._experiment.trials.values()
    ]
    assert nodes == ["CenterOfSearchSpace", "Sobol", "Sobol", "Sobol", "MBM"]

    sobol_space = _space(algorithm="sobol")
    assert "MBM" not in build_client(sobol_space)._generation_strategy.nodes_by_name


def test_the_standard_error_of_each_report_reaches_ax():
    """A metric reported with ``<metric>_sem`` goes to Ax as (mean, SEM); without one,
    as a bare mean (Ax then infers the noise)."""
    from search.searcher import observation

    names = {"val/auroc": "val_auroc", "val/sensitivity": "val_sensitivity"}
    row = {"val/auroc": 0.9, "val/auroc_sem": 0.03, "val/sensitivity": 0.8}
    assert observation(row, names) == {"val_auroc": (0.9, 0.03), "val_sensitivity": 0.8}
    assert observation({"val/auroc": float("nan")}, names) == {}

    space = _space(trials=2, concurrency=1, initial_trials=2)
    client = build_client(space)
    s = AxSearcher(client, space, max_trials=2, concurrency=1)
    s.suggest("a")
    s.on_trial_result("a", {"epoch": 1, "val/auroc": 0.7, "val/auroc_sem": 0.05})
    s.on_trial_complete("a", {FINAL_KEY: 1, "epoch": 2, "val/auroc": 0.8, "val/auroc_sem": 0.04})
    df = client._experiment.lookup_data().df  # Ax's own record of the final observation
    assert list(zip(df["mean"].round(3), df["sem"].round(3))) == [(0.8, 0.04)]


def _asha(trials=8):
    from search.stopping import build_scheduler

    space = _space(trials=trials, scheduler="asha", epochs=4, grace_period=1, reduction_factor=2)
    stopped: dict[str, str] = {}
    searcher = AxSearcher(build_client(space), space, max_trials=trials, concurrency=2)
    return build_scheduler(space, searcher, stopped), stopped


def test_asha_does_not_stop_on_differences_within_the_noise():
    from ray.tune.schedulers import TrialScheduler

    scheduler, stopped = _asha()
    row = {"epoch": 1, "val/auroc_sem": 0.05}
    assert scheduler.on_trial_result(None, _Trial("a"), {**row, "val/auroc": 0.85}) == "CONTINUE"
    # 0.05 below the cutoff with a standard error of 0.05 each: within 2 x 0.07, goes on
    decision = scheduler.on_trial_result(None, _Trial("b"), {**row, "val/auroc": 0.80})
    assert decision == TrialScheduler.CONTINUE and not stopped
    # 0.45 below: clearly worse, stopped with the figures that decided it
    decision = scheduler.on_trial_result(None, _Trial("c"), {**row, "val/auroc": 0.40})
    assert decision == TrialScheduler.STOP
    assert "c" in stopped and "standard errors" in stopped["c"] and "0.4" in stopped["c"]


def test_asha_without_a_standard_error_is_plain_asha():
    from ray.tune.schedulers import TrialScheduler

    scheduler, stopped = _asha()
    scheduler.on_trial_result(None, _Trial("a"), {"epoch": 1, "val/auroc": 0.85})
    decision = scheduler.on_trial_result(None, _Trial("b"), {"epoch": 1, "val/auroc": 0.84})
    assert decision == TrialScheduler.STOP and "b" in stopped


def test_a_parameter_several_parent_values_activate_is_one_name_outside_ax():
    """Ax's hierarchical spaces are trees: ``ssl_epochs`` active for simclr and byol is two
    Ax parameters, and one name in every proposal, record and trial config."""
    from search.axclient import from_ax, to_ax

    space = SpaceConfig.from_dict(
        {
            "name": "branches",
            "objective": {"metric": "val/auroc"},
            "parameters": {
                "ssl_method": {"type": "choice", "values": ["none", "simclr", "byol"]},
                "ssl_epochs": {
                    "type": "choice",
                    "values": [2, 5],
                    "when": {"ssl_method": ["simclr", "byol"]},
                },
                "lr": {"type": "range", "bounds": [1e-4, 1e-2], "scale": "log"},
            },
            "budget": {"trials": 8, "concurrency": 8, "initial_trials": 8},
        },
        source="branches.yaml",
    )
    ours = {"ssl_method": "byol", "ssl_epochs": 5, "lr": 1e-3}
    assert to_ax(space, ours) == {"ssl_method": "byol", "ssl_epochs__when_byol": 5, "lr": 1e-3}
    assert from_ax(space, to_ax(space, ours)) == ours
    s = AxSearcher(build_client(space), space, max_trials=8, concurrency=8)
    proposals = [s.suggest(str(i)) for i in range(8)]
    for p in proposals:
        assert not any("__when_" in k for k in p)
        assert ("ssl_epochs" in p) == (p["ssl_method"] != "none")


def test_the_baseline_is_the_first_trial():
    space = SpaceConfig.from_dict(
        {**SPACE, "baseline": {"lr": 0.003, "lambda_u": 1.0, "loss": "focal", "focal_gamma": 2.0}},
        source="unit.yaml",
    )
    s = AxSearcher(build_client(space), space, max_trials=5, concurrency=2, baseline=space.baseline)
    first = s.suggest("a")
    assert {k: first[k] for k in ("lr", "lambda_u", "loss", "focal_gamma")} == dict(space.baseline)
    assert first[INDEX_KEY] == 0 and s.suggest("b")[INDEX_KEY] == 1


def test_the_report_names_ax_encodings_as_the_user_wrote_them():
    from search.report import shown_name

    space = _space()
    assert shown_name("loss_OH_PARAM_1", space) == "loss = focal"
    assert shown_name("lr", space) == "lr"
    assert shown_name("unknown_OH_PARAM_0", space) == "unknown_OH_PARAM_0"
