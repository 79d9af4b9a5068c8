"""Search spaces: every shipped space validates; bad spaces fail with named keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.__main__ import main
from search.parameters import ChoiceParameter, FixedParameter, RangeParameter
from search.problems import SpaceError
from search.space import SpaceConfig, load_space

SPACES = sorted((Path(__file__).resolve().parents[1] / "spaces").glob("*.yaml"))


def test_the_four_spaces_are_shipped():
    assert {p.stem for p in SPACES} >= {"fixmatch", "supervised", "mixmatch", "schatzker"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_space_validates_and_round_trips(path):
    space = load_space(path)
    assert space.parameters.searched, "a shipped space searches something"
    again = SpaceConfig.from_dict(yaml.safe_load(space.to_yaml()), source=str(path))
    assert again == space


def test_shipped_spaces_pass_ax(capsys):
    """`validate` also builds the Ax experiment (hierarchy, constraints)."""
    assert main(["validate", *map(str, SPACES)]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (") == len(SPACES)


def test_fixmatch_space_fits_the_cpu_budget():
    """The shipped demo: >= 8 trials, 2 at a time, 1 thread each, 64 px, small backbones."""
    space = load_space(Path(__file__).resolve().parents[1] / "spaces" / "fixmatch.yaml")
    b = space.budget
    assert b.trials >= 8 and b.concurrency == 2 and b.cpus_per_trial == 1 and b.threads == 1
    assert b.gpus_per_trial == 0 and b.epochs is not None
    fixed = space.parameters.fixed
    assert fixed["image_size"] == 64
    # labeled images per full trial: the shipped budget (8 x 30 x 32) ran the whole demo,
    # phantom included, in about 10 minutes on 2 cores; more would break the 15 minutes
    assert b.epochs * fixed["steps_per_epoch"] * fixed["batch_size"] <= 8 * 30 * 32
    names = {p.name for p in space.parameters.searched}
    assert {
        "backbone",
        "loss",
        "sampler_ratio",
        "pseudo_label_threshold",
        "ssl_epochs",
        "lr",
        "dist_align",
        "lambda_u",
    } <= names
    # mu is fixed: mu 2 cost 1.5x the time of mu 1 and ranked no better in the demo
    assert fixed["mu"] == 1 and "mu" not in names
    backbones = space.parameters.get("backbone")
    assert isinstance(backbones, ChoiceParameter)
    # small networks that learn from scratch within 200 steps at 64 px (mobilenetv3_small_050
    # reached 0.63 validation AUROC, convnext_atto 0.43, resnet10t and resnet14t 0.94)
    assert set(backbones.values) <= {"resnet10t", "resnet14t"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_spaces_validate_on_enough_crops_to_rank_trials(path):
    """No shipped space starts with the small-validation warning."""
    from search.noise import planned_warning

    assert planned_warning(load_space(path)) is None


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


BASE = """
objective: {metric: val/auroc}
parameters:
  lr: {type: range, bounds: [1.0e-4, 1.0e-2], scale: log}
