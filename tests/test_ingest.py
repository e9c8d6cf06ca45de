"""Ray Data ingest on every input layout (a-d), the real LZW tiles, bad inputs, resume.

    .venv/bin/pytest tests/test_ingest.py -q
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from ipb.config import load_config
from ipb.data import ingest as ingest_mod
from ipb.data.ingest import TableExistsError, ingest
from ipb.data.sources import IngestError
from ipb.data.synth import synthesize, write_class_folders
from ipb.data.table import decode_png, load_colonies, read_manifest

CFG = load_config("smoke", ["data.ingest_workers=2"])
SYNTH = dataclasses.replace(CFG.synth, wells=4, size=384, colonies_per_well=6, seed=3)


@pytest.fixture(scope="module")
def wells(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wells") / "synth"
    synthesize(out, SYNTH, progress=False)
    return out


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _write_rows(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def _snapshot(d: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(d.rglob("*")) if p.is_file()}


def _parquet_mtimes(table: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (table / "colonies").glob("*.parquet")}


def _spy_pipeline(monkeypatch) -> list[list[str]]:
    """The images each ingest run sends to Ray, appended per run."""
    seen: list[list[str]] = []
    real_pipeline = ingest_mod._pipeline

    def spy(cfg_, root, out, todo):
        seen.append(sorted(t["image"] for s in todo for t in s["tasks"]))
        return real_pipeline(cfg_, root, out, todo)

    monkeypatch.setattr(ingest_mod, "_pipeline", spy)
    return seen


def test_colony_csv_labels_multilabel_and_unlabeled(ray_local, wells, tmp_path):
    header, *rows = _rows(wells / "labels.csv")
    # two colonies nobody labelled: segmentation still finds them, they join the pool U
    dropped = [r for r in rows if r[0] == "images/well_001.tif"][:2]
    labels = _write_rows(tmp_path / "labels.csv", [header] + [r for r in rows if r not in dropped])
    m = ingest(wells, tmp_path / "table", CFG, labels=str(labels), layout="wells")
    df = load_colonies(tmp_path / "table")
    synth = json.loads((wells / "synth.json").read_text())

    assert m["synthetic"] is True and df["synthetic"].all()
    assert m["n_images"] == SYNTH.wells          # masks/ beside images/ are not wells
    assert set(df["source"]) == {f"images/well_{w:03d}.tif" for w in range(SYNTH.wells)}
    assert m["n_colonies"] == len(df) and df["colony_id"].is_unique
    # a listed box the segmentation finds nothing in is rejected (claimed but not found)
    assert len(m["rejected"]) <= 2 and all(
        r["reason"].startswith("labelled box") for r in m["rejected"]), m["rejected"]
    # classes come from the CSV; counts match the generator's up to the two dropped rows
    expected = Counter(r[5] for r in rows if "|" not in r[5])
    expected.subtract(Counter(r[5] for r in dropped if "|" not in r[5]))
    assert set(m["classes"]) <= set(synth["classes"])
    for c, n in expected.items():
        assert abs(m["classes"].get(c, 0) - n) <= 1, (c, m["classes"], dict(expected))
    assert m["classes"] == dict(Counter(df["label"].dropna()))

    multi = df[df["multi_label"]]
    n_multi = sum("|" in r[5] for r in rows if r not in dropped)
    assert n_multi >= 1 and len(multi) == n_multi == m["multi_label"]
    assert multi["label"].isna().all()
    assert all(len(s.split("|")) == 2 for s in multi["labels"])

    unl = df[df["label"].isna() & ~df["multi_label"]]
    assert len(unl) == m["unlabeled"] >= 1
    assert set(unl["source"]) <= {"images/well_001.tif"}
    single = df[df["label"].notna()]
    assert (single["labels"] == single["label"]).all()
    # crops/masks decode and agree with the stored box and area
    r = df.iloc[0]
    crop, mask = decode_png(r["crop"]), decode_png(r["mask"])
    assert crop.shape == mask.shape == (r["height"], r["width"])
    assert crop.dtype == np.uint8 and r["bit_depth"] == 8
    assert int((mask > 0).sum()) == r["area"] > 0


def test_image_csv_every_colony_inherits(ray_local, wells, tmp_path):
    _, *rows = _rows(wells / "image_labels.csv")
    image_label = dict(rows)
    m = ingest(wells, tmp_path / "table", CFG, labels=str(wells / "image_labels.csv"))
    df = load_colonies(tmp_path / "table")
    assert m["label_mode"] == "image" and len(df) >= SYNTH.wells * SYNTH.colonies_per_well - 4
    assert (df["label"] == df["source"].map(image_label)).all()
    assert not df["multi_label"].any() and m["unlabeled"] == 0
    assert m["classes"] == dict(Counter(df["label"]))


def test_class_folders(ray_local, tmp_path):
    src = tmp_path / "folders"
    write_class_folders(src, SYNTH, n_per_class=2)
    files = sorted(p for p in src.rglob("*.png"))
    # a class the paper does not have, and a multi-label crop that names its classes
    (src / "Clump").mkdir()
    shutil.copy(files[0], src / "Clump" / "c0.png")
    (src / "multi_label" / "Dense|Spread").mkdir(parents=True)
    shutil.copy(files[1], src / "multi_label" / "Dense|Spread" / "c1.png")
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*.png"))

    m = ingest(src, tmp_path / "table", CFG)      # layout auto-detected
    df = load_colonies(tmp_path / "table")
    assert m["layout"] == "folders" and m["synthetic"] is True
    assert sorted(df["source"]) == files and len(df) == len(files)    # one row per file
    assert (df[["x0", "y0"]] == 0).all().all()
    folder = df["source"].map(lambda s: s.split("/")[0])
    single = ~folder.isin(["multi_label", "unlabeled"])
    assert (df.loc[single, "label"] == folder[single]).all()
    assert set(m["classes"]) == {"Clump", "Debris", "Dense", "Differentiated", "Spread"}
    assert m["classes"]["Clump"] == 1 and m["classes"]["Dense"] == 2
    multi = df[folder == "multi_label"]
    assert len(multi) == m["multi_label"] >= 2
    assert multi["multi_label"].all() and multi["label"].isna().all()
    assert multi.set_index("source").loc["multi_label/Dense|Spread/c1.png", "labels"] \
        == "Dense|Spread"
    unl = df[folder == "unlabeled"]
    assert len(unl) == m["unlabeled"] == 2 and unl["label"].isna().all()
    assert not unl["multi_label"].any()
    assert (df["area"] > 0).all()


def test_no_labels_all_unlabeled_with_progress(ray_local, wells, tmp_path, capfd):
    m = ingest(wells, tmp_path / "table", CFG)
    df = load_colonies(tmp_path / "table")
    assert m["label_mode"] == "none" and m["classes"] == {} and m["multi_label"] == 0
    assert len(df) == m["unlabeled"] == m["n_colonies"] >= SYNTH.wells * 4
    assert df["label"].isna().all() and not df["multi_label"].any()
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("ingest:")]
    assert any("shard" in ln and "written" in ln for ln in lines), err
    assert lines[-1].startswith("ingest: done")


def test_formats_16bit_lzw_png_jpeg(ray_local, wells, tmp_path):
    src = tmp_path / "formats"
    src.mkdir()
    well = tifffile.imread(wells / "images" / "well_000.tif")
    assert well.dtype == np.uint8
    tifffile.imwrite(src / "w16.tif", well.astype(np.uint16) * 257, compression="lzw")
    cv2.imwrite(str(src / "w8.png"), well)
    cv2.imwrite(str(src / "w8.jpg"), well, [cv2.IMWRITE_JPEG_QUALITY, 95])
    ingest(src, tmp_path / "table", CFG)
    df = load_colonies(tmp_path / "table")
    by = df.groupby("source")
    assert set(by.groups) == {"w16.tif", "w8.png", "w8.jpg"}
    r16 = df[df["source"] == "w16.tif"]
    assert (r16["bit_depth"] == 16).all()
    crop = decode_png(r16.iloc[0]["crop"])
    assert crop.dtype == np.uint16 and crop.max() > 255      # 16-bit survived, not squashed
    assert (df.loc[df["source"] != "w16.tif", "bit_depth"] == 8).all()
    assert decode_png(df[df["source"] == "w8.png"].iloc[0]["crop"]).dtype == np.uint8
    # same pixels in 16-bit and 8-bit: same colonies
    assert len(r16) == by.size()["w8.png"] >= 4
    assert abs(by.size()["w8.jpg"] - by.size()["w8.png"]) <= 1


def test_real_lzw_tiles(ray_local, real_dir, tmp_path):
    tiles = sorted((real_dir / "allen-hipsc" / "six-well-tiles").glob("*.tif*"))[:2]
    if len(tiles) < 2:
        pytest.skip("six-well tiles missing")
    assert all(tifffile.TiffFile(t).pages[0].compression == 5 for t in tiles)   # LZW
    src = tmp_path / "real"
    src.mkdir()
    for t in tiles:
        (src / t.name).symlink_to(t)
    m = ingest(src, tmp_path / "table", CFG)
    df = load_colonies(tmp_path / "table")
    assert m["synthetic"] is False and not df["synthetic"].any() and not m["rejected"]
    counts = df.groupby("source").size()
    assert len(counts) == 2 and (counts > 5).all(), counts


def test_bad_inputs_are_rejected_not_fatal(ray_local, wells, tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    shutil.copy(wells / "images" / "well_000.tif", src / "good.tif")
    rng = np.random.default_rng(0)
    (src / "corrupt.tif").write_bytes(rng.bytes(4000))
    (src / "empty.png").write_bytes(b"")
    ok, buf = cv2.imencode(".png", (rng.random((200, 200)) * 255).astype(np.uint8))
    (src / "truncated.png").write_bytes(buf.tobytes()[: len(buf) // 2])
    tifffile.imwrite(src / "float.tif", rng.random((200, 200)).astype(np.float32))
    cv2.imwrite(str(src / "tiny.png"), np.full((10, 10), 128, np.uint8))
    m = ingest(src, tmp_path / "table", CFG)
    reasons = {r["path"]: r["reason"] for r in m["rejected"]}
    assert reasons.keys() >= {"corrupt.tif", "empty.png", "truncated.png", "float.tif",
                              "tiny.png"}, m["rejected"]
    assert "TIFF" in reasons["corrupt.tif"] and "empty" in reasons["empty.png"]
    assert "float32" in reasons["float.tif"] and "10x10" in reasons["tiny.png"]
    df = load_colonies(tmp_path / "table")
    assert set(df["source"]) == {"good.tif"} and len(df) == m["n_colonies"] >= 4


def test_unreadable_file_is_rejected(ray_local, wells, tmp_path, monkeypatch):
    src = tmp_path / "locked"
    src.mkdir()
    shutil.copy(wells / "images" / "well_000.tif", src / "good.tif")
    locked = src / "locked.tif"
    shutil.copy(src / "good.tif", locked)
    locked.chmod(0)
    if os.access(locked, os.R_OK):
        # root ignores the mode bits: the driver's readability check meets the error it
        # would get as a normal user
        real_open = Path.open

        def open_as_user(self, *a, **k):
            if self.name == "locked.tif":
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *a, **k)

        monkeypatch.setattr(Path, "open", open_as_user)
    try:
        m = ingest(src, tmp_path / "table", CFG)
    finally:
        locked.chmod(0o644)
    assert [r["path"] for r in m["rejected"]] == ["locked.tif"]
    assert "permission" in m["rejected"][0]["reason"].lower()
    assert m["n_colonies"] >= 4


def test_bad_label_csv_fails_before_any_work(wells, tmp_path):
    header, *rows = _rows(wells / "labels.csv")
    missing = _write_rows(tmp_path / "missing.csv", [header, *rows[:3],
                                                     ["images/nope.tif", 1, 1, 60, 60, "Dense"]])
    with pytest.raises(IngestError, match=r"missing\.csv.*images/nope\.tif"):
        ingest(wells, tmp_path / "t1", CFG, labels=str(missing))
    extra = _write_rows(tmp_path / "extra.csv", [header + ["score"], *[r + ["1"] for r in rows]])
    with pytest.raises(IngestError, match=r"extra\.csv.*unknown column.*score"):
        ingest(wells, tmp_path / "t2", CFG, labels=str(extra))
    with pytest.raises(IngestError, match="nope.csv.*does not exist"):
        ingest(wells, tmp_path / "t3", CFG, labels=str(tmp_path / "nope.csv"))
    for t in ("t1", "t2", "t3"):
        assert not (tmp_path / t).exists() or not any((tmp_path / t).iterdir())


def test_resume_and_refusal(ray_local, wells, tmp_path, monkeypatch):
    cfg = load_config("smoke", ["data.shard_size=1", "data.ingest_workers=2"])
    table = tmp_path / "table"
    m1 = ingest(wells, table, cfg)
    assert len(m1["shards"]) == SYNTH.wells
    before = _parquet_mtimes(table)
    n1 = len(load_colonies(table))

    # a crash mid-run: one shard never got written
    plan = json.loads((table / ingest_mod.PLAN_FILE).read_text())
    lost_shard = next(s for s in plan["shards"] if s["images"] == ["images/well_001.tif"])
    lost = f"{lost_shard['name']}.parquet"
    (table / "colonies" / lost).unlink()
    seen = _spy_pipeline(monkeypatch)
    m2 = ingest(wells, table, cfg)
    assert seen == [["images/well_001.tif"]]            # only the lost shard's image
    after = _parquet_mtimes(table)
    assert after.keys() == before.keys()
    assert all(after[k] == before[k] for k in before if k != lost)
    df = load_colonies(table)
    assert df["colony_id"].is_unique and len(df) == n1
    for k in ("n_colonies", "classes", "multi_label", "unlabeled", "rejected"):
        assert m2[k] == m1[k], k

    # nothing missing: no Ray work at all, nothing rewritten
    def boom(*a):
        raise AssertionError("a finished table was recomputed")

    monkeypatch.setattr(ingest_mod, "_pipeline", boom)
    m3 = ingest(wells, table, cfg)
    assert _parquet_mtimes(table) == after and m3["n_colonies"] == m1["n_colonies"]

    # another config into the same TABLE: refused, not a byte changed
    snap = _snapshot(table)
    other = load_config("smoke", ["data.shard_size=1", "segmentation.min_area_um2=2000"])
    with pytest.raises(TableExistsError, match="segmentation"):
        ingest(wells, table, other)
    with pytest.raises(TableExistsError, match="labels"):
        ingest(wells, table, cfg, labels=str(wells / "labels.csv"))
    assert _snapshot(table) == snap
    # a non-empty directory that is not a table is not touched either
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(TableExistsError, match="not an ipb colony table"):
        ingest(wells, tmp_path / "notes", cfg)
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["a.txt"]


def test_changed_source_never_duplicates(ray_local, wells, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(wells / "images", src / "images")
    cfg = load_config("smoke", ["data.shard_size=2"])
    m1 = ingest(src, tmp_path / "table", cfg)
    # a new well sorts first, so every shard's image list (and name) changes
    shutil.copy(src / "images" / "well_000.tif", src / "images" / "a_new.tif")
    m2 = ingest(src, tmp_path / "table", cfg)
    df = load_colonies(tmp_path / "table")
    assert df["colony_id"].is_unique and len(df) == m2["n_colonies"]
    per = df.groupby("source").size()
    assert per["images/a_new.tif"] == per["images/well_000.tif"]
    assert m2["n_colonies"] == m1["n_colonies"] + per["images/a_new.tif"]
    assert len(list((tmp_path / "table" / "colonies").glob("*.parquet"))) == len(m2["shards"])
    assert read_manifest(tmp_path / "table")["n_images"] == SYNTH.wells + 1


# ---------------------------------------------------------------- issue 13: nothing lost

def _link_bccd(real_dir: Path, dst: Path, stems: list[str]) -> tuple[Path, Path]:
    bccd = real_dir / "bccd" / "BCCD"
    (dst / "JPEGImages").mkdir(parents=True)
    (dst / "Annotations").mkdir()
    for s in stems:
        (dst / "JPEGImages" / f"{s}.jpg").symlink_to(bccd / "JPEGImages" / f"{s}.jpg")
        (dst / "Annotations" / f"{s}.xml").symlink_to(bccd / "Annotations" / f"{s}.xml")
    return dst / "JPEGImages", dst / "Annotations"


def test_real_voc_boxes_none_lost(ray_local, real_dir, tmp_path):
    """Real blood smears (BCCD, Pascal VOC): every in-image box is a row, whatever the
    segmentation finds; the one zero-size box of BloodImage_00338 is listed, not lost."""
    import xml.etree.ElementTree as ET
    if not (real_dir / "bccd" / "BCCD" / "Annotations").is_dir():
        pytest.skip("BCCD missing")
    stems = [f"BloodImage_{i:05d}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 338)]
    images, ann = _link_bccd(real_dir, tmp_path / "bccd", stems)
    expected, zero = Counter(), 0
    for s in stems:
        for o in ET.parse(ann / f"{s}.xml").getroot().iter("object"):
            b = [float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            if b[2] > b[0] and b[3] > b[1]:
                expected[o.findtext("name")] += 1
            else:
                zero += 1
    m = ingest(images, tmp_path / "table", CFG, labels=str(ann))
    df = load_colonies(tmp_path / "table", columns=["label", "mask_source", "pixel_size_um",
                                                    "area", "area_um2", "width", "height"])
    assert m["classes"] == dict(sorted(expected.items())) and zero == 1
    assert m["labelled_boxes"] == {"listed": sum(expected.values()) + 1,
                                   "kept": sum(expected.values()), "duplicates": 0,
                                   "rejected": 1,
                                   "mask_source": m["labelled_boxes"]["mask_source"]}
    assert sum(m["labelled_boxes"]["mask_source"].values()) == sum(expected.values())
    [rej] = m["rejected"]
    assert rej["path"] == "BloodImage_00338.jpg" and "zero width" in rej["reason"]
    assert "BloodImage_00338.xml object" in rej["reason"]
    lab = df[df["label"].notna()]
    assert set(lab["mask_source"]) <= {"segmented", "box_local", "box"}
    assert (lab["width"].clip(upper=lab["height"]) < CFG.data.min_colony_px).any()  # small kept
    # JPEGs carry no pixel size: the config's, once, with a warning count
    assert m["pixel_size"]["fallback_images"] == len(stems) and (df["pixel_size_um"] == np.float32(
        CFG.segmentation.pixel_size_um)).all()
    assert np.allclose(df["area_um2"], df["area"] * CFG.segmentation.pixel_size_um ** 2,
                       rtol=1e-5)


def test_stack_pixel_size_and_labelled_frames(ray_local, wells, tmp_path):
    src = tmp_path / "stacks"
    src.mkdir()
    well = tifffile.imread(wells / "images" / "well_000.tif")
    frames = np.stack([well, np.roll(well, 7, axis=0), np.roll(well, 14, axis=0)])
    tifffile.imwrite(src / "plate_a.ome.tif", frames, ome=True,
                     metadata={"axes": "TYX", "PhysicalSizeX": 0.8, "PhysicalSizeY": 0.8})
    tifffile.imwrite(src / "single.tif", well, resolution=(1e4 / 0.8, 1e4 / 0.8),
                     resolutionunit="CENTIMETER")
    tifffile.imwrite(src / "z.tif", frames, imagej=True, metadata={"axes": "ZYX"})
    m = ingest(src, tmp_path / "table", CFG)
    df = load_colonies(tmp_path / "table")
    st = df[df["source"] == "plate_a.ome.tif"]
    assert sorted(st["time"].unique()) == [0, 1, 2] and set(st["group"]) == {"plate_a"}
    assert (df.loc[df["source"] == "single.tif", "time"] == -1).all()
    n0 = (st["time"] == 0).sum()
    assert n0 == (df["source"] == "single.tif").sum() and n0 >= 4
    assert m["n_frames"] == 4 and m["pixel_size"]["from"] == {"OME-XML": 1, "TIFF resolution": 1}
    assert m["pixel_size"]["fallback_images"] == 0 and df["colony_id"].is_unique
    [rej] = m["rejected"]
    assert rej["path"] == "z.tif" and "Z stack" in rej["reason"] and "Z Project" in rej["reason"]


def test_symlink_loop_and_duplicate_rows(ray_local, wells, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(wells / "images", src)
    (src / "selfdir").symlink_to(".")               # `ln -s . src/selfdir`
    header, *rows = _rows(wells / "labels.csv")
    rows = [[r[0].removeprefix("images/"), *r[1:]] for r in rows]
    labels = _write_rows(tmp_path / "labels.csv", [header] + rows + rows[:5])   # 5 twice
    m = ingest(src, tmp_path / "table", CFG, labels=str(labels))
    df = load_colonies(tmp_path / "table")
    assert m["layout"] == "wells" and m["n_images"] == SYNTH.wells    # not class "selfdir"
    assert not df["source"].str.startswith("selfdir").any()
    assert any(r["path"] == "selfdir" and "symlink" in r["reason"] for r in m["rejected"])
    assert m["labelled_boxes"]["duplicates"] == 5 and len(m["duplicates"]) == 5
    assert m["labelled_boxes"]["kept"] == len(rows) and df["colony_id"].is_unique
    assert all(d["where"].startswith("labels.csv line ") for d in m["duplicates"])


def test_adding_an_image_mid_list_redoes_only_it(ray_local, wells, tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(wells / "images", src / "images")
    cfg = load_config("smoke", ["data.shard_size=2"])
    ingest(src, tmp_path / "table", cfg)
    before = _parquet_mtimes(tmp_path / "table")
    shutil.copy(src / "images" / "well_001.tif", src / "images" / "well_001b.tif")
    seen = _spy_pipeline(monkeypatch)
    m = ingest(src, tmp_path / "table", cfg)
    assert seen == [["images/well_001b.tif"]]
    after = _parquet_mtimes(tmp_path / "table")
    assert {k: v for k, v in after.items() if k in before} == before     # nothing rewritten
    df = load_colonies(tmp_path / "table")
    per = df.groupby("source").size()
    assert per["images/well_001b.tif"] == per["images/well_001.tif"] and df["colony_id"].is_unique
    assert m["n_images"] == SYNTH.wells + 1
    assert m["this_run"]["images"] == 1 and m["this_run"]["rows"] == per["images/well_001b.tif"]


def test_format1_tables_still_load(tmp_path):
    """A table written before mask_source/pixel_size_um/area_um2 existed (no Ray)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ipb.data.table import SCHEMA, write_json_atomic
    old = pa.schema([f for f in SCHEMA if f.name not in ("mask_source", "pixel_size_um",
                                                          "area_um2")])
    row = {"colony_id": "b", "source": "a.png", "group": "a", "time": -1, "x0": 0, "y0": 0,
           "x1": 4, "y1": 4, "label": "A", "multi_label": False, "labels": "A", "height": 4,
           "width": 4, "area": 10, "border": False, "bit_depth": 8, "crop": b"", "mask": b"",
           "synthetic": False}
    (tmp_path / "colonies").mkdir()
    pq.write_table(pa.Table.from_pylist([row, {**row, "colony_id": "a", "area": 5}], schema=old),
                   tmp_path / "colonies" / "shard-00000.parquet")
    write_json_atomic(tmp_path / "manifest.json", {
        "format": "ipb-colony-table/1", "classes": {"A": 2},
        "config": {"segmentation": {"pixel_size_um": 0.5}}})
    df = load_colonies(tmp_path)
    assert list(df["colony_id"]) == ["a", "b"] and set(df["mask_source"]) == {"segmented"}
    assert list(df["area_um2"]) == [1.25, 2.5] and (df["pixel_size_um"] == 0.5).all()
    part = load_colonies(tmp_path, columns=["colony_id", "area_um2"])
    assert list(part.columns) == ["colony_id", "area_um2"] and list(part["area_um2"]) == [1.25, 2.5]


