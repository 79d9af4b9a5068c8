"""DICOM-to-Schatzker pipeline: read, clean, localize, equalize, train, evaluate.

The public surface other packages (``search``) use; everything else is internal::

    from pipeline import run_trial, run_final, trial_keys, list_parts

Names load on first use, so ``import pipeline`` stays cheap.
"""

from __future__ import annotations

from pipeline._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "run_trial": "pipeline.trial",
    "trial_keys": "pipeline.trial",
    "TrialConfig": "pipeline.trial",
    "TrialError": "pipeline.trial",
    "TrialConfigError": "pipeline.trial",
    "run_final": "pipeline.final",
    "load_model": "pipeline.train.saved",
    "prepare": "pipeline.trial",
    "expected_validation": "pipeline.trial",
    "trial_metrics": "pipeline.trial",
    "DATA_SOURCE_KEYS": "pipeline.trial",
    "RUNTIME_KEYS": "pipeline.trial",
    "DataConfig": "pipeline.trial",
    "data_preparation_keys": "pipeline.trial",
    "cache_home": "pipeline.io",
    "read_radiograph": "pipeline.dicom",
    "DicomError": "pipeline.dicom",
    "UnknownNameError": "pipeline.registry",
    "unknown_name_message": "pipeline.registry",
    "lazy_exports": "pipeline._lazy",
    "PART_KINDS": "pipeline.parts",
    "choices_for_key": "pipeline.parts",
    "list_parts": "pipeline.parts",
    "atomic_write_bytes": "pipeline.io",
    "atomic_write_json": "pipeline.io",
    "atomic_write_text": "pipeline.io",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
