"""Heat maps (GradCAM, LRP), their scores against known regions, and the gallery."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from explain_models import tiny_model

from pipeline.__main__ import main
from pipeline.data import CachedRadiographs
from pipeline.explain import explain_dataset, model_data
from pipeline.explain.cams import (
    MIN_CAM_CELLS,
    ExplainError,
    cam_layer,
    heatmaps,
    lrp_model,
    target_classes,
)
from pipeline.explain.score import (
    POINTING_TOLERANCE,
    CropGeometry,
    crop_geometry,
    heatmap_to_source,
    load_regions,
    region_mask,
    regions_of,
    score_heatmap,
)
from pipeline.preprocess import PreprocessConfig
from pipeline.train import ModelSpec, build_model

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def binary_dir(tmp_path_factory, phantom_dir):
    return tiny_model(tmp_path_factory.getbasetemp() / "explain-models", phantom_dir, "binary")


@pytest.fixture(scope="module")
def schatzker_dir(tmp_path_factory, phantom_dir):
    return tiny_model(tmp_path_factory.getbasetemp() / "explain-models", phantom_dir, "schatzker")


def random_head_model(backbone: str, task: str = "binary"):
    """An untrained classifier whose head is not all zeros (so gradients flow)."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone=backbone, task=task, in_chans=1, pretrained="none"))
    for name, p in model.head.named_parameters():
        if name.endswith("weight"):
            torch.nn.init.normal_(p)
    return model.eval()


# ----------------------------------------------------------------------------- score math

SQUARE = [[40.0, 40.0], [79.0, 40.0], [79.0, 79.0], [40.0, 79.0]]  # source pixels 40..79


def test_identity_geometry_scores_inside_one_and_outside_zero():
    g = CropGeometry(to_source=(1.0, 0.0, 1.0, 0.0), crop_shape=(100, 100), source_shape=(100, 100))
    inside = np.zeros((100, 100))
    inside[45:75, 45:75] = 1.0
    outside = np.ones((100, 100))
    outside[30:90, 30:90] = 0.0
    s_in, s_out = score_heatmap(inside, g, [SQUARE]), score_heatmap(outside, g, [SQUARE])
    assert s_in.mass_inside == pytest.approx(1.0)
    assert s_out.mass_inside == pytest.approx(0.0)
    assert s_in.pointing_hit and not s_out.pointing_hit
    assert s_in.region_share == pytest.approx(40 * 40 / 100**2)


def test_scores_through_the_crop_box_mapping():
    # a 60 x 40 box at (100, 50) in a 300 x 400 image, padded to a square and resized to 32
    g = CropGeometry(
        to_source=(60 / 32, 100.0, 60 / 32, 40.0), crop_shape=(32, 32), source_shape=(300, 400)
    )
    region = [[110.0, 55.0], [149.0, 55.0], [149.0, 84.0], [110.0, 84.0]]
    # crop pixels whose whole footprint lies inside / outside the region
    ids, canvas = heatmap_to_source(np.arange(32 * 32).reshape(32, 32) + 1.0, g)
    mask = region_mask([region], canvas)
    inside, outside = np.zeros((32, 32)), np.zeros((32, 32))
    for k in range(32 * 32):
        hit = mask[ids == k + 1]
        inside.flat[k] = float(hit.all())
        outside.flat[k] = float(not hit.any())
    assert inside.sum() > 0 and outside.sum() > 0
    assert score_heatmap(inside, g, [region]).mass_inside == pytest.approx(1.0)
    assert score_heatmap(inside, g, [region]).pointing_hit
    assert score_heatmap(outside, g, [region]).mass_inside == pytest.approx(0.0)
    far = np.zeros((32, 32))
    far[0, 0] = 1.0  # the crop's top-left corner: far from the region
    assert not score_heatmap(far, g, [region]).pointing_hit


def test_mass_on_the_padding_counts_as_outside():
    # a box at the image's left edge: the square reaches 20 px past it, into padding
    g = CropGeometry(to_source=(1.0, -20.0, 1.0, 0.0), crop_shape=(80, 80), source_shape=(80, 80))
    heat = np.zeros((80, 80))
    heat[:, :20] = 1.0  # only the padded strip
    region = [[0.0, 0.0], [79.0, 0.0], [79.0, 79.0], [0.0, 79.0]]  # the whole image
    s = score_heatmap(heat, g, [region])
    assert s.mass_inside == pytest.approx(0.0)
    assert s.region_share == pytest.approx(60 / 80)


