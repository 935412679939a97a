"""Result files that survive an interruption: JSONL, CSV and Parquet, each resumable.

JSONL and CSV are appended and flushed after every batch, so a crash or Ctrl-C loses only the batch in flight
(a half-written last line is cut off on resume). Parquet cannot be appended to, so rows go to a JSONL journal
beside it (``OUT.parquet.partial.jsonl``) and become the Parquet file, written to a temporary name and
renamed, when the run completes. An existing output is never overwritten: without ``resume`` it is an error.
"""

from __future__ import annotations

import csv
import io
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pih2t_deploy.atomic import atomic_file
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.predict.rows import PredictionRow

SUFFIXES = (".jsonl", ".csv", ".parquet")
CSV_COLUMNS = ("path", "top1", "top1_score", "group", "true_label", "labels", "indices", "scores", "error")
PARQUET_CHUNK_ROWS = 4096


def parquet_schema() -> Any:
    """The Arrow schema of a Parquet result (single-machine and Ray outputs alike)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("labels", pa.list_(pa.string())),
            ("indices", pa.list_(pa.int64())),
            ("scores", pa.list_(pa.float64())),
            ("group", pa.string()),
            ("true_label", pa.string()),
            ("error", pa.string()),
        ]
    )


class RowWriter(ABC):
    """Appends rows durably; knows which paths an earlier run already wrote (``done``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()

    @abstractmethod
    def write(self, rows: list[PredictionRow]) -> None:
        """Append ``rows`` and flush them to the file."""

    @abstractmethod
    def close(self) -> None:
        """Close after an interruption: what was written stays, ``--resume`` continues from it."""

    def finish(self) -> None:
        """Close after every input was processed (Parquet: write the final file)."""
        self.close()

    @abstractmethod
    def rows(self) -> Iterator[PredictionRow]:
        """Every row of the finished output, streamed from disk."""


ROW_KEYS = frozenset(PredictionRow.__dataclass_fields__)


def _complete_length(path: Path) -> int:
    """The length of ``path`` up to and including its last newline (what a whole number of rows fills)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        end = size
        while end > 0:
            start = max(0, end - (1 << 16))
            handle.seek(start)
            found = handle.read(end - start).rfind(b"\n")
            if found >= 0:
                return start + found + 1
            end = start
    return 0


def _complete_lines(path: Path, length: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of the first ``length`` bytes of ``path``."""
    with path.open("rb") as handle:
        consumed, number = 0, 0
        while consumed < length:
            line = handle.readline()
            consumed, number = consumed + len(line), number + 1
            yield number, line


class _AppendedFile(RowWriter):
    """A text file appended to. On resume the file is first identified as an output of this command (every
    complete line a row of its format, ``recognise``), and only then is a half-written last line cut off and
    the rows it holds skipped; a file that is not one is refused untouched. ``close`` flushes and syncs it.
    Subclasses format the rows."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fresh = not path.exists() or path.stat().st_size == 0
        if not self.fresh:
            if not path.is_file():
                raise ConfigError(f"--output {path} is not a regular file; choose another --output")
            complete = _complete_length(path)
            not_ours = f"--output {path} is not a pih2t-predict {path.suffix} output"
            if complete == 0:
                raise ConfigError(
                    f"{not_ours} (it holds no complete row); it was left unchanged: choose another --output"
                )
            self.done = self.recognise(path, complete, not_ours)
            if complete < path.stat().st_size:
                with path.open("rb+") as handle:
                    handle.truncate(complete)  # the half-written last row of an interrupted run of ours
        self.handle = path.open("a", encoding="utf-8", newline="")

    @abstractmethod
    def recognise(self, path: Path, length: int, not_ours: str) -> set[str]:
        """The paths of the rows in the first ``length`` bytes of ``path``; ConfigError starting with
        ``not_ours`` (the file left unchanged) unless they are all rows this writer wrote."""

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()


class JsonlWriter(_AppendedFile):
    """One JSON object per line."""

    def recognise(self, path: Path, length: int, not_ours: str) -> set[str]:
        done = set()
        for number, line in _complete_lines(path, length):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or set(record) != ROW_KEYS:
                raise ConfigError(f"{not_ours} (line {number} is not a prediction row); it was left unchanged")
            done.add(str(record["path"]))
        return done

    def write(self, rows: list[PredictionRow]) -> None:
        self.handle.write("".join(json.dumps(row.to_dict()) + "\n" for row in rows))
        self.handle.flush()

    def rows(self) -> Iterator[PredictionRow]:
        return _jsonl_rows(self.path)


class CsvWriter(_AppendedFile):
    """A header, then one row per image; list columns hold JSON arrays, ``top1`` / ``top1_score`` the best."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writer = csv.writer(self.handle)
        if self.fresh:
            self.writer.writerow(CSV_COLUMNS)

    def write(self, rows: list[PredictionRow]) -> None:
        for row in rows:
            self.writer.writerow(
                [
                    row.path,
                    row.labels[0] if row.labels else "",
                    row.scores[0] if row.scores else "",
                    row.group or "",
                    row.true_label or "",
                    json.dumps(row.labels),
                    json.dumps(row.indices),
                    json.dumps(row.scores),
                    row.error or "",
                ]
            )
        self.handle.flush()

    def rows(self) -> Iterator[PredictionRow]:
        return _csv_rows(self.path)

    def recognise(self, path: Path, length: int, not_ours: str) -> set[str]:
        header = next(_complete_lines(path, length))[1].decode("utf-8", "replace").strip()
        if header != ",".join(CSV_COLUMNS):
            raise ConfigError(f"{not_ours} (its header is not {','.join(CSV_COLUMNS)}); it was left unchanged")
        with path.open(encoding="utf-8", newline="") as handle:
            text = handle.read(length)  # whole lines only, all of them checked by the header above
        return {record["path"] for record in csv.DictReader(io.StringIO(text))}


class ParquetWriter(RowWriter):
    """Rows journaled to ``OUT.partial.jsonl``; ``finish`` writes OUT (earlier rows first) and drops the journal."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.journal = JsonlWriter(journal_path(path))
        self.done = set(self.journal.done)
        if path.exists():
            self.done |= {row.path for row in _parquet_rows(path, check=True)}

    def write(self, rows: list[PredictionRow]) -> None:
        self.journal.write(rows)

    def close(self) -> None:
        self.journal.close()

    def finish(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.journal.close()
        schema = parquet_schema()
        with atomic_file(self.path) as tmp, pq.ParquetWriter(tmp, schema) as out:
            if self.path.exists():
                for batch in pq.ParquetFile(self.path).iter_batches(batch_size=PARQUET_CHUNK_ROWS):
                    out.write_batch(batch)
            chunk: list[dict[str, Any]] = []
            for row in self.journal.rows():
                chunk.append(row.to_dict())
                if len(chunk) == PARQUET_CHUNK_ROWS:
                    out.write_table(pa.Table.from_pylist(chunk, schema=schema))
                    chunk = []
            if chunk:
                out.write_table(pa.Table.from_pylist(chunk, schema=schema))
        self.journal.path.unlink()

    def rows(self) -> Iterator[PredictionRow]:
        return _parquet_rows(self.path)


def _parquet_rows(path: Path, check: bool = False) -> Iterator[PredictionRow]:
    import pyarrow.parquet as pq

    if check:
        _require_our_parquet(path)
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_CHUNK_ROWS):
        yield from (PredictionRow.from_dict(record) for record in batch.to_pylist())


def _require_our_parquet(path: Path) -> None:
    """ConfigError unless ``path`` is a Parquet file with the schema this command writes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        ours = pq.ParquetFile(path).schema_arrow.equals(parquet_schema())
    except (OSError, pa.ArrowException):
        ours = False
    if not ours:
        raise ConfigError(f"--output {path} is not a pih2t-predict .parquet output; it was left unchanged")


def journal_path(path: Path) -> Path:
    """Where a Parquet output's rows wait until the run completes."""
    return path.with_name(path.name + ".partial.jsonl")


def open_writer(path: Path, *, resume: bool) -> RowWriter:
    """The writer for ``path`` by its suffix; an existing output without ``resume`` is a ConfigError (never
    overwritten), a missing folder is created."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"--output {path}: the file name must end in {', '.join(SUFFIXES)} (the format)")
    started = path.exists() or (suffix == ".parquet" and journal_path(path).exists())
    if started and not resume:
        raise ConfigError(f"--output {path} exists: pass --resume to continue it, or choose another --output")
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, Callable[[Path], RowWriter]] = {
        ".jsonl": JsonlWriter,
        ".csv": CsvWriter,
        ".parquet": ParquetWriter,
    }
    kind = kinds[suffix]
    return kind(path)


def read_rows(path: Path) -> Iterator[PredictionRow]:
    """The rows of a result file (any of the three formats), streamed from disk."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(path)
    return _csv_rows(path) if suffix == ".csv" else _jsonl_rows(path)


def _jsonl_rows(path: Path) -> Iterator[PredictionRow]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield PredictionRow.from_dict(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ConfigError(f"{path}:{number} is not a prediction row ({exc})") from None


def _csv_rows(path: Path) -> Iterator[PredictionRow]:
    with path.open(encoding="utf-8", newline="") as handle:
        for record in csv.DictReader(handle):
            lists = {key: json.loads(record.get(key) or "[]") for key in ("labels", "indices", "scores")}
            yield PredictionRow.from_dict({**record, **lists})
