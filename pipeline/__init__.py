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
    "load_model": "pipeline.final",
    "read_radiograph": "pipeline.dicom",
    "DicomError": "pipeline.dicom",
    "UnknownNameError": "pipeline.registry",
    "atomic_write_bytes": "pipeline.io",
    "atomic_write_json": "pipeline.io",
    "atomic_write_text": "pipeline.io",
}

PART_KINDS = ("losses", "samplers", "methods", "ssl_methods", "tasks", "backbones", "steps")

__all__ = [*sorted(_EXPORTS), "PART_KINDS", "list_parts"]


def list_parts(kind: str) -> list[tuple[str, str]]:
    """(name, one-line description) of every registered part of ``kind`` (``PART_KINDS``).

    ``backbones`` lists timm's model names (any of them can be a backbone).
    """
    from pipeline.registry import UnknownNameError

    if kind == "steps":
        from pipeline.preprocess import STEPS

        return STEPS.describe()
    if kind == "backbones":
        from pipeline.train import list_backbones

        return [(name, "timm model") for name in list_backbones()]
    from pipeline.train import list_parts as train_parts
    from pipeline.train import train_registries

    if kind not in train_registries():
        raise UnknownNameError("kind of part", kind, list(PART_KINDS))
    return train_parts(kind)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
