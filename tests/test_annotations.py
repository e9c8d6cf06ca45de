"""Label files: CSV, Pascal VOC and COCO read into boxes; every malformed entry named. No Ray.

    .venv/bin/pytest tests/test_annotations.py -q
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ipb.data.annotations import IngestError, read_labels, rle_decode

VOC = """<annotation><folder>JPEGImages</folder><filename>{name}</filename>
<size><width>640</width><height>480</height><depth>3</depth></size>{objects}</annotation>"""
OBJ = ("<object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
       "<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "sub/c.jpg"):
        (root / name).write_bytes(b"x")
    return root


def _voc(folder: Path, stem: str, name: str, objects: list[dict]) -> Path:
    folder.mkdir(exist_ok=True)
    p = folder / f"{stem}.xml"
    p.write_text(VOC.format(name=name, objects="".join(OBJ.format(**o) for o in objects)))
    return p


def _rle_string(counts: list[int]) -> str:
    """pycocotools' rleToString, to check our decoder of its format."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            out.append(chr((c | (0x20 if more else 0)) + 48))
    return "".join(out)


def _runs(mask: np.ndarray) -> list[int]:
    flat = mask.T.ravel()                 # COCO runs go down the columns
    counts, val, n = [], False, 0
    for v in flat:
        if v != val:
            counts.append(n)
            val, n = v, 0
        n += 1
    return counts + [n]


def test_voc_boxes_are_zero_based_and_named_by_file(images, tmp_path):
    ann = tmp_path / "ann"
    _voc(ann, "a", "a.jpg", [{"label": "RBC", "x0": 1, "y0": 1, "x1": 50, "y1": 40},
                             {"label": "WBC", "x0": 100.5, "y0": 10, "x1": 640, "y1": 480}])
    _voc(ann, "b", "stale_name_from_another_pc.jpg", [{"label": "Platelets", "x0": 10,
                                                       "y0": 10, "x1": 30, "y1": 25}])
    _voc(ann, "c", "c.jpg", [{"label": "RBC", "x0": 5, "y0": 5, "x1": 5, "y1": 9}])  # a click
    lab = read_labels(ann, images, {"a.jpg", "b.jpg", "sub/c.jpg"})
    assert lab.mode == "colony" and lab.format == "voc"
    a = lab.boxes["a.jpg"]
    # VOC's 1-based inclusive (1, 1)-(50, 40) is 0-based [0, 50) x [0, 40)
    assert (a[0]["x0"], a[0]["y0"], a[0]["x1"], a[0]["y1"]) == (0, 0, 50, 40)
    assert (a[1]["x0"], a[1]["x1"], a[1]["y1"]) == (99, 640, 480) and a[1]["label"] == "WBC"
    assert a[0]["where"] == "a.xml object 1" and a[0]["ann_size"] == [640, 480]
    assert lab.boxes["b.jpg"][0]["label"] == "Platelets"     # found by the XML's own stem
    assert lab.summary()["classes"] == {"Platelets": 1, "RBC": 1, "WBC": 1}
    [zero] = lab.rejected                                    # listed, not fatal, not lost
    assert zero["path"] == "sub/c.jpg" and zero["label"] == "RBC"
    assert "c.xml object 1" in zero["reason"] and "zero width" in zero["reason"]


@pytest.mark.parametrize("objects, words", [
    ("<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
     "</object>", ["a.xml object 1", "empty class name"]),
    ("<object><name>RBC</name></object>", ["a.xml object 1", "no <bndbox>"]),
    ("<object><name>RBC</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>nine</xmax>"
     "<ymax>9</ymax></bndbox></object>", ["a.xml object 1", "<xmax>nine</xmax>"]),
    ("<object><name>RBC</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax></bndbox>"
     "</object>", ["a.xml", "lacks <ymax>"]),
    ("<object><name>RBC</name", ["a.xml", "not well-formed XML"]),
])
def test_voc_malformed_entries_name_file_and_object(images, tmp_path, objects, words):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "a.xml").write_text(VOC.format(name="a.jpg", objects=objects))
    with pytest.raises(IngestError) as e:
        read_labels(ann, images, {"a.jpg", "b.jpg"})
    for w in words:
        assert w in str(e.value)


def test_voc_missing_image_and_empty_directory(images, tmp_path):
    ann = tmp_path / "ann"
    _voc(ann, "zzz", "zzz.jpg", [{"label": "RBC", "x0": 1, "y0": 1, "x1": 9, "y1": 9}])
    with pytest.raises(IngestError, match=r"zzz\.xml: zzz\.jpg"):
        read_labels(ann, images, {"a.jpg"})
    (tmp_path / "none").mkdir()
    with pytest.raises(IngestError, match="no Pascal VOC .xml"):
        read_labels(tmp_path / "none", images, {"a.jpg"})
    with pytest.raises(IngestError, match="give the directory"):
        read_labels(ann / "zzz.xml", images, {"a.jpg"})


