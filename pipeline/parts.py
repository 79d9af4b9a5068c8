"""Every kind of pluggable part: its registry, and the trial key whose value names one.

The one list the command line (``python -m search list KIND``), the search-space checks
("unknown loss 'focall': did you mean 'focal'?") and the docs read::

    list_parts("losses")        # [(name, one-line description), ...]
    choices_for_key("loss")     # ("ce", "class_balanced", ...) or None

Backbones are timm's models, checked with ``timm`` rather than a registry of our own.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.preprocess.steps import STEPS
from pipeline.registry import Registry, UnknownNameError
from pipeline.train.losses import LOSSES
from pipeline.train.methods import METHODS
from pipeline.train.models import list_backbones
from pipeline.train.samplers import SAMPLERS
from pipeline.train.ssl import SSL_METHODS
from pipeline.train.tasks import TASKS


@dataclass(frozen=True)
class PartKind:
    """One kind of part: ``kind`` (its plural, as the CLI says it), the trial ``key`` that
    names one (``None``: none does), its ``registry`` (``None``: backbones, from timm)."""

    kind: str
    key: str | None
    registry: Registry | None
    what: str


PART_KINDS: tuple[PartKind, ...] = (
    PartKind("losses", "loss", LOSSES, "classification losses, imbalance-aware ones included"),
    PartKind("samplers", "sampler", SAMPLERS, "how a labeled batch is drawn"),
    PartKind("methods", "method", METHODS, "supervised and semi-supervised training methods"),
    PartKind("ssl_methods", "ssl_method", SSL_METHODS, "self-supervised pretraining stages"),
    PartKind("tasks", "task", TASKS, "what the model predicts"),
    PartKind("backbones", "backbone", None, "timm models (any of them can be a backbone)"),
    PartKind("steps", None, STEPS, "preprocessing steps"),
)
KINDS = tuple(k.kind for k in PART_KINDS)


def part_kind(kind: str) -> PartKind:
    """The kind named ``kind``; unknown names suggest the closest."""
    for k in PART_KINDS:
        if k.kind == kind:
            return k
    raise UnknownNameError("kind of part", kind, list(KINDS))


def list_parts(kind: str) -> list[tuple[str, str]]:
    """(name, one-line description) of every part of ``kind``."""
    k = part_kind(kind)
    if k.registry is None:
        return [(name, "timm model") for name in list_backbones()]
    return k.registry.describe()


def choices_for_key(key: str) -> tuple[str, ...] | None:
    """The valid values of a trial key that names a registered part, else ``None``
    (backbones included: timm decides, ``pipeline.train.check_backbone``)."""
    for k in PART_KINDS:
        if k.key == key and k.registry is not None:
            return tuple(k.registry.names())
    return None
