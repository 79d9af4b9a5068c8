"""The Ray Tune side of a search in the driver: the Tuner, its trial folders, its callback.

The callback keeps the experiment folder's records in step with Ray: errors (the last
line of the trial's traceback), Ray's restarts of crashed trials, checkpoints (the
trial's model of record among them), and the live table.

Ray Tune's own folder (its experiment state, pickled trainable and searcher, per-trial
results with the host name and address) names local folders and machines, so it lives
in the experiment's local folder (``results/.local/<id>/ray``), not in the experiment
folder; each trial writes its checkpoint folder into the experiment folder itself
(``checkpoints/trial-0007``), where ``promote`` and ``resume`` find it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback

from search.experiment import ExperimentFolder
from search.keys import INDEX_KEY
from search.searcher import AxSearcher
from search.space import SpaceConfig
from search.worker import TrialSetup, checkpoint_name, make_trial_function


def build_tuner(
    folder: ExperimentFolder,
    space: SpaceConfig,
    *,
    setup: TrialSetup,
    searcher: AxSearcher,
    scheduler: Any,
    session: int,
    samples: int,
    on_event: Callable[[], None],
) -> tune.Tuner:
    """A Ray Tune ``Tuner`` running ``samples`` trials of ``setup`` as ``searcher`` proposes."""
    # Ray Tune's own console reporter would print beside our table: keep it quiet
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # one checkpoint kept per trial forces a snapshot of Ray's state per epoch: expected here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # a result without the objective (a trial that failed or diverged before its first
    # score, a NaN it returned) is the searcher's to record as failed, not a reason for
    # Ray Tune to end the whole search
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    resources = {"cpu": space.budget.cpus_per_trial}
    if space.budget.gpus_per_trial > 0:
        resources["gpu"] = space.budget.gpus_per_trial
    setup = dataclasses.replace(setup, checkpoints=str(folder.checkpoints_dir))
    return tune.Tuner(
        tune.with_resources(make_trial_function(setup), resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=samples,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
            trial_name_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=f"session-{session}",
            storage_path=str(folder.ray_dir),
            verbose=0,
            callbacks=[_recorder(folder, on_event)],
            failure_config=tune.FailureConfig(max_failures=space.budget.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def trial_dirname(trial: Any) -> str:
    """``trial-0007-<ray id>``: Ray trial folders named by the Ax trial index."""
    index = _index(trial)
    return f"trial-{trial.trial_id}" if index is None else f"trial-{index:04d}-{trial.trial_id}"


def _index(trial: Any) -> int | None:
    value = (getattr(trial, "config", None) or {}).get(INDEX_KEY)
    return int(value) if value is not None else None


def _error_text(trial: Any) -> str | None:
    """The last line of the trial's traceback (``RuntimeError: ...``), from Ray's error file."""
    text = None
    with contextlib.suppress(Exception):
        path = trial.error_file
        if path and Path(path).is_file():
            text = Path(path).read_text(encoding="utf-8", errors="replace")
    if text is None:
        with contextlib.suppress(Exception):
            err = trial.get_error()
            text = str(err) if err is not None else None
    if not text:
        return None
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else None


def _recorder(folder: ExperimentFolder, on_event: Callable[[], None]) -> Any:
    """A Ray Tune callback in the driver: errors, checkpoints and the live table."""

    class Recorder(Callback):
        def __init__(self) -> None:
            self.folder, self.on_event = folder, on_event

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            self.on_event()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.on_event()

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            index = _index(trial)
            if index is not None:
                self.folder.trial_note(
                    index, error=_error_text(trial) or "the trial raised an exception"
                )
                self.folder.write_tables()
            self.on_event()

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            """Ray restarts a crashed trial (``max_failures``) from its last checkpoint."""
            index = _index(trial)
            if index is not None:
                why = _error_text(trial) or "the trial's worker died"
                self.folder.trial_retried(index, f"restarted from its last checkpoint: {why}")
                self.folder.write_tables()
            self.on_event()

        def on_checkpoint(
            self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
        ) -> None:
            index = _index(trial)
            if index is not None and getattr(checkpoint, "path", None):
                # the trial's own folder (Ray's copy is in the local folder)
                folder_of_trial = self.folder.checkpoints_dir / checkpoint_name(index)
                self.folder.trial_note(index, checkpoint=str(folder_of_trial))

        # Ray pickles its callbacks into its own experiment folder; ours hold live
        # objects (the folder, the terminal) that are not needed there.
        def __reduce__(self) -> tuple[Any, ...]:
            return (Callback, ())

    return Recorder()
