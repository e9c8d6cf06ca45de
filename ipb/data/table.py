"""The colony table: Parquet shards in TABLE/colonies/ + TABLE/manifest.json. No Ray here.

    python -c "from ipb.data.table import load_colonies; print(load_colonies('TABLE').head())"

One row per colony. Crops keep their bit depth (PNG, 8- or 16-bit grey), masks are 8-bit PNG
(0/255). Everything downstream (splits, patches, training) reads only this table.

TABLE_FORMAT names the schema; it changes whenever rows of the same inputs would change (a
cache keyed on it is rebuilt). Format 2 added `mask_source`, `pixel_size_um`, `area_um2`;
`load_colonies` fills them for format-1 tables (segmented, the manifest's pixel size).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ipb.config import is_uri

SCHEMA = pa.schema([
    ("colony_id", pa.string()),       # stable: hash of source path + box (+ time)
    ("source", pa.string()),          # image path relative to the ingest SOURCE root
    ("group", pa.string()),           # well / source group for grouped splits
    ("time", pa.int32()),             # time-lapse index, -1 if none
    ("x0", pa.int32()), ("y0", pa.int32()), ("x1", pa.int32()), ("y1", pa.int32()),
    ("label", pa.string()),           # class name, null = unlabeled or multi-label
    ("multi_label", pa.bool_()),
    ("labels", pa.string()),          # "|"-joined classes of a multi-label colony, else label
    ("height", pa.int32()), ("width", pa.int32()),
    ("area", pa.int64()),             # colony pixels in the mask
    ("border", pa.bool_()),           # touches the image (or well) border
    ("bit_depth", pa.int8()),
    ("crop", pa.binary()),            # PNG bytes, grey, bit depth kept
    ("mask", pa.binary()),            # PNG bytes, uint8 0/255
    ("synthetic", pa.bool_()),
    ("mask_source", pa.string()),     # segmented | box_local | box | polygon | rle
    ("pixel_size_um", pa.float32()),  # from the image's metadata, else the config's
    ("area_um2", pa.float64()),       # area * pixel_size_um ** 2
])
TABLE_FORMAT = "ipb-colony-table/2"
COLUMNS = SCHEMA.names
META_COLUMNS = [c for c in COLUMNS if c not in ("crop", "mask")]


class TableError(ValueError):
    """A colony table that is missing, empty or not an ipb table."""


def encode_png(img: np.ndarray) -> bytes:
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG needs uint8/uint16, got {img.dtype}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("PNG decoding failed")
    return img


def to_unit(img: np.ndarray) -> np.ndarray:
    """uint8/uint16 -> float32 in [0, 1] by the dtype's range (16-bit keeps its precision)."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return img.astype(np.float32)




def _filesystem(table: str | os.PathLike):
    """(pyarrow filesystem, root path in it) of a table URI."""
    import pyarrow.fs as pafs
    try:
        fs, root = pafs.FileSystem.from_uri(str(table))
    except Exception as e:   # unknown scheme, no credentials, bad bucket name
        raise TableError(f"{table}: cannot open this table URI ({type(e).__name__}: {e}); "
                         "check the scheme (s3://, gs://, file://) and the credentials") from e
    return fs, root.rstrip("/")


def manifest_path(table: str | os.PathLike) -> Path:
    return Path(table) / "manifest.json"


def read_manifest(table: str | os.PathLike) -> dict[str, Any]:
    missing = (f"{table}: no manifest.json; is this a colony table made by `ipb ingest`? (a "
               "table in object storage is uploaded whole: manifest.json and colonies/)")
    if is_uri(table):
        fs, root = _filesystem(table)
        try:
            with fs.open_input_stream(f"{root}/manifest.json") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            raise TableError(missing) from None
    path = manifest_path(table)
    if not path.is_file():
        raise TableError(missing)
    return json.loads(path.read_text())


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write-then-rename so a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)


def shard_files(table: str | os.PathLike) -> list[Path]:
    return sorted((Path(table) / "colonies").glob("*.parquet"))


def load_colonies(table: str | os.PathLike, columns: Iterable[str] | None = None):
    """The whole table (or some columns) as a pandas DataFrame, rows in colony_id order.
    TABLE is a directory or a URI (s3://bucket/table, gs://..., file://...)."""
    import pyarrow.fs as pafs
    if is_uri(table):
        fs, root = _filesystem(table)
        infos = fs.get_file_info(pafs.FileSelector(f"{root}/colonies", allow_not_found=True))
        files = sorted(i.path for i in infos if i.path.endswith(".parquet"))
    else:
        fs, files = None, [str(f) for f in shard_files(table)]
    if not files:
        raise TableError(f"{table}: no Parquet shards under colonies/; run `ipb ingest` first")
    cols = list(columns) if columns is not None else None
    dataset = pq.ParquetDataset(files, filesystem=fs)
    have = set(dataset.schema.names)
    absent = [c for c in (cols if cols is not None else COLUMNS) if c not in have]
    read = None if cols is None else [c for c in cols if c in have]
    if read is not None and "area_um2" in absent and "area" not in read:
        read.append("area")
    df = dataset.read(columns=read).to_pandas()
    if absent:
        _fill_format1(df, absent, table)
    if "colony_id" in df.columns:
        df = df.sort_values("colony_id", kind="stable").reset_index(drop=True)
    return df[cols] if cols is not None else df


def _fill_format1(df, absent: list[str], table) -> None:
    """Columns a format-1 table lacks: every mask was segmented, one pixel size for all."""
    unknown = [c for c in absent if c not in ("mask_source", "pixel_size_um", "area_um2")]
    if unknown:
        raise TableError(f"{table}: columns {unknown} are not in this colony table")
    try:
        px = float(read_manifest(table)["config"]["segmentation"]["pixel_size_um"])
    except (TableError, KeyError, TypeError, ValueError):
        px = float("nan")
    if "mask_source" in absent:
        df["mask_source"] = "segmented"
    if "pixel_size_um" in absent:
        df["pixel_size_um"] = np.float32(px)
    if "area_um2" in absent:
        df["area_um2"] = df["area"].to_numpy(np.float64) * px ** 2


def class_names(table: str | os.PathLike) -> list[str]:
    """Sorted class names from the manifest (never hard-coded)."""
    return sorted(read_manifest(table)["classes"])


def decode_colony(row) -> tuple[np.ndarray, np.ndarray]:
    """(crop float32 in [0,1], mask bool) from one table row (dict or pandas row)."""
    return to_unit(decode_png(row["crop"])), decode_png(row["mask"]) > 0