def test_progress_bar_on_a_terminal_lines_otherwise(monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    lines: list[str] = []
    bar = ingest_mod._Progress(10, lines.append, enabled=True)
    bar.shard("shard-a", 4, 30, 0)
    bar.shard("shard-b", 6, 20, 1)
    bar.close()
    assert "10/10" in term.getvalue() and "colonies=50" in term.getvalue()
    assert "img/s" in term.getvalue() and not lines          # a bar, no lines
    monkeypatch.setattr(sys, "stderr", io.StringIO())         # a log file / CI
    bar = ingest_mod._Progress(10, lines.append, enabled=True)
    bar.shard("shard-a", 4, 30, 0)
    bar.close()
    assert len(lines) == 1 and lines[0].startswith("ingest: 4/10 images (")
    assert "/s), shard shard-a written (30 colonies, 0 rejected)" in lines[0]


def test_coco_labels_with_polygons(ray_local, wells, tmp_path):
    """The SYNTHETIC wells' boxes as COCO JSON; one colony also drawn as a polygon."""
    header, *rows = _rows(wells / "labels.csv")
    single = [r for r in rows if "|" not in r[5]]
    names = sorted({r[5] for r in single})
    images = sorted({r[0] for r in single})
    x0, y0, x1, y1 = (int(v) for v in single[0][1:5])
    anns = [{"id": k, "image_id": images.index(r[0]), "category_id": names.index(r[5]),
             "bbox": [int(r[1]), int(r[2]), int(r[3]) - int(r[1]), int(r[4]) - int(r[2])]}
            for k, r in enumerate(single)]
    anns[0]["segmentation"] = [[x0, y0, x1, y0, x1, y1, x0, (y0 + y1) / 2]]
    coco = {"images": [{"id": i, "file_name": Path(n).name} for i, n in enumerate(images)],
            "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
            "annotations": anns}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    m = ingest(wells, tmp_path / "table", CFG, labels=str(tmp_path / "coco.json"))
    assert m["label_format"] == "coco" and m["classes"] == dict(Counter(r[5] for r in single))
    assert m["labelled_boxes"]["kept"] == len(single) and m["labelled_boxes"]["rejected"] == 0
    assert m["labelled_boxes"]["mask_source"].get("polygon") == 1
    df = load_colonies(tmp_path / "table", columns=["x0", "y0", "mask_source", "mask"])
    poly = df[df["mask_source"] == "polygon"].iloc[0]
    assert (poly["x0"], poly["y0"]) == (x0, y0)
    mask = decode_png(poly["mask"]) > 0
    assert mask[0, 0] and not mask[-1, 0]        # the polygon, not the box or the segmentation