"""


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (
            "parameters:\n  lr: {type: range, bounds: [0.1, 0.01]}\n",
            "parameters.lr.bounds",
            "lower must be < upper",
        ),
        (
            "parameters:\n  lr: {type: range, bounds: [0, 1], scale: log}\n",
            "parameters.lr.bounds",
            "lower > 0",
        ),
        (
            "parameters:\n  lrr: {type: range, bounds: [0.1, 1]}\n",
            "parameters.lrr",
            "did you mean 'lr'",
        ),
        ("parameters:\n  loss: [ce, focall]\n", "parameters.loss.values", "did you mean 'focal'"),
        (
            "parameters:\n  backbone: [resnet18, resnet19x]\n",
            "parameters.backbone.values",
            "unknown backbone",
        ),
        (
            "parameters:\n  lr: {type: rang, bounds: [0.1, 1]}\n",
            "parameters.lr.type",
            "did you mean 'range'",
        ),
        (
            "parameters:\n  lr: {type: range, bounds: [0.1, 1], scael: log}\n",
            "parameters.lr.scael",
            "did you mean 'scale'",
        ),
        (
            "parameters:\n  mu: {type: range, bounds: [1.5, 7]}\n",
            "parameters.mu.bounds",
            "whole numbers",
        ),
        ("parameters:\n  data_dir: /x\n  lr: 0.1\n", "parameters.data_dir", "data section"),
        ("parameters:\n  threads: 2\n", "parameters.threads", "set by the platform"),
        ("budjet: {trials: 3}\nparameters: {lr: [0.1, 0.2]}\n", "budjet", "did you mean 'budget'"),
        ("budget: {trials: 0}\nparameters: {lr: [0.1, 0.2]}\n", "budget.trials", "must be >= 1"),
        (
            "budget: {scheduler: hyperband}\nparameters: {lr: [0.1, 0.2]}\n",
            "budget.scheduler",
            "asha",
        ),
        (
            "objective: {direction: maximise}\nparameters: {lr: [0.1, 0.2]}\n",
            "objective.direction",
            "did you mean 'maximize'",
        ),
        (
            "objective: {constraints: ['val/sensitivity > 0.9']}\nparameters: {lr: [0.1, 0.2]}\n",
            "objective.constraints[0]",
            "METRIC >= NUMBER",
        ),
        (
            "tracking: {mode: offlin}\nparameters: {lr: [0.1, 0.2]}\n",
            "tracking.mode",
            "did you mean 'offline'",
        ),
        (
            "parameters:\n  loss: [ce, focal]\n  focal_gamma: {type: range, bounds: [1, 3], when: {loss: focl}}\n",
            "parameters.focal_gamma.when",
            "did you mean 'focal'",
        ),
        (
            "parameters:\n  lr: {type: range, bounds: [0.1, 1]}\n  focal_gamma: {type: range, bounds: [1, 3], "
            "when: {lr: 0.1}}\n",
            "parameters.focal_gamma.when",
            "must be a choice or fixed parameter",
        ),
        (
            "parameters:\n  lr: {type: range, bounds: [0.1, 1], scale: log}\n  lambda_u: {type: range, "
            "bounds: [0, 1]}\nparameter_constraints: ['lr + lambda_u <= 1']\n",
            "parameter_constraints[0]",
            "log-scaled",
        ),
        (
            "parameters:\n  lr: {type: range, bounds: [0.1, 1]}\nparameter_constraints: ['lr + lamda_u <= 1']\n",
            "parameter_constraints[0]",
            "unknown parameter 'lamda_u'",
        ),
        (
            "data: {data_dir: /no/such/folder}\nparameters: {lr: [0.1, 0.2]}\n",
            "data.data_dir",
            "folder not found",
        ),
    ],
)
def test_bad_space_names_file_and_key(tmp_path, text, key, message):
    path = _write(tmp_path, text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    text = str(info.value)
    line = next((ln for ln in text.splitlines() if f": {key}: " in ln), None)
    assert line is not None, text
    assert line.startswith(f"{path}: {key}: ")
    assert message in line


def test_all_problems_are_reported_together(tmp_path):
    path = _write(
        tmp_path,
        "budget: {trials: 0, concurrency: -1}\nparameters:\n  lr: {type: range, bounds: [2, 1]}\n",
    )
    with pytest.raises(SpaceError) as info:
        load_space(path)
    keys = [p for p, _ in info.value.problems]
    assert {"budget.trials", "budget.concurrency", "parameters.lr.bounds"} <= set(keys)


def test_validate_command_exit_code_and_message(tmp_path, capsys):
    bad = _write(tmp_path, "parameters:\n  lr: {type: range, bounds: [0.1, 0.01]}\n")
    assert main(["validate", str(bad)]) == 2
    assert f"{bad}: parameters.lr.bounds: lower must be < upper" in capsys.readouterr().err


def test_parameter_forms_and_conditions(tmp_path):
    path = _write(
        tmp_path,
        """
parameters:
  method: fixmatch                                   # fixed
  pseudo_label_threshold: {type: range, bounds: [0.8, 0.99], when: {method: fixmatch}}   # always active
  T: {type: range, bounds: [0.3, 1.0], when: {method: mixmatch}}           # never active: dropped
  loss: [ce, focal]                                  # shorthand choice
  focal_gamma: {type: range, bounds: [1, 3], value_type: float, when: {loss: focal}}
  mu: {type: choice, values: [1, 2, 4]}              # numbers: ordered by default
  lr: {type: range, bounds: [1e-4, 1e-2], scale: log}   # YAML reads 1e-4 as text; accepted
  epochs: {type: range, bounds: [2, 8], step: 2}