def test_pointing_tolerance_is_a_share_of_the_crop_side():
    g = CropGeometry(to_source=(1.0, 0.0, 1.0, 0.0), crop_shape=(224, 224), source_shape=(224, 224))
    region = [[100.0, 100.0], [120.0, 100.0], [120.0, 120.0], [100.0, 120.0]]
    near, far = np.zeros((224, 224)), np.zeros((224, 224))
    near[110, 133] = 1.0  # 13 px right of the region: within the paper's 15 px
    far[110, 140] = 1.0  # 20 px right
    assert pytest.approx(15.0) == POINTING_TOLERANCE * 224
    assert score_heatmap(near, g, [region]).pointing_hit
    assert not score_heatmap(far, g, [region]).pointing_hit
    assert not score_heatmap(near, g, [region], tolerance=5).pointing_hit


def test_a_crop_is_scored_against_its_own_knee():
    left = [[[1.0, 1.0], [5.0, 1.0], [5.0, 5.0]]]
    regions = {("a.dcm", "L"): left, ("a.dcm", "R"): [], ("a.dcm", None): left}
    assert regions_of(regions, "a.dcm", "L") == left
    assert regions_of(regions, "a.dcm", "R") == []  # the broken knee is the other one
    assert regions_of(regions, "a.dcm", None) == left  # a crop of the whole image
    assert regions_of(regions, "b.dcm", "L") == []


def test_exact_phantom_geometry_maps_the_true_region(phantom_dir):
    regions = load_regions(phantom_dir)
    truth = [json.loads(line) for line in (phantom_dir / "truth.jsonl").open()]
    record = next(r for r in truth if r["view"] == "AP" and r["schatzker"] > 0)
    polygons = regions[(record["file"], None)]
    assert polygons
    config = PreprocessConfig.from_trial({"image_size": 64, "localize": False})
    g = crop_geometry(phantom_dir / record["file"], config)
    ids, canvas = heatmap_to_source(np.arange(64 * 64).reshape(64, 64) + 1.0, g)
    mask = region_mask(polygons, canvas)
    inside = np.zeros((64, 64))
    for k in np.unique(ids[mask]).astype(int):
        if k > 0 and mask[ids == k].all():
            inside.flat[k - 1] = 1.0
    assert inside.sum() > 0
    s = score_heatmap(inside, g, polygons)
    assert s.mass_inside == pytest.approx(1.0) and s.pointing_hit
    s = score_heatmap(1.0 - inside, g, polygons)
    assert s.mass_inside < 0.5  # thin fracture lines: most of the crop is elsewhere


# ----------------------------------------------------------------------------- methods


def test_fracture_target_is_a_fracture_class():
    probs = torch.tensor([[0.9, 0.02, 0.08, 0, 0, 0, 0], [0.1, 0.3, 0.1, 0.5, 0, 0, 0]])
    assert target_classes(probs, 7, "fracture").tolist() == [2, 3]
    assert target_classes(probs, 7, "predicted").tolist() == [0, 3]
    assert target_classes(probs[:, :2], 2, "fracture").tolist() == [1, 1]
    with pytest.raises(ExplainError):
        target_classes(probs, 7, 9)


@pytest.mark.parametrize(
    "backbone", ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"]
)
def test_gradcam_works_on_timm_backbones(backbone):
    model = random_head_model(backbone)
    x = torch.rand(2, 1, 64, 64)
    maps = heatmaps(model, x, method="gradcam")
    assert maps.maps.shape == (2, 64, 64)
    assert np.isfinite(maps.maps).all() and maps.maps.min() >= 0 and maps.maps.max() <= 1 + 1e-6
    assert maps.probs.shape == (2, 2) and maps.layer


def test_auto_layer_is_finer_than_a_two_by_two_last_stage():
    model = random_head_model("test_resnet")
    last, _, _ = cam_layer(model, "last", input_shape=(1, 64, 64))
    auto, _, _ = cam_layer(model, "auto", input_shape=(1, 64, 64))
    assert last == "layer4" and auto != last  # stride 32 at 64 px is a 2 x 2 grid
    assert MIN_CAM_CELLS <= 64 // 8 and auto == "layer2"
    with pytest.raises(KeyError, match="backbone layer"):
        cam_layer(model, "layer9", input_shape=(1, 64, 64))


@pytest.mark.parametrize("task", ["binary", "hierarchical"])
def test_lrp_gives_relevance_maps(task):
    model = random_head_model("test_resnet", task)
    maps = heatmaps(model, torch.rand(2, 1, 32, 32), method="lrp")
    assert maps.maps.shape == (2, 32, 32)
    assert maps.maps.max() == pytest.approx(1.0) and maps.maps.min() >= 0
    _, approximated = lrp_model(model)
    assert "Identity" in approximated  # timm layers captum has no rule for


