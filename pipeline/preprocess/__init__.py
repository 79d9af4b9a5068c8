"""Preprocessing: registered steps, a trained knee localizer and a 16-bit cache.

    from pipeline.preprocess import PreprocessConfig, preprocess, build_cache

    config = PreprocessConfig.from_trial({"image_size": 128, "clahe_clip": 3.0})
    crops = preprocess(read_radiograph(path), config)      # one Crop per knee
    index = build_cache(files, config, cache_root, workers=2)
    image = index.load(index.entries[0])                    # uint16 (128, 128)

Steps (``STEPS``): ``clean`` (borders, shutters, bars, blank areas, marks outside the
anatomy), ``localize`` (HOG + linear SVM knee detector, one crop per knee; windows
reach past the frame when the knee is cut or fills it), ``window`` (percentiles),
``clahe`` (OpenCV, 16-bit, at working resolution), ``pad_square`` (aspect-correct) and
``resize``. Every file is also decided from its pixels (``decide_image``: frontal knee,
other knee view, not a knee, with a score; :mod:`pipeline.preprocess.scope`), and the
cache keeps the decision with the crops. ``python -m pipeline preprocess`` builds the
cache; ``--sheet`` draws every step (and the decision) for a few images.
"""

from pipeline.preprocess.cache import (
    CacheEntry,
    CacheError,
    CacheIndex,
    build_cache,
    default_cache_root,
)
from pipeline.preprocess.chain import Crop, preprocess, run_steps
from pipeline.preprocess.config import (
    TRIAL_DEFAULTS,
    PreprocessConfig,
    PreprocessConfigError,
    StepConfig,
)
from pipeline.preprocess.localizer import KneeBox, KneeLocalizer
from pipeline.preprocess.scope import SCOPES, ScopeDecision, ScopeModel, decide_image
from pipeline.preprocess.steps import STEPS, PreprocessWarning, Work, register_step

__all__ = [
    "SCOPES",
    "STEPS",
    "TRIAL_DEFAULTS",
    "CacheEntry",
    "CacheError",
    "CacheIndex",
    "Crop",
    "KneeBox",
    "KneeLocalizer",
    "PreprocessConfig",
    "PreprocessConfigError",
    "PreprocessWarning",
    "ScopeDecision",
    "ScopeModel",
    "StepConfig",
    "Work",
    "build_cache",
    "decide_image",
    "default_cache_root",
    "preprocess",
    "register_step",
    "run_steps",
]