def test_coco_bbox_polygon_and_rle(images, tmp_path):
    mask = np.zeros((480, 640), bool)
    mask[100:140, 200:260] = True
    mask[120:125, 300:330] = True
    counts = _runs(mask)
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
                      {"id": 2, "file_name": "c.jpg", "width": 640, "height": 480}],
           "categories": [{"id": 7, "name": "Dense"}, {"id": 8, "name": "Spread"}],
           "annotations": [
               {"id": 10, "image_id": 1, "category_id": 7, "bbox": [10.4, 20.0, 30.2, 15.0]},
               {"id": 11, "image_id": 2, "category_id": 8, "bbox": [0, 0, 50, 50],
                "segmentation": [[5, 5, 45, 5, 45, 45, 5, 45]]},
               {"id": 12, "image_id": 1, "category_id": 8, "bbox": [200, 100, 130, 40],
                "iscrowd": 1, "segmentation": {"size": [480, 640],
                                               "counts": _rle_string(counts)}},
               {"id": 13, "image_id": 1, "category_id": 8, "bbox": [200, 100, 130, 40],
                "segmentation": {"size": [480, 640], "counts": counts}},
               {"id": 14, "image_id": 1, "category_id": 7, "bbox": [5, 5, 0, 9]}]}
    f = tmp_path / "coco.json"
    f.write_text(json.dumps(doc))
    lab = read_labels(f, images, {"a.jpg", "b.jpg", "sub/c.jpg"})
    assert lab.format == "coco"
    a = lab.boxes["a.jpg"]
    assert (a[0]["x0"], a[0]["y0"], a[0]["x1"], a[0]["y1"]) == (10, 20, 41, 35)
    assert a[0]["label"] == "Dense" and a[0]["where"] == "coco.json annotation id 10"
    c = lab.boxes["sub/c.jpg"][0]                            # file_name resolved by name
    assert c["polygon"] == [[5.0, 5.0, 45.0, 5.0, 45.0, 45.0, 5.0, 45.0]]
    assert (rle_decode(a[1]["rle"], "x") == mask).all()      # compressed (pycocotools) RLE
    assert (rle_decode(a[2]["rle"], "x") == mask).all()      # uncompressed counts
    assert [r["where"] for r in lab.rejected] == ["coco.json annotation id 14"]


@pytest.mark.parametrize("change, words", [
    (lambda d: d["annotations"][0].update(image_id=99), ["annotations[0] (id 10)", "image_id 99"]),
    (lambda d: d["annotations"][0].update(category_id=99), ["annotations[0]", "category_id 99"]),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), ["annotations[0]", "bbox must be"]),
    (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3]]),
     ["annotations[0]", "polygon 0"]),
    (lambda d: d["annotations"][0].update(segmentation={"size": [4, 4], "counts": [20]}),
     ["annotations[0]", "RLE counts run past"]),
    (lambda d: d["images"][0].update(file_name="nope.jpg"), ["images[0]: nope.jpg"]),
    (lambda d: d.pop("categories"), ["'categories'"]),
])
def test_coco_malformed_entries_are_named(images, tmp_path, change, words):
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "A"}],
           "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]}
    change(doc)
    f = tmp_path / "coco.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(IngestError) as e:
        read_labels(f, images, {"a.jpg"})
    for w in [str(f)] + words:
        assert w in str(e.value)


def test_coco_invalid_json_names_line(images, tmp_path):
    f = tmp_path / "coco.json"
    f.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(IngestError, match=r"coco\.json line 2 column \d+: not valid JSON"):
        read_labels(f, images, {"a.jpg"})


def test_csv_missing_column_wrong_fields_and_zero_size(images, tmp_path):
    f = tmp_path / "l.csv"
    f.write_text("image,x0,y0,x1,label\na.jpg,1,1,5,A\n")
    with pytest.raises(IngestError, match=r"l\.csv.*missing column\(s\) \['y1'\]"):
        read_labels(f, images, {"a.jpg"})
    f.write_text("image,x0,y0,x1,y1,label\na.jpg,1,1,5,5,A\na.jpg,1,1,5\n")
    with pytest.raises(IngestError, match=r"l\.csv line 3: 4 fields, the header has 6"):
        read_labels(f, images, {"a.jpg"})
    f.write_text("image,x0,y0,x1,y1,label\na.jpg,1,1,5,5,A\na.jpg,4,4,4,9,B\n\n"
                 "a.jpg,-5,1,5,5,A\n")
    lab = read_labels(f, images, {"a.jpg"})
    assert [b["where"] for b in lab.boxes["a.jpg"]] == ["l.csv line 2", "l.csv line 5"]
    assert lab.boxes["a.jpg"][1]["x0"] == -5                 # clipped (and listed) at ingest
    [zero] = lab.rejected
    assert "l.csv line 3" in zero["reason"] and zero["label"] == "B"


