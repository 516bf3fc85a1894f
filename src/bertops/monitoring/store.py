"""Where monitoring data lives: one directory (or object-store prefix) holding records, feedback and reports.

    <store>/records/<YYYYMMDDTHHMMSS>-<writer>-<n>.parquet    what the service served (one row per text)
    <store>/feedback/<YYYYMMDDTHHMMSS>-<writer>-<n>.parquet   true labels sent to POST /feedback
    <store>/reports/<YYYYMMDDTHHMMSS>/drift.{json,html}       one drift check
    <store>/reports/latest.json                               the newest report's JSON

``monitoring.store_uri`` is a path (relative paths sit under ``project.state_dir``) or any URI
``pyarrow.fs.FileSystem.from_uri`` opens, e.g. ``s3://bucket/bertops/monitoring`` on a cluster (credentials from
the environment, as for MLflow's S3 artifact store). Segment names start with the UTC time of their first
record, so a time window is chosen from the names without opening files.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bertops.config import BertopsConfig

log = logging.getLogger(__name__)

RECORDS = "records"
FEEDBACK = "feedback"
REPORTS = "reports"
LATEST = "latest.json"
STAMP = "%Y%m%dT%H%M%S"


def store_uri(cfg: BertopsConfig, root: Path | None = None) -> str:
    """``monitoring.store_uri`` resolved: a URI as is, a relative path under ``project.state_dir`` (itself
    under ``root``, default the working directory, when relative)."""
    uri = cfg.monitoring.store_uri
    if "://" in uri:
        return uri
    path = Path(uri)
    if not path.is_absolute():
        state = cfg.state_dir if cfg.state_dir.is_absolute() else (root or Path.cwd()) / cfg.state_dir
        path = state / path
    return str(path.resolve())


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime(STAMP)


@dataclass
class Store:
    """A monitoring store: a pyarrow filesystem and the base path on it."""

    uri: str

    def __post_init__(self) -> None:
        from pyarrow import fs

        if "://" in self.uri:
            self.fs, self.base = fs.FileSystem.from_uri(self.uri)
        else:
            self.fs, self.base = fs.LocalFileSystem(), str(Path(self.uri).resolve())
        self.local = "://" not in self.uri

    def path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def write_segment(self, kind: str, table: Any, first: datetime, writer: str) -> str:
        """Write one Parquet segment of ``kind`` (records or feedback); locally via a temporary name, so a
        reader never sees half a file (an object store's put is atomic already)."""
        import pyarrow.parquet as pq

        name = f"{stamp(first)}-{writer}-{uuid.uuid4().hex[:8]}.parquet"
        final = self.path(kind, name)
        self.fs.create_dir(self.path(kind), recursive=True)
        target = self.path(kind, f".{name}.tmp") if self.local else final
        pq.write_table(table, target, filesystem=self.fs)
        if target != final:
            self.fs.move(target, final)
        return final

    def segments(self, kind: str, since: datetime | None = None) -> list[str]:
        """Paths of the ``kind`` segments whose first record is at or after ``since`` (hour-aligned names
        compare as strings), oldest first."""
        from pyarrow import fs

        info = self.fs.get_file_info(fs.FileSelector(self.path(kind), allow_not_found=True))
        names = sorted(
            i.base_name for i in info if i.type == fs.FileType.File and i.base_name.endswith(".parquet")
        )
        names = [n for n in names if not n.startswith(".")]
        if since is not None:
            # A segment started before `since` may hold records after it: keep one hour of slack, filter rows later.
            floor = stamp(since.replace(minute=0, second=0, microsecond=0))
            names = [n for n in names if n[: len(floor)] >= floor]
        return [self.path(kind, n) for n in names]

    def read(self, kind: str, since: datetime | None = None) -> Any:
        """All ``kind`` rows since ``since`` as one pyarrow Table (None when there are none)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        paths = self.segments(kind, since)
        if not paths:
            return None
        table = pa.concat_tables(
            [pq.read_table(p, filesystem=self.fs) for p in paths], promote_options="default"
        )
        if since is not None:
            table = table.filter(
                pc.greater_equal(table["time"], pa.scalar(since.astimezone(UTC), table["time"].type))
            )
        return table

    def write_text(self, text: str, *parts: str) -> str:
        path = self.path(*parts)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as out:
            out.write(text.encode("utf-8"))
        return path

    def read_json(self, *parts: str) -> dict[str, Any] | None:
        from pyarrow import fs

        path = self.path(*parts)
        if self.fs.get_file_info(path).type != fs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as src:
            return json.loads(src.read().decode("utf-8"))
