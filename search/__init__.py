"""Hyperparameter search over the pipeline: YAML spaces, Ax-BoTorch, Ray Tune, W&B.

    from search import load_space, run_search

    space = load_space("spaces/fixmatch.yaml")
    result = run_search(space, name="fixmatch-demo")       # results/fixmatch-demo/
    print(result.best["objective"], result.best["config"])

Names are imported on first use, so ``python -m search validate`` stays quick.
"""

from __future__ import annotations

import pipeline

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
__all__ = sorted(_WHERE)


__getattr__, __dir__ = pipeline.lazy_exports(__name__, _WHERE)
