"""The training registries by the kind names ``python -m search list KIND`` uses."""

from __future__ import annotations

from pipeline.registry import Registry, UnknownNameError


def train_registries() -> dict[str, Registry]:
    """Kind -> registry: losses, samplers, methods, ssl_methods, tasks."""
    from pipeline.train.losses import LOSSES
    from pipeline.train.methods import METHODS
    from pipeline.train.samplers import SAMPLERS
    from pipeline.train.ssl import SSL_METHODS
    from pipeline.train.tasks import TASKS

    return {
        "losses": LOSSES,
        "samplers": SAMPLERS,
        "methods": METHODS,
        "ssl_methods": SSL_METHODS,
        "tasks": TASKS,
    }


def list_parts(kind: str) -> list[tuple[str, str]]:
    """(name, first docstring line) of every part of ``kind``; unknown kinds suggest the closest."""
    registries = train_registries()
    if kind not in registries:
        raise UnknownNameError("kind of part", kind, sorted(registries))
    return registries[kind].describe()