""",
    )
    space = load_space(path)
    ps = space.parameters
    assert ps.fixed == {"method": "fixmatch"}
    assert "T" not in ps.names
    threshold = ps.get("pseudo_label_threshold")
    assert isinstance(threshold, RangeParameter) and threshold.when is None
    gamma = ps.get("focal_gamma")
    assert (
        isinstance(gamma, RangeParameter) and gamma.when is not None and gamma.when.parent == "loss"
    )
    mu = ps.get("mu")
    assert isinstance(mu, ChoiceParameter) and mu.ordered and mu.value_type == "int"
    assert ps.get("lr").bounds == (1e-4, 1e-2)  # type: ignore[union-attr]
    epochs = ps.get("epochs")
    assert isinstance(epochs, RangeParameter) and epochs.value_type == "int" and epochs.step == 2
    assert space.max_epochs() == 8
    assert isinstance(ps.get("method"), FixedParameter)


def test_overrides_and_trial_base(tmp_path):
    space = SpaceConfig.from_dict(
        yaml.safe_load(BASE + "budget: {trials: 5, epochs: 3}\n"), source="s.yaml"
    )
    data = tmp_path / "dicom"
    data.mkdir()
    (data / "labels.csv").write_text("file,schatzker\n")
    changed = space.with_overrides(
        trials=9, concurrency=3, gpus_per_trial=0.5, wandb="disabled", data_dir=data
    )
    assert (changed.budget.trials, changed.budget.concurrency, changed.budget.gpus_per_trial) == (
        9,
        3,
        0.5,
    )
    assert changed.tracking.mode == "disabled"
    base = changed.trial_base()
    assert base["data_dir"] == str(data.resolve()) and base["epochs"] == 3 and base["seed"] == 0
    with pytest.raises(SpaceError, match=r"budget\.gpus_per_trial"):
        space.with_overrides(gpus_per_trial=1.5)
    with pytest.raises(ValueError, match="did you mean 'trials'"):
        space.with_overrides(trails=3)


def test_custom_trainable_names_are_free(tmp_path):
    path = _write(
        tmp_path,
        "objective: {metric: loss, direction: minimize}\nparameters:\n"
        "  x1: {type: range, bounds: [0, 1]}\n",
    )
    with pytest.raises(SpaceError, match="unknown trial setting 'x1'"):
        load_space(path)
    space = load_space(path, check_names=False)
    assert space.parameters.names == ("x1",) and "data_dir" not in space.trial_base()


def test_list_command(capsys):
    assert main(["list", "losses"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert {"ce", "focal", "ldam"} <= set(names)
    assert main(["list", "backbones", "--filter", "resnet1*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert (
        "resnet18" in names and "resnet10t" in names and all(n.startswith("resnet1") for n in names)
    )


def test_an_objective_no_trial_reports_is_refused_with_the_closest_names(tmp_path):
    text = BASE.replace("objective: {metric: val/auroc}", "objective: {metric: val/aurco}")
    with pytest.raises(
        SpaceError, match=r"objective.metric: .*'val/aurco'.*did you mean 'val/auroc'"
    ):
        load_space(_write(tmp_path, text))
    text = BASE.replace(
        "objective: {metric: val/auroc}",
        "objective: {metric: val/auroc, constraints: ['val/sensitivty >= 0.8']}",
    )
    with pytest.raises(
        SpaceError, match=r"objective.constraints\[0\]: .*did you mean 'val/sensitivity'"
    ):
        load_space(_write(tmp_path, text))
    # a metric only the 7-class task reports is fine when the space runs that task
    ok = BASE.replace("objective: {metric: val/auroc}", "objective: {metric: val/kappa}")
    with pytest.raises(SpaceError, match="val/kappa"):
        load_space(_write(tmp_path, ok))
    assert load_space(_write(tmp_path, ok + "  task: schatzker\n")).objective.metric == "val/kappa"
    # a custom trainable reports its own names
    custom = SpaceConfig.from_dict(
        {
            "objective": {"metric": "score"},
            "parameters": {"x": {"type": "range", "bounds": [0, 1]}},
        },
        check_names=False,
    )
    assert custom.objective.metric == "score"


def test_objective_folds_reach_every_trial_and_exclude_fold_parameters(tmp_path):
    text = BASE.replace(
        "objective: {metric: val/auroc}", "objective: {metric: val/auroc, folds: 5}"
    )
    space = load_space(_write(tmp_path, text))
    assert space.objective.folds == 5 and space.trial_base()["folds"] == 5
    with pytest.raises(SpaceError, match=r"objective\.folds: expected a number of folds >= 2"):
        load_space(_write(tmp_path, text.replace("folds: 5", "folds: 1")))
    with pytest.raises(SpaceError, match=r"parameters\.fold: objective\.folds cross-validates"):
        load_space(_write(tmp_path, text + "  fold: 1\n"))


def test_a_baseline_names_a_value_for_every_active_searched_parameter(tmp_path):
    text = (
        BASE
        + "  loss: [ce, focal]\n  focal_gamma: {type: range, bounds: [1, 3], when: {loss: focal}}\n"
    )
    ok = load_space(_write(tmp_path, text + "baseline: {lr: 0.001, loss: ce}\n"))
    assert ok.baseline == {"lr": 0.001, "loss": "ce"}
    problems = [
        ("baseline: {lr: 0.001}\n", "baseline.loss: missing"),
        ("baseline: {lr: 0.5, loss: ce}\n", r"baseline.lr: expected a number in \[0.0001, 0.01\]"),
        ("baseline: {lr: 0.001, loss: ce, focal_gamma: 2}\n", "baseline.focal_gamma: inactive"),
        ("baseline: {lr: 0.001, loss: focal}\n", "baseline.focal_gamma: missing"),
        ("baseline: {lr: 0.001, loss: ce, lrr: 1}\n", "did you mean 'lr'"),
    ]
    for extra, message in problems:
        with pytest.raises(SpaceError, match=message):
            load_space(_write(tmp_path, text + extra))
    assert "baseline" in ok.to_dict() and load_space(_write(tmp_path, ok.to_yaml())) == ok


def test_validate_warns_when_the_validation_split_cannot_rank_trials(tmp_path, capsys):
    small = BASE + "data: {phantom_n: 200}\n"
    assert main(["validate", str(_write(tmp_path, small))]) == 0, "a warning, not an error"
    out = capsys.readouterr().out
    assert "the validation split is too small to rank configurations" in out
    assert "objective.folds: 5" in out and "val_fraction" in out
