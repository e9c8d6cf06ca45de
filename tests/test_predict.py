"""pytest tests/test_predict.py -q

`ipb predict`: a tiny (untrained) student saved as `ipb train` saves it, loaded from a file, a
directory and an MLflow run; synthetic wells with a time-lapse series, a real tile, bad files.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ipb.config import SynthConfig, load_config, to_dict
from ipb.models import create_model
from tiny import TINY
from ipb.predict import config_for, load_student, predict_images

CLASSES = ["Debris", "Dense", "Differentiated", "Spread"]


def _save_student(path: Path, **extra) -> Path:
    torch.manual_seed(0)
    net = create_model("vgg19", num_classes=4, width=0.125)
    cfg = load_config("smoke", [*TINY, "patch.size=32"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), "arch": "vgg19", "width": 0.125,
                "classes": CLASSES, "patch_size": 32, "config": to_dict(cfg), **extra}, path)
    return path


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return _save_student(tmp_path_factory.mktemp("model") / "ckpt" / "student.pt")


@pytest.fixture(scope="module")
def wells(tmp_path_factory) -> Path:
    """2 synthetic wells x 3 time points (well_00N_tMM.tif) + one single-frame image."""
    import tifffile

    from ipb.data.synth import render_well, synthesize
    root = tmp_path_factory.mktemp("wells")
    synthesize(root / "series", SynthConfig(wells=2, size=384, time_points=3,
                                            colonies_per_well=4, seed=1), progress=False)
    img = render_well(SynthConfig(size=384, colonies_per_well=4, seed=2),
                      np.random.default_rng(2))[0][0]
    tifffile.imwrite(root / "single.tif", img)
    return root


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _check_interchange(d: Path, rows: list[dict]) -> None:
    """labels/*.ome.tif ids and geojson/*.geojson features match colonies.csv one to one:
    each id's pixels fill that row's box and area, each feature has that row's class."""
    import json

    import tifffile

    from ipb.data.microscopy import read_image
    by_id = {int(r["id"]): r for r in rows}
    seen_px, seen_geo = [], []
    for tif in sorted((d / "labels").glob("*.ome.tif")):
        img = read_image(tif.read_bytes(), tif.name)
        lab = np.stack(img.frames)
        assert lab.dtype == np.uint16 and tifffile.TiffFile(tif).is_ome
        ids = np.unique(lab)
        ids = ids[ids > 0]
        seen_px += ids.tolist()
        for i in ids:
            r = by_id[int(i)]
            frame = lab[int(r["time"])] if len(img.frames) > 1 else lab[0]
            ys, xs = np.nonzero(frame == i)
            assert int(r["x0"]) <= xs.min() and xs.max() < int(r["x1"])
            assert int(r["y0"]) <= ys.min() and ys.max() < int(r["y1"])
            assert xs.size == int(r["area"])
        assert img.pixel_size_um == pytest.approx(float(by_id[int(ids[0])]["pixel_size_um"]),
                                                  rel=1e-4) if ids.size else True
    for gj in sorted((d / "geojson").glob("*.geojson")):
        doc = json.loads(gj.read_text())
        assert doc["type"] == "FeatureCollection"
        for f in doc["features"]:
            r = by_id[f["properties"]["ipb_id"]]
            assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
            assert f["properties"]["objectType"] == "detection"
            assert f["properties"]["classification"]["name"] == r["class"]
            assert f["properties"]["probabilities"] == pytest.approx(
                {c: float(r[f"p_{c}"]) for c in CLASSES})
            ring = np.array(f["geometry"]["coordinates"][0] if f["geometry"]["type"] == "Polygon"
                            else f["geometry"]["coordinates"][0][0])
            assert (ring[0] == ring[-1]).all() and len(ring) >= 4
            assert int(r["x0"]) <= ring[:, 0].min() and ring[:, 0].max() <= int(r["x1"])
            seen_geo.append(f["properties"]["ipb_id"])
    assert sorted(seen_px) == sorted(seen_geo) == sorted(by_id)


def test_load_student_from_file_and_directory(student):
    net, meta = load_student(student)
    assert not net.training and meta["classes"] == CLASSES and meta["patch_size"] == 32
    assert meta["synthetic"] is True and "synthetic" in meta["synthetic_why"]
    net2, _ = load_student(student.parent.parent)        # searched below the directory
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(net(x)[0], net2(x)[0])
    cfg = config_for(meta, overrides={"segmentation.pixel_size_um": 1.0})
    assert cfg.segmentation.pixel_size_um == 1.0 and cfg.patch.size == 32
    assert config_for(meta, profile="paper").profile == "paper"
    old = {**meta, "config": {**meta["config"], "retired": {"knob": 1}}}   # another version
    assert config_for(old).patch.size == 32


def test_bad_model_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file"):
        load_student(tmp_path / "nope.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no student.pt"):
        load_student(tmp_path / "empty")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable student checkpoint"):
        load_student(tmp_path / "junk.pt")
    torch.save({"state_dict": {}, "arch": "vgg19"}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="lacks key"):
        load_student(tmp_path / "partial.pt")
    bad = _save_student(tmp_path / "bad" / "student.pt", width=0.25)   # weights of 0.125
    with pytest.raises(ValueError, match="do not fit vgg19 width 0.25"):
        load_student(bad)


def test_predict_synthetic_wells_series_and_bad_files(student, wells, tmp_path):
    net, meta = load_student(student)
    good = (wells / "single.tif").read_bytes()
    (tmp_path / "corrupt.tif").write_bytes(good[:len(good) // 2])     # a truncated download
    (tmp_path / "empty.png").write_bytes(b"")
    inputs = [wells / "series" / "images", wells / "single.tif", tmp_path / "corrupt.tif",
              tmp_path / "empty.png", tmp_path / "missing.tif"]
    out = predict_images(net, meta, inputs, tmp_path / "out", config_for(meta), progress=False)
    d = tmp_path / "out"
    assert out["n_images"] == 7 and out["n_skipped"] == 3 and out["test_patches"] == 5

    rows = _read(d / "colonies.csv")
    assert list(rows[0]) == ["id", "image", "time", "colony", "x0", "y0", "x1", "y1", "area",
                             "area_um2", "pixel_size_um", "border", "class", "track",
                             "class_constrained"] + [f"p_{c}" for c in CLASSES]
    assert [int(r["id"]) for r in rows] == list(range(1, len(rows) + 1))
    _check_interchange(d, rows)
    assert len(rows) == out["n_colonies"] >= 7 * 2
    p = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-4) and (p >= 0).all()
    assert [r["class"] for r in rows] == [CLASSES[i] for i in p.argmax(axis=1)]
    for r in rows:
        assert 0 <= int(r["x0"]) < int(r["x1"]) <= 384 and 0 <= int(r["y0"]) < int(r["y1"]) <= 384

    counts = _read(d / "counts.csv")
    assert len(counts) == 7
    for c in counts:
        mine = [r for r in rows if r["image"] == c["image"]]
        assert int(c["n_colonies"]) == len(mine) == sum(int(c[f"n_{k}"]) for k in CLASSES)
        for k in CLASSES:
            assert int(c[f"n_{k}"]) == sum(r["class"] == k for r in mine)
    series = [c for c in counts if c["group"].startswith("well_")]   # short: stems unique
    assert sorted((c["group"], int(c["time"])) for c in series) == [
        (f"well_00{w}", t) for w in (0, 1) for t in (0, 1, 2)]
    assert [int(c["time"]) for c in counts if c["group"] == "single"] == [-1]
    for name in ("counts_over_time_well_000.png", "counts_over_time_well_001.png",
                 "counts_over_time.png"):
        assert (d / name).stat().st_size > 1000
    assert not (d / "counts_over_time_single.png").exists()

    skipped = {Path(r["image"]).name: r["reason"] for r in _read(d / "skipped.csv")}
    assert set(skipped) == {"corrupt.tif", "empty.png", "missing.tif"}
    assert "truncated" in skipped["corrupt.tif"] and "empty" in skipped["empty.png"]
    assert skipped["missing.tif"] == "file not found"
    assert "SYNTHETIC" in (d / "README.txt").read_text().splitlines()[0]


def test_k_patches_are_reproducible_and_k1_differs(student, wells, tmp_path):
    net, meta = load_student(student)
    img = [wells / "single.tif"]
    a = predict_images(net, meta, img, tmp_path / "a", progress=False)
    b = predict_images(net, meta, img, tmp_path / "b", progress=False)
    c = predict_images(net, meta, img, tmp_path / "c", test_patches=1, progress=False)
    assert a["test_patches"] == 5 and c["test_patches"] == 1
    ta, tb, tc = ((tmp_path / x / "colonies.csv").read_text() for x in "abc")
    assert ta == tb and ta != tc
    with pytest.raises(ValueError, match="test_patches"):
        predict_images(net, meta, img, tmp_path / "d", test_patches=0, progress=False)


def test_cli_predict_with_overrides(student, wells, tmp_path, capsys):
    from ipb.cli import main
    rc = main(["predict", str(student), str(wells / "single.tif"), "--out", str(tmp_path / "o"),
               "--test-patches", "2", "segmentation.pixel_size_um=0.8"])
    assert rc == 0
    text = capsys.readouterr()
    assert "1 images" in text.out and "SYNTHETIC" in text.out and "[1/1]" in text.err
    assert "over 2 patch(es)" in (tmp_path / "o" / "README.txt").read_text()
    assert main(["predict", str(tmp_path / "nope.pt"), str(wells / "single.tif"),
                 "--out", str(tmp_path / "o2")]) == 2
    assert main(["predict", str(student), str(tmp_path / "missing.tif"),
                 "--out", str(tmp_path / "o3")]) == 2      # before the model is loaded
    assert "none of IMAGES exists" in capsys.readouterr().err


def test_predict_out_holding_a_prediction_is_refused_or_replaced(student, wells, tmp_path,
                                                                 capsys):
    """Issue 23 case 6: a second prediction into a used --out left the first one's labels/
    and geojson/ beside the new colonies.csv. Now it is refused; --overwrite replaces that
    prediction's own files and keeps everything else in the folder."""
    import tifffile

    from ipb.cli import main
    series = tmp_path / "in"
    series.mkdir()
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(series / name, tifffile.imread(wells / "single.tif"))
    out = tmp_path / "o"
    assert main(["predict", str(student), str(series), "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.ome.tif", "b.ome.tif"]
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["predict", str(student), str(series / "a.tif"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds an earlier prediction" in err and "--overwrite" in err
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.ome.tif", "b.ome.tif"]
    assert main(["predict", str(student), str(series / "a.tif"), "--out", str(out),
                 "--overwrite"]) == 0
    assert [p.name for p in (out / "labels").iterdir()] == ["a.ome.tif"]
    assert [p.name for p in (out / "geojson").iterdir()] == ["a.geojson"]
    assert (out / "notes.txt").read_text() == "mine"


def test_predict_out_that_cannot_be_written_fails_before_the_model(wells, tmp_path, capsys):
    """Issue 23 case 7: an --out that cannot be written gave an OSError traceback after the
    first image; now one line before any model is loaded (the model path does not even
    exist here, so the --out check must come first)."""
    from ipb.cli import main
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["predict", str(tmp_path / "nope.pt"), str(wells / "single.tif"),
                 "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and "Traceback" not in err and "nope.pt" not in err


def test_load_by_mlflow_run_id(student, wells, tmp_path):
    from mlflow.tracking import MlflowClient

    from ipb.tracking import tracking_uri
    c = MlflowClient(tracking_uri=tracking_uri())        # the per-test store from conftest
    exp = c.create_experiment("predict-test", artifact_location=(tmp_path / "art").as_uri())
    run = c.create_run(exp, tags={"ipb.synthetic": "true"})
    c.log_artifact(run.info.run_id, str(student), artifact_path="model")
    c.set_terminated(run.info.run_id)
    for ref in (run.info.run_id, f"runs:/{run.info.run_id}"):
        net, meta = load_student(ref)
        assert meta["source"] == f"runs:/{run.info.run_id}" and meta["classes"] == CLASSES
        assert meta["synthetic_why"] == "MLflow run tag ipb.synthetic"
    out = predict_images(net, meta, [wells / "single.tif"], tmp_path / "o", progress=False)
    assert out["n_colonies"] > 0
    empty = c.create_run(exp)
    with pytest.raises(FileNotFoundError, match="no artifact model/student.pt"):
        load_student(empty.info.run_id)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_student("0" * 32)
    with pytest.raises(FileNotFoundError, match="no MLflow store"):
        load_student("0" * 32, tracking_uri=f"sqlite:///{tmp_path}/absent.db")


def test_real_tile(student, real_dir, tmp_path):
    tiles = sorted((real_dir / "allen-hipsc" / "six-well-tiles").glob("*.tif*"))
    if not tiles:
        pytest.skip("no six-well tiles in shared/data/real")
    net, meta = load_student(student)
    cfg = config_for(meta, overrides={"segmentation.pixel_size_um": 1.0})   # ~1 um/px scans
    t0 = time.time()
    out = predict_images(net, meta, tiles[:1], tmp_path / "o", cfg, progress=False)
    seconds = time.time() - t0
    assert out["n_images"] == 1 and out["n_skipped"] == 0
    assert out["n_colonies"] >= 10 and sum(out["counts"].values()) == out["n_colonies"]
    assert seconds < 30, f"one real tile took {seconds:.1f}s"
    # opens as labels (napari/Fiji) and annotations (QuPath), one to one with colonies.csv
    rows = _read(tmp_path / "o" / "colonies.csv")
    _check_interchange(tmp_path / "o", rows)
    assert {float(r["pixel_size_um"]) for r in rows} == {1.0}     # its 96 dpi tag is ignored
    assert any("96 dpi" in w["warning"] for w in out["warnings"])
    print(f"real tile {tiles[0].name}: {out['n_colonies']} colonies in {seconds:.2f}s")


def test_corrupt_model_error_gives_no_unsafe_advice(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 20)
    with pytest.raises(ValueError) as e:
        load_student(tmp_path / "junk.pt")
    assert "weights_only" not in str(e.value) and "ipb train" in str(e.value)

    import datetime       # not a tensor or plain value: torch refuses it under weights_only
    torch.save({"state_dict": datetime.datetime(2020, 1, 1)}, tmp_path / "code.pt")
    with pytest.raises(ValueError) as e:
        load_student(tmp_path / "code.pt")
    assert "weights_only" not in str(e.value) and "more than tensors" in str(e.value)


def test_python_api_returns_a_dataframe(student, wells, tmp_path):
    import tifffile

    import ipb
    img = tifffile.imread(wells / "single.tif")
    df = ipb.predict(str(student), [wells / "single.tif", img, tmp_path / "missing.tif"])
    assert list(df.columns[:4]) == ["id", "image", "time", "colony"]
    assert list(df.columns[-4:]) == [f"p_{c}" for c in CLASSES]
    assert len(df) > 0 and df["id"].tolist() == list(range(1, len(df) + 1))
    a, b = df[df["image"] == str(wells / "single.tif")], df[df["image"] == "array_1"]
    assert len(a) == len(b) and (a["class"].values == b["class"].values).all()
    assert np.allclose(df[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1, atol=1e-4)
    assert [s["image"] for s in df.attrs["skipped"]] == [str(tmp_path / "missing.tif")]
    assert df.attrs["synthetic"] is True
    net, meta = load_student(student)          # a loaded student works too, files match
    out = predict_images(net, meta, [wells / "single.tif"], tmp_path / "o", progress=False)
    assert out["n_colonies"] == len(a)
    rows = _read(tmp_path / "o" / "colonies.csv")
    assert [r["class"] for r in rows] == list(a["class"])


def test_stack_16bit_predicts_time_points_with_warning(student, wells, tmp_path, capsys):
    import json

    import tifffile
    net, meta = load_student(student)
    img = tifffile.imread(wells / "single.tif")
    stack = np.stack([img, np.roll(img, 9, axis=1), np.roll(img, 18, axis=1)]).astype(
        np.uint16) * 257
    tifffile.imwrite(tmp_path / "movie.ome.tif", stack, ome=True,
                     metadata={"axes": "TYX", "PhysicalSizeX": 0.8, "PhysicalSizeY": 0.8})
    out = predict_images(net, meta, [tmp_path / "movie.ome.tif"], tmp_path / "o",
                         progress=True)
    err = capsys.readouterr().err
    assert "[1/1]" in err and "3 frames" in err          # not a terminal: one line per image
    d = tmp_path / "o"
    rows = _read(d / "colonies.csv")
    assert sorted({int(r["time"]) for r in rows}) == [0, 1, 2] and out["n_frames"] == 3
    _check_interchange(d, rows)
    lab = tifffile.imread(d / "labels" / "movie.ome.tif")
    assert lab.shape == stack.shape
    feats = json.loads((d / "geojson" / "movie.geojson").read_text())["features"]
    assert {f["geometry"]["plane"]["t"] for f in feats} == {0, 1, 2}
    counts = _read(d / "counts.csv")
    assert [(c["group"], int(c["time"])) for c in counts] == [("movie", t) for t in range(3)]
    # trained on 8-bit SYNTHETIC wells: a 16-bit input is called out, not silently darkened
    assert any("16-bit image, but the model was trained on 8-bit" in w["warning"]
               for w in out["warnings"])
    assert "16-bit image, but the model" in (d / "README.txt").read_text()