@pytest.mark.parametrize("method", ["gradcam", "lrp"])
def test_two_view_inputs_give_one_map_per_image(method):
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone="test_resnet", in_chans=2, pretrained="none")).eval()
    torch.nn.init.normal_(model.head.fc.weight)
    maps = heatmaps(model, torch.rand(3, 2, 32, 32), method=method)  # frontal + lateral
    assert maps.maps.shape == (3, 32, 32) and np.isfinite(maps.maps).all()


def test_lrp_refuses_attention_backbones_by_name():
    model = random_head_model("test_vit")
    with pytest.raises(ExplainError, match=r"test_vit.*gradcam"):
        heatmaps(model, torch.rand(1, 1, 32, 32), method="lrp")


# ----------------------------------------------------------------------------- end to end


def _run(argv):
    return main(argv)


def test_explain_cli_writes_the_gallery(binary_dir, phantom_dir, tmp_path, capsys):
    out = tmp_path / "ex"
    data = ["--data", str(phantom_dir)]  # a model folder does not record its data's location
    assert (
        _run(["explain", str(binary_dir), "--images", "val", "--out", str(out), "--threads", "1"])
        == 2
    ), "without --data: the model folder does not say where its data is"
    assert "--data DIR" in capsys.readouterr().err
    assert (
        _run(
            [
                "explain",
                str(binary_dir),
                "--images",
                "val",
                "--out",
                str(out),
                "--threads",
                "1",
                *data,
            ]
        )
        == 0
    )
    for name in ("gallery.png", "gallery.html", "explain.json"):
        assert (out / name).is_file(), name
    page = (out / "gallery.html").read_text()
    assert "gallery/000_overlay.png" in page and (out / "gallery" / "000_overlay.png").is_file()
    assert "dicom/" not in page  # images are named by pseudonym, never by path
    assert "P(fracture)" in page and "label " in page
    # the phantom knows where the fractures are: the val split has one
    rows = list(csv.DictReader((out / "heatmap_scores.csv").open()))
    assert rows and all(0.0 <= float(r["mass_inside"]) <= 1.0 for r in rows)
    assert all(r["pointing_hit"] in ("0", "1") for r in rows)
    assert "heat-map scores" in capsys.readouterr().out


def test_explain_schatzker_with_lrp_and_loose_files(schatzker_dir, phantom_dir, tmp_path):
    out = tmp_path / "lrp"
    code = _run(
        ["explain", str(schatzker_dir), "--images", "train", "--method", "lrp",
         "--out", str(out), "--n", "2", "--threads", "1", "--data", str(phantom_dir)]
    )  # fmt: skip
    assert code == 0 and (out / "gallery.png").is_file()
    summary = json.loads((out / "explain.json").read_text())
    assert summary["method"] == "lrp" and summary["scored"] >= 1
    files = sorted((phantom_dir / "dicom").glob("*.dcm"))[:2]
    out = tmp_path / "files"
    assert (
        _run(["explain", str(schatzker_dir), "--images", *map(str, files), "--out", str(out)]) == 0
    )
    page = (out / "gallery.html").read_text()
    assert "Unlabeleds" in page or "Unlabeled" in page
    assert str(files[0]) not in page and files[0].name not in page


def test_explain_cli_errors_name_the_problem(binary_dir, tmp_path, capsys):
    assert _run(["explain", str(binary_dir), "--method", "gradcan"]) == 2
    assert "did you mean 'gradcam'" in capsys.readouterr().err
    assert _run(["explain", str(tmp_path), "--images", "test"]) == 2
    assert "model.pt" in capsys.readouterr().err


def test_final_report_includes_the_gallery(binary_dir):
    page = (binary_dir / "report.html").read_text()
    assert 'class="gallery"' in page and "heat maps on the test set" in page
    assert (binary_dir / "gallery.png").is_file()
    metrics = json.loads((binary_dir / "metrics.json").read_text())
    assert "gallery.html" in metrics["files"] and "gallery_html" not in metrics


def test_explain_dataset_scores_every_fractured_crop(binary_dir, phantom_dir, tmp_path):
    md = model_data(binary_dir, data_dir=phantom_dir, threads=1)
    p = md.prepared
    fractured = [i for s in (p.train, p.val, p.test) for i in s.items if i.label > 0]
    dataset = CachedRadiographs(fractured, p.index)
    result = explain_dataset(
        md.model, dataset, tmp_path, threshold=0.5, data_dir=p.data_dir,
        preprocess=p.index.config, n=1,
    )  # fmt: skip
    assert result.summary["scored"] == len(fractured) == len(result.scores)
    assert 0.0 <= result.summary["mass_inside"] <= 1.0
    assert not math.isnan(result.summary["pointing_game"])
    assert set(result.summary["groups"]) <= {"true positive", "false negative"}
