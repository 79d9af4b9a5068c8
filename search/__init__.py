"""Hyperparameter search over the pipeline: YAML spaces, Ax-BoTorch, Ray Tune, W&B.

    from search import load_space, run_search

    space = load_space("spaces/fixmatch.yaml")
    result = run_search(space, name="fixmatch-demo")       # results/fixmatch-demo/
    print(result.best["objective"], result.best["config"])

Names are imported on first use, so ``python -m search validate`` stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pipeline

__all__ = [
    "AxSearcher",
    "SearchError",
    "SearchResult",
    "SpaceConfig",
    "SpaceError",
    "load_space",
    "open_experiment",
    "promote",
    "resume_search",
    "run_search",
    "write_report",
]

_WHERE = {
    "AxSearcher": "search.searcher",
    "SearchError": "search.runner",
    "SearchResult": "search.runner",
    "SpaceConfig": "search.space",
    "SpaceError": "search.space",
    "load_space": "search.space",
    "open_experiment": "search.runner",
    "promote": "search.promote",
    "resume_search": "search.runner",
    "run_search": "search.runner",
    "write_report": "search.report",
}

if TYPE_CHECKING:
    from search.promote import promote
    from search.report import write_report
    from search.runner import SearchError, SearchResult, open_experiment, resume_search, run_search
    from search.searcher import AxSearcher
    from search.space import SpaceConfig, SpaceError, load_space

__getattr__, __dir__ = pipeline.lazy_exports(__name__, _WHERE)
