"""Ray for a search: the session it runs in, and how many trials fit the cluster at once."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ray

from search.errors import SearchError
from search.space import SpaceConfig


@contextlib.contextmanager
def ray_session(
    address: str | None = None, *, num_cpus: int | None = None
) -> Iterator[dict[str, float]]:
    """Start a local Ray (or join ``address``) for the search and shut it down after.

    When Ray is already initialized in this process it is used as is and left running.
    Yields the cluster's resources.
    """
    if ray.is_initialized():
        yield dict(ray.cluster_resources())
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
    else:  # a Ray of our own, never one that happens to run on this machine
        kwargs.update(address="local", include_dashboard=False, num_cpus=num_cpus)
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise SearchError(
            f"cannot reach the Ray cluster at {address!r}: {e}. Start it with "
            "`ray start --head` (see results/README.md) or leave out --address"
        ) from e
    try:
        yield dict(ray.cluster_resources())
    finally:
        ray.shutdown()


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of each alive node of the connected Ray cluster."""
    return [
        {k: float(v) for k, v in (n.get("Resources") or {}).items()}
        for n in ray.nodes()
        if n.get("Alive")
    ]


def _plural(n: float, what: str) -> str:
    return f"{n:g} {what}" + ("" if n == 1 else "s")


def fit_concurrency(
    space: SpaceConfig,
    resources: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]] | None = None,
) -> tuple[int, str | None]:
    """How many trials fit the cluster at once (at most the budget's concurrency).

    Refuses (:class:`SearchError`, naming what the cluster has) a space whose trial
    does not fit the cluster at all, or, given ``nodes``, no single node of it: such
    a trial would wait forever.
    """
    budget = space.budget
    cpt, gpt = budget.cpus_per_trial, budget.gpus_per_trial
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    has = f"this cluster has {_plural(gpus, 'GPU')}, {_plural(cpus, 'CPU')}"
    if nodes is not None and len(nodes) > 1:
        biggest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)))
        has += (
            f" over {len(nodes)} nodes (the largest: {_plural(biggest.get('GPU', 0.0), 'GPU')}, "
            f"{_plural(biggest.get('CPU', 0.0), 'CPU')})"
        )
    if gpt > 0 and gpus <= 0:
        raise SearchError(
            f"the space asks {_plural(gpt, 'GPU')} per trial; {has}: use --gpus-per-trial 0, "
            "or join a cluster with GPUs (--address)"
        )
    if gpt > gpus or cpt > cpus:
        what = _plural(gpt, "GPU") if gpt > gpus else _plural(cpt, "CPU")
        raise SearchError(
            f"the space asks {what} per trial; {has}: lower --gpus-per-trial / "
            "--cpus-per-trial, or join a larger cluster (--address)"
        )

    def fits_in(c: float, g: float) -> int:
        n = math.floor(c / cpt + 1e-9)
        if gpt > 0:
            n = min(n, math.floor(g / gpt + 1e-9))
        return n

    if nodes:  # a trial runs on one node: count what fits node by node
        fits = sum(fits_in(n.get("CPU", 0.0), n.get("GPU", 0.0)) for n in nodes)
    else:
        fits = fits_in(cpus, gpus)
    if fits < 1:
        raise SearchError(
            f"one trial needs {_plural(cpt, 'CPU')} and {_plural(gpt, 'GPU')} on one node; "
            f"{has}: lower --cpus-per-trial / --gpus-per-trial"
        )
    concurrency = min(budget.concurrency, fits)
    note = None
    if concurrency < budget.concurrency:
        note = (
            f"concurrency {budget.concurrency} -> {concurrency}: that is what fits the cluster "
            f"({cpus:g} CPUs, {gpus:g} GPUs; {cpt:g} CPUs and {gpt:g} GPUs per trial)"
        )
    return concurrency, note
