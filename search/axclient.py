"""The Ax side of a search: the client a space configures, and the names Ax uses.

``build_client(space)`` configures ``ax.Client`` (``ax.api``) from a space: its
parameters (conditions included: a parameter several values of its parent activate
becomes one Ax parameter per value, see ``BRANCH``), its objective and outcome
constraints, and the generation strategy (:func:`generation_strategy` for
``algorithm: botorch``, Ax's quasi-random search otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from ax import ChoiceParameterConfig, Client, RangeParameterConfig
from ax.api.utils.generation_strategy_dispatch import choose_generation_strategy
from ax.api.utils.structs import GenerationStrategyDispatchStruct
from ax.generation_strategy.generation_strategy import GenerationStrategy
from ax.generators.torch.botorch_modular.kernels import DefaultMaternKernel
from ax.generators.torch.botorch_modular.utils import ModelConfig
from ax.utils.common.logger import set_ax_logger_levels
from botorch.acquisition.logei import qLogNoisyExpectedImprovement

from search.parameters import ChoiceParameter, RangeParameter
from search.space import SpaceConfig
from search.values import plain


def ax_metric_name(metric: str) -> str:
    """Ax parses objective strings as expressions: ``val/auroc`` -> ``val_auroc``."""
    return re.sub(r"\W", "_", metric)


@contextlib.contextmanager
def quiet_ax() -> Iterator[None]:
    """Ax logs every trial at INFO and BoTorch warns about fits; keep the terminal clean."""
    set_ax_logger_levels(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


#: how Ax names a parameter that several values of its parent activate: Ax's hierarchical
#: spaces are trees (one parent value per child), so such a parameter becomes one Ax
#: parameter per activating value (``ssl_epochs__when_simclr``, ``ssl_epochs__when_byol``),
#: and back to one name in every trial config and record
BRANCH = "__when_"


def _branches(p: RangeParameter | ChoiceParameter) -> list[tuple[str, Any]]:
    """(Ax name, activating parent value or None) of one of our parameters."""
    if p.when is None or len(p.when.values) == 1:
        return [(p.name, None)]
    return [(f"{p.name}{BRANCH}{v}", v) for v in p.when.values]


def from_ax(space: SpaceConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """Ax's parameters of a trial -> ours (the branch copies back to their one name)."""
    return {n.split(BRANCH, 1)[0]: plain(v) for n, v in params.items()}


def to_ax(space: SpaceConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """Our parameters of a trial -> Ax's (a multi-branch parameter under its branch's name)."""
    out = {}
    for p in space.parameters.searched:
        if p.name in params:
            branch = dict((v, n) for n, v in _branches(p))
            key = p.name if None in branch else branch.get(params.get(p.when.parent), p.name)
            out[key] = params[p.name]
    return out


def _ax_parameter(p: RangeParameter | ChoiceParameter, name: str, space: SpaceConfig) -> Any:
    if isinstance(p, RangeParameter):
        return RangeParameterConfig(
            name=name,
            bounds=(p.bounds[0], p.bounds[1]),
            parameter_type=p.value_type,
            scaling=p.scale,
            step_size=p.step,
        )
    children: dict[Any, list[str]] = {}
    for child in space.parameters.searched:
        if child.when is not None and child.when.parent == p.name:
            for ax_name, value in _branches(child):
                for v in [value] if value is not None else child.when.values:
                    children.setdefault(v, []).append(ax_name)
    return ChoiceParameterConfig(
        name=name,
        values=list(p.values),
        parameter_type=p.value_type,
        is_ordered=p.ordered,
        dependent_parameters={v: children.get(v, []) for v in p.values} if children else None,
    )


def build_client(space: SpaceConfig) -> Client:
    """An Ax client configured from a space: parameters (with conditions and linear
    constraints), objective and outcome constraints, and a seeded generation strategy."""
    with quiet_ax():
        client = Client(random_seed=space.seed)
        params = [
            _ax_parameter(p, name, space)
            for p in space.parameters.searched
            for name, _ in _branches(p)
        ]
        client.configure_experiment(
            parameters=params,
            parameter_constraints=list(space.parameters.constraints) or None,
            name=space.name,
            description=space.description or None,
        )
        sign = "-" if space.objective.minimize else ""
        client.configure_optimization(
            objective=sign + ax_metric_name(space.objective.metric),
            outcome_constraints=[
                f"{ax_metric_name(c.metric)} {c.op} {c.bound!r}"
                for c in space.objective.constraints
            ]
            or None,
        )
        if space.budget.algorithm == "botorch":
            client.set_generation_strategy(generation_strategy(space))
        else:
            client.configure_generation_strategy(
                method="random_search",
                initialization_random_seed=space.seed,
            )
    return client


#: BoTorch's acquisition optimizer: random starting points scored, best ones refined.
ACQF_OPTIMIZER = {"num_restarts": 20, "raw_samples": 1024}


def generation_strategy(space: SpaceConfig) -> GenerationStrategy:
    """The generation strategy of ``budget.algorithm: botorch``, built explicitly so that
    an Ax upgrade cannot change it silently (``Client.configure_generation_strategy``'s
    dispatch "is subject to change"):

    1. ``CenterOfSearchSpace``: the centre of the space (log-scaled parameters: the
       geometric centre), a sensible first training run;
    2. ``Sobol``: scrambled Sobol points seeded with ``space.seed`` until
       ``budget.initialization_trials()`` trials (the centre included) exist; while
       BoTorch waits for at least half of them to finish, free slots get more Sobol
       points rather than idling;
    3. ``MBM``: BoTorch on a single-task GP with a Matern-5/2 kernel and BoTorch's
       dimension-scaled log-normal lengthscale prior (Hvarfner et al. 2024; noise
       inferred, outcomes standardized), proposing with qLogNEI (Ament et al. 2023),
       optimized from ``ACQF_OPTIMIZER`` starts; several free slots get one batch
       proposal that accounts for the pending trials.

    The Matern-5/2 kernel instead of Ax's default RBF kernel: on Hartmann6 (see
    ``benchmarks/search_quality.py``) it left fewer seeds stuck in a local minimum, at
    the same proposal cost. The strategy is part of the Ax state (``ax_state.json``)
    and is restored with it on resume.
    """
    gs = choose_generation_strategy(
        GenerationStrategyDispatchStruct(
            method="custom",
            initialization_budget=space.budget.initialization_trials(),
            initialization_random_seed=space.seed,
            initialize_with_center=True,
            allow_exceeding_initialization_budget=True,  # keep free slots busy while BoTorch waits for data
        ),
        model_config=ModelConfig(
            covar_module_class=DefaultMaternKernel,
            covar_module_options={"nu": 2.5},
            name="Matern52",
        ),
        botorch_acqf_class=qLogNoisyExpectedImprovement,
    )
    for spec in gs.nodes_by_name["MBM"].generator_specs:
        spec.generator_gen_kwargs = {
            "model_gen_options": {"optimizer_kwargs": dict(ACQF_OPTIMIZER)}
        }
    return gs


def ax_trial_statuses(client: Client) -> dict[int, str]:
    """Trial index -> Ax status name (``COMPLETED``, ``RUNNING``, ``FAILED``, ...)."""
    with quiet_ax():
        df = client.summarize()
    if df is None or df.empty or "trial_status" not in df:
        return {}
    return {int(i): str(s).upper() for i, s in zip(df["trial_index"], df["trial_status"])}
