"""One trial, end to end: DICOM files -> preprocessing cache -> splits -> training -> metrics.

This is the one entry point the search platform calls, and what ``python -m pipeline
train`` runs without Ray or W&B::

    metrics = run_trial({"method": "fixmatch", "backbone": "resnet10t", "epochs": 3}, print)

The configuration is a flat dict whose keys are listed in ``trial_keys()`` (and in
docs/architecture.md): data and split keys (:class:`DataConfig`), preprocessing keys
(``pipeline.preprocess.TRIAL_DEFAULTS``), training keys (``pipeline.train.TrainConfig``)
and ``checkpoint_dir``. With no ``data_dir`` the trial uses the synthetic phantom,
generated once per (n, seed, size, labeled and fracture fractions) in the
cache folder and shared by every trial.

Every validation score comes with its noise: the per-epoch reports carry
``val/<metric>_sem``, a patient-level bootstrap standard error. With ``folds: K`` and
no ``fold``, the trial cross-validates: it trains one model per fold, epoch by epoch
side by side, and reports the mean over folds with its standard error (K times the
cost of one fold). With ``checkpoint_dir`` the trial leaves its model of record there
(``model.pt``, :mod:`pipeline.train.saved`; fold 0's when it cross-validates), which
``promote`` compares the final model against.
"""

from pipeline.trial.config import (
    DATA_SOURCE_KEYS,
    LOCAL_PATH,
    LOCAL_PATH_KEYS,
    PHANTOM_FRACTURE_RATE,
    PHANTOM_LABELED_FRACTION,
    RUNTIME_KEYS,
    DataConfig,
    TrialConfig,
    TrialConfigError,
    TrialError,
    data_preparation_keys,
    trial_keys,
)
from pipeline.trial.data import (
    LoadedData,
    PreparedData,
    cache_root,
    data_folder,
    dicom_files,
    ensure_phantom,
    expected_validation,
    labeled_set,
    load_data,
    phantom_folder_name,
    prepare,
    prepare_data,
    split_data,
)
from pipeline.trial.run import (
    RESULT_KEYS,
    fold_mean,
    run_trial,
    save_trial_model,
    trial_metrics,
)

__all__ = [
    "DATA_SOURCE_KEYS",
    "LOCAL_PATH",
    "LOCAL_PATH_KEYS",
    "PHANTOM_FRACTURE_RATE",
    "PHANTOM_LABELED_FRACTION",
    "RESULT_KEYS",
    "RUNTIME_KEYS",
    "DataConfig",
    "LoadedData",
    "PreparedData",
    "TrialConfig",
    "TrialConfigError",
    "TrialError",
    "cache_root",
    "data_folder",
    "data_preparation_keys",
    "dicom_files",
    "ensure_phantom",
    "expected_validation",
    "fold_mean",
    "labeled_set",
    "load_data",
    "phantom_folder_name",
    "prepare",
    "prepare_data",
    "run_trial",
    "save_trial_model",
    "split_data",
    "trial_keys",
    "trial_metrics",
]