def test_class_names_differing_in_case_or_spaces_are_one_class_and_said(images, tmp_path):
    ann = tmp_path / "ann"
    box = {"x0": 1, "y0": 1, "x1": 20, "y1": 20}
    _voc(ann, "a", "a.jpg", [{"label": "RBC", **box}, {"label": "rbc ", **box},
                             {"label": "RBC", **box}, {"label": "WBC", **box}])
    _voc(ann, "b", "b.jpg", [{"label": " Rbc", **box}, {"label": " WBC ", **box}])
    lab = read_labels(ann, images, {"a.jpg", "b.jpg"})
    # the most frequent spelling wins; spaces never make a class of their own
    assert lab.summary()["classes"] == {"RBC": 4, "WBC": 2}
    [w] = lab.warnings                                       # WBC had one spelling: no warning
    assert w["path"] == str(ann)
    assert "'RBC' (2 objects), 'rbc' (1 object), 'Rbc' (1 object)" in w["warning"]


def test_case_merge_ties_keep_the_first_spelling_and_reach_the_plan(images, tmp_path):
    from ipb.data.sources import plan_sources
    f = tmp_path / "l.csv"
    f.write_text("image,x0,y0,x1,y1,label\na.jpg,1,1,9,9,rbc\nb.jpg,1,1,9,9,RBC\n"
                 "b.jpg,2,2,2,9,Rbc\na.jpg,1,1,9,9,WBC | RBC\nb.jpg,3,3,9,9,rbc\n")
    lab = read_labels(f, images, {"a.jpg", "b.jpg"})
    # rbc 2, RBC 2 (one inside the multi-label 'WBC | RBC'), Rbc 1 (a rejected box)
    assert {rel: [b["label"] for b in bs] for rel, bs in lab.boxes.items()} == {
        "a.jpg": ["rbc", "WBC|rbc"], "b.jpg": ["rbc", "rbc"]}
    assert lab.rejected[0]["label"] == "rbc"                 # a rejected box is named alike
    assert "'rbc' (2 objects), 'RBC' (2 objects), 'Rbc' (1 object)" in lab.warnings[0]["warning"]
    plan = plan_sources(images, f, "wells")                  # -> the manifest's `warnings`
    assert plan.warnings == lab.warnings
    f.write_text("image,label\na.jpg,Rbc\nb.jpg,WBC\n")      # one spelling each: no warning
    assert read_labels(f, images, {"a.jpg", "b.jpg"}).warnings == []


def test_label_map_renames_classes_before_the_case_merge_and_says_so(images, tmp_path):
    """Issue 23: class names normalised by a configurable map (data.label_map, "FROM=TO"),
    applied before spellings that differ in case are merged; each rename and each unused
    FROM is a warning (the manifest's), so no label is renamed silently."""
    from ipb.config import load_config
    from ipb.data.sources import plan_sources
    f = tmp_path / "l.csv"
    f.write_text("image,x0,y0,x1,y1,label\na.jpg,1,1,9,9,red cell\nb.jpg,1,1,9,9,RBC\n"
                 "a.jpg,2,2,9,9,white cell|red cell\nb.jpg,3,3,9,9,rbc\n")
    cfg = load_config("smoke", ["data.label_map=[red cell=RBC, white cell=WBC, plt=Platelets]"])
    lab = read_labels(f, images, {"a.jpg", "b.jpg"}, cfg.data.label_map)
    assert {rel: [b["label"] for b in bs] for rel, bs in lab.boxes.items()} == {
        "a.jpg": ["RBC", "WBC|RBC"], "b.jpg": ["RBC", "RBC"]}
    said = [w["warning"] for w in lab.warnings]
    assert "data.label_map renamed 'red cell' to 'RBC' (2 objects)" in said
    assert "data.label_map names 'plt', which no label in this file uses" in said
    assert any("differ only in case" in w for w in said)          # rbc -> RBC after the map
    assert plan_sources(images, f, "wells", cfg.data.label_map).warnings == lab.warnings
    with pytest.raises(IngestError, match="write FROM=TO"):
        read_labels(f, images, {"a.jpg", "b.jpg"}, ["RBC"])
