"""A directory that ingest writes: on this disk, or in object storage (s3://, gs://). No Ray here.

    python -c "from ipb.data.store import Store; print(Store('s3://bucket/t').list('colonies'))"

`Store(location)` names files relative to one root through a pyarrow filesystem, so the same
code writes a colony table to a local directory or a bucket. Every write is all or nothing: on
a local disk a temp file renamed into place, in object storage one object that appears whole
when its upload completes (S3 and GCS have no rename and need none). A URI may carry pyarrow's
options, e.g. s3://bucket/t?endpoint_override=127.0.0.1:9000&scheme=http for an S3-compatible
server; credentials come from the environment (instance role, AWS_* / GOOGLE_* variables).
"""
from __future__ import annotations

import io
import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ipb.config import expand_path, is_uri


class StoreError(ValueError):
    """A location that cannot be opened (unknown scheme, no credentials, bad bucket)."""


class Store:
    def __init__(self, location: str | os.PathLike):
        if is_uri(location):
            try:
                self.fs, root = pafs.FileSystem.from_uri(str(location))
            except Exception as e:
                raise StoreError(f"{location}: cannot open this URI ({type(e).__name__}: {e}); "
                                 "check the scheme (s3://, gs://, file://) and the "
                                 "credentials") from e
            self.location, self.root = str(location), root.rstrip("/")
        else:
            self.fs = pafs.LocalFileSystem()
            self.location = self.root = str(expand_path(str(location)).resolve())
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __str__(self) -> str:
        return self.location

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def list(self, *parts: str) -> list[str]:
        """Names (not paths) in a directory; [] when it does not exist."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts), allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def makedirs(self, *parts: str) -> None:
        if self.local:      # object stores have no directories to make
            self.fs.create_dir(self.path(*parts), recursive=True)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read()

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def read_parquet(self, *parts: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(*parts), columns=columns, filesystem=self.fs)

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """All or nothing: a reader sees the old file, or no file, or the whole new one."""
        target = self.path(*parts)
        if not self.local:
            with self.fs.open_output_stream(target) as f:
                f.write(data)
            return
        tmp = target + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)

    def write_json(self, data: Any, *parts: str) -> None:
        self.write_bytes(json.dumps(data, indent=2, default=str).encode(), *parts)

    def write_parquet(self, table: pa.Table, *parts: str, **kw) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, **kw)
        self.write_bytes(buf.getvalue(), *parts)

    def delete(self, *parts: str) -> None:
        try:
            self.fs.delete_file(self.path(*parts))
        except FileNotFoundError:
            pass

