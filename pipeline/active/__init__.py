"""Active learning: which unlabeled images to annotate next, and whether it pays.

    from pipeline.active import ACQUISITIONS, Pool, acquire

    chosen = acquire("entropy", Pool(probs=probs), k=20, rng=np.random.default_rng(0))

The strategies (``ACQUISITIONS``) are described in :mod:`pipeline.active.strategies`.
``python -m pipeline rank-unlabeled MODEL_DIR --k N`` ranks a model's unlabeled pool;
``pipeline.active.simulate.simulate`` replays labeling rounds on a fully labeled set
(``benchmarks/active_learning.py`` prints the comparison).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ACQUISITIONS": "pipeline.active.strategies",
    "Pool": "pipeline.active.strategies",
    "Selection": "pipeline.active.strategies",
    "acquire": "pipeline.active.strategies",
    "best_vs_second": "pipeline.active.strategies",
    "class_balanced_uncertain": "pipeline.active.strategies",
    "class_quotas": "pipeline.active.strategies",
    "diverse_uncertain": "pipeline.active.strategies",
    "gradient_embeddings": "pipeline.active.strategies",
    "k_center_greedy": "pipeline.active.strategies",
    "kmeans_pp_seeding": "pipeline.active.strategies",
    "list_strategies": "pipeline.active.strategies",
    "predictive_entropy": "pipeline.active.strategies",
    "register_acquisition": "pipeline.active.strategies",
    "weighted_kmeans": "pipeline.active.strategies",
    "RoundResult": "pipeline.active.simulate",
    "SimulationConfig": "pipeline.active.simulate",
    "SimulationError": "pipeline.active.simulate",
    "labels_to_reach": "pipeline.active.simulate",
    "learning_curves": "pipeline.active.simulate",
    "rank_unlabeled": "pipeline.active.cli",
    "write_ranking": "pipeline.active.cli",
}

__all__ = [
    "ACQUISITIONS",
    "Pool",
    "RoundResult",
    "Selection",
    "SimulationConfig",
    "SimulationError",
    "acquire",
    "best_vs_second",
    "class_balanced_uncertain",
    "class_quotas",
    "diverse_uncertain",
    "gradient_embeddings",
    "k_center_greedy",
    "kmeans_pp_seeding",
    "labels_to_reach",
    "learning_curves",
    "list_strategies",
    "predictive_entropy",
    "rank_unlabeled",
    "register_acquisition",
    "weighted_kmeans",
    "write_ranking",
]


if TYPE_CHECKING:
    from pipeline.active.cli import rank_unlabeled, write_ranking
    from pipeline.active.simulate import (
        RoundResult,
        SimulationConfig,
        SimulationError,
        labels_to_reach,
        learning_curves,
    )
    from pipeline.active.strategies import (
        ACQUISITIONS,
        Pool,
        Selection,
        acquire,
        best_vs_second,
        class_balanced_uncertain,
        class_quotas,
        diverse_uncertain,
        gradient_embeddings,
        k_center_greedy,
        kmeans_pp_seeding,
        list_strategies,
        predictive_entropy,
        register_acquisition,
        weighted_kmeans,
    )

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
