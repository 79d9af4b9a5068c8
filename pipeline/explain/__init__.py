"""Why a model says what it says: GradCAM and LRP heat maps, their galleries and scores.

    from pipeline.explain import heatmaps, explain_dataset, score_heatmap

    maps = heatmaps(model, x, method="gradcam")               # (N, H, W) in [0, 1]
    result = explain_dataset(model, dataset, out, threshold=0.4, data_dir=..., preprocess=...)
    score = score_heatmap(maps.maps[0], geometry, polygons)   # mass inside, pointing game

``python -m pipeline explain MODEL_DIR --images test`` writes the gallery of a saved
model; :func:`final_gallery` puts the test-set gallery into the final report.
Methods are registered in ``EXPLAINERS`` (``gradcam``, ``lrp``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "EXPLAINERS": "pipeline.explain.cams",
    "ExplainError": "pipeline.explain.cams",
    "ExplainOptions": "pipeline.explain.cams",
    "Heatmaps": "pipeline.explain.cams",
    "cam_layer": "pipeline.explain.cams",
    "heatmaps": "pipeline.explain.cams",
    "list_methods": "pipeline.explain.cams",
    "target_classes": "pipeline.explain.cams",
    "GalleryItem": "pipeline.explain.gallery",
    "write_gallery": "pipeline.explain.gallery",
    "ModelData": "pipeline.explain.inputs",
    "files_dataset": "pipeline.explain.inputs",
    "infer": "pipeline.explain.inputs",
    "model_data": "pipeline.explain.inputs",
    "ExplainResult": "pipeline.explain.runner",
    "explain_dataset": "pipeline.explain.runner",
    "final_gallery": "pipeline.explain.runner",
    "CropGeometry": "pipeline.explain.score",
    "HeatmapScore": "pipeline.explain.score",
    "crop_geometry": "pipeline.explain.score",
    "heatmap_to_source": "pipeline.explain.score",
    "load_regions": "pipeline.explain.score",
    "mass_inside": "pipeline.explain.score",
    "pointing_hit": "pipeline.explain.score",
    "region_mask": "pipeline.explain.score",
    "score_heatmap": "pipeline.explain.score",
}

__all__ = [
    "EXPLAINERS",
    "CropGeometry",
    "ExplainError",
    "ExplainOptions",
    "ExplainResult",
    "GalleryItem",
    "HeatmapScore",
    "Heatmaps",
    "ModelData",
    "cam_layer",
    "crop_geometry",
    "explain_dataset",
    "files_dataset",
    "final_gallery",
    "heatmap_to_source",
    "heatmaps",
    "infer",
    "list_methods",
    "load_regions",
    "mass_inside",
    "model_data",
    "pointing_hit",
    "region_mask",
    "score_heatmap",
    "target_classes",
    "write_gallery",
]


if TYPE_CHECKING:
    from pipeline.explain.cams import (
        EXPLAINERS,
        ExplainError,
        ExplainOptions,
        Heatmaps,
        cam_layer,
        heatmaps,
        list_methods,
        target_classes,
    )
    from pipeline.explain.gallery import GalleryItem, write_gallery
    from pipeline.explain.inputs import ModelData, files_dataset, infer, model_data
    from pipeline.explain.runner import ExplainResult, explain_dataset, final_gallery
    from pipeline.explain.score import (
        CropGeometry,
        HeatmapScore,
        crop_geometry,
        heatmap_to_source,
        load_regions,
        mass_inside,
        pointing_hit,
        region_mask,
        score_heatmap,
    )

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
