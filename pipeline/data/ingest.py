"""Ingest one data interval of raw shop events into staged, typed, de-duplicated partitions.

Ingestion never touches the canonical dataset: it writes to ``staging/``; only a batch that passes
validation is published (see :mod:`pipeline.data.version`). So a bad rerun of an interval can never
overwrite data that was accepted before.

Every row read ends in exactly one of: the staged partition, a duplicate of a row that does, outside
the interval (it belongs to another run, whether it is clean or not: that run judges it), or the
interval's quarantine file with the file, row, column, value and reason. A row with no usable time
belongs to no day: it is quarantined once, in the interval's first day. The four counts add up to
the rows read, and ``ingest_events`` refuses to report counts that do not. Rerunning an interval
replaces its staged partition and quarantine file, so the same input always gives the same bytes and
never duplicates rows.
"""

from __future__ import annotations

import json
import logging
import os
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import fsspec
import polars as pl

from pipeline.core.errors import BadInput
from pipeline.core.schema import (
    CATALOG_COLUMNS,
    CATALOG_SCHEMA,
    EVENT_COLUMNS,
    EVENT_TYPES,
    EVENTS_SCHEMA,
    EVENTS_SORT_KEY,
    ITEMLESS_EVENT_TYPES,
    OPTIONAL_EVENT_COLUMNS,
    PARTITION_FILE,
    partition_dir_name,
)
from pipeline.core.settings import StatePaths
from pipeline.data.adapters import Adapter, get_adapter

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ("_source_file", "_source_row", "_column", "_value", "_reason")


class IngestError(BadInput):
    """The source cannot be ingested at all (no files, missing columns, unreadable file)."""


@dataclass(frozen=True)
class Interval:
    """A half-open span of UTC time, [start, end), made of whole days."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if value.tzinfo is None:
                raise ValueError(f"interval {name} must be timezone-aware, got {value.isoformat()}")
            utc = value.astimezone(timezone.utc)
            if (utc.hour, utc.minute, utc.second, utc.microsecond) != (0, 0, 0, 0):
                raise ValueError(
                    f"interval {name} {value.isoformat()} is not at midnight UTC; partitions are whole UTC days"
                )
        if self.end <= self.start:
            raise ValueError(f"interval end {self.end.isoformat()} is not after start {self.start.isoformat()}")

    @classmethod
    def for_day(cls, day: str | date) -> Interval:
        """The interval covering one UTC calendar day."""
        d = date.fromisoformat(day) if isinstance(day, str) else day
        start = datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
        return cls(start, start + timedelta(days=1))

    @property
    def days(self) -> list[str]:
        """The UTC dates covered, as ``YYYY-MM-DD``."""
        n = (self.end - self.start).days
        return [(self.start + timedelta(days=i)).date().isoformat() for i in range(n)]


@dataclass(frozen=True)
class IngestResult:
    """What one ingestion did; small enough to pass between Airflow tasks."""

    interval_start: str
    interval_end: str
    adapter: str
    sources: list[str]
    staged_days: list[str]
    rows_read: int
    rows_accepted: int
    rows_duplicate: int
    rows_outside_interval: int
    rows_quarantined: int
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    rows_outside_with_defects: int = 0  # of rows_outside_interval: they would be quarantined there
    quarantine_files: list[str] = field(default_factory=list)
    catalog_items: int = 0
    catalog_rows_quarantined: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.quarantine_reasons.items()))
        return (
            f"ingested {', '.join(self.staged_days)} ({self.adapter}): "
            f"{self.rows_read} read, {self.rows_accepted} accepted, {self.rows_duplicate} duplicates, "
            f"{self.rows_outside_interval} outside the interval"
            + (f" ({self.rows_outside_with_defects} with defects)" if self.rows_outside_with_defects else "")
            + f", {self.rows_quarantined} quarantined"
            + (f" ({reasons})" if reasons else "")
            + f"; {self.catalog_items} catalog items"
        )


def resolve_uri(pattern: str, home: Path, day: str) -> str:
    """Fill ``{date}`` and anchor relative local paths at the state folder."""
    uri = pattern.replace("{date}", day)
    if "://" in uri or Path(uri).is_absolute():
        return uri
    return str(home / uri)


# Where ingestion may read (``SHOPML_INGEST_SOURCES``): a DAG trigger names its source, so without a
# list any trigger could make a worker read any file it can reach, or any URL, into the dataset.
SOURCES_ENV = "SHOPML_INGEST_SOURCES"
MAX_BYTES_ENV = "SHOPML_INGEST_MAX_BYTES"
DEFAULT_MAX_BYTES = 16 << 30  # per file, as read and after decompression
_SPOOL: ContextVar[Path | None] = ContextVar("ingest_spool", default=None)


def allowed_sources(home: Path) -> list[str]:
    """The prefixes a source must start with: ``SHOPML_INGEST_SOURCES`` (comma-separated local
    folders or URI prefixes such as ``s3://shop-exports/``), else the state folder's ``landing``."""
    raw = os.environ.get(SOURCES_ENV)
    entries = [e.strip() for e in raw.split(",") if e.strip()] if raw else [str(home / "landing")]
    return [_normalized(e) for e in entries]


def _normalized(uri: str) -> str:
    """A local path made absolute with ``..`` and links resolved; a URI as written, with ``..``
    refused (a remote store has no such folder: it would only be a way out of a prefix)."""
    if "://" in uri and not uri.startswith("file://"):
        protocol, _, rest = uri.partition("://")
        if ".." in rest.split("/"):
            raise IngestError(f"source {uri!r}: a '..' in a URI is not allowed")
        return f"{protocol.lower()}://{rest}"
    return os.path.realpath(uri.removeprefix("file://"))


def check_source(uri: str, home: Path) -> None:
    """Refuse a source (a pattern, or a file found by one) outside every allowed prefix."""
    allowed = allowed_sources(home)
    found = _normalized(uri)
    for prefix in allowed:
        local = "://" not in prefix
        if found == prefix or found.startswith(prefix if prefix.endswith("/") or not local else prefix + os.sep):
            return
    raise IngestError(
        f"source {uri!r} is outside the allowed ingestion sources {allowed}; "
        f"an operator adds a folder or URI prefix to {SOURCES_ENV} (comma-separated)"
    )


def allow_source_folder(path: Path | str) -> None:
    """Add a file's folder to this process's allowed sources: for a benchmark or script reading a
    file its own command line names (an operator's choice, not a trigger's)."""
    folder = os.path.realpath(Path(path).parent)
    current = os.environ.get(SOURCES_ENV)
    if not current:
        from pipeline.core.settings import get_state_paths

        current = str(get_state_paths().home / "landing")  # the default stays allowed
    os.environ[SOURCES_ENV] = f"{current},{folder}"


def _max_bytes() -> int:
    return int(os.environ.get(MAX_BYTES_ENV, DEFAULT_MAX_BYTES))


def _list_files(uri: str, home: Path) -> list[str]:
    check_source(uri, home)
    fs, _, found = fsspec.get_fs_token_paths(uri)
    files = sorted(p for p in found if fs.isfile(p))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    listed = files if protocol in ("file", "local") else [f"{protocol}://{p}" for p in files]
    limit = _max_bytes()
    for path, name in zip(files, listed, strict=True):
        check_source(name, home)  # a glob or a link can lead out of the prefix it was written in
        size = fs.size(path)
        if size is not None and size > limit:
            raise IngestError(f"{name}: {size} bytes, over the {limit}-byte limit per file ({MAX_BYTES_ENV})")
    return listed


def _spooled(path: str) -> str:
    """A remote or compressed source copied to a local file, decompressed as it streams, in 1 MiB
    chunks: never held whole in memory, and stopped at ``SHOPML_INGEST_MAX_BYTES`` (a small archive
    that inflates without end is refused, not unpacked)."""
    import tempfile

    spool = _SPOOL.get()
    limit, written = _max_bytes(), 0
    fd, local = tempfile.mkstemp(dir=spool, suffix=".parquet" if _is_parquet(path) else ".csv")
    with os.fdopen(fd, "wb") as out, fsspec.open(path, "rb", compression="infer") as fh:
        while chunk := fh.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise IngestError(f"{path}: over {limit} bytes once decompressed, the limit per file ({MAX_BYTES_ENV})")
            out.write(chunk)
    return local


def _is_parquet(path: str) -> bool:
    plain = path.removeprefix("file://")
    for suffix in (".gz", ".bz2", ".zst", ".xz"):
        plain = plain.removesuffix(suffix)
    return plain.endswith((".parquet", ".pq"))


def _scan(path: str, adapter: Adapter) -> pl.LazyFrame:
    """Read one source file with every column as text (or as stored, for Parquet)."""
    local = "://" not in path or path.startswith("file://")
    plain = path.removeprefix("file://")
    is_parquet = _is_parquet(path)
    try:
        if not local or plain.endswith((".gz", ".bz2", ".zst", ".xz")):
            plain = _spooled(path)
        if is_parquet:
            frame = pl.scan_parquet(plain)
        else:
            frame = pl.scan_csv(plain, separator=adapter.separator, infer_schema=False)
        columns = frame.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise IngestError(f"{path}: cannot be read as {'Parquet' if is_parquet else 'CSV'}: {exc}") from exc
    renames = {}
    for canonical, alternatives in adapter.aliases.items():
        if canonical not in columns:
            found = next((a for a in alternatives if a in columns), None)
            if found:
                renames[found] = canonical
    present = {renames.get(c, c) for c in columns}
    missing = [c for c in adapter.required_columns if c not in present]
    if missing:
        raise IngestError(
            f"{path}: missing required column(s) {missing} for adapter '{adapter.name}'; the file has {columns}"
        )
    # Row numbers count every data row, blank lines included, so they match the file; blank lines
    # themselves carry no event and are skipped.
    return (
        frame.rename(renames)
        .with_row_index("_source_row", offset=1)
        .filter(~pl.all_horizontal(pl.exclude("_source_row").is_null()))
        .with_columns(pl.col("_source_row").cast(pl.Int64), pl.lit(path, dtype=pl.Categorical).alias("_source_file"))
    )


def _unreadable(files: list[str], adapter: Adapter, exc: Exception) -> IngestError:
    """The error of a source that failed while being read (broken CSV quoting, say), naming the
    first file that cannot be read on its own, and polars' reason."""
    reason = str(exc).strip().splitlines()[0]
    for f in files:
        try:
            _scan(f, adapter).select(pl.len()).collect()
        except IngestError as bad:
            return bad
        except pl.exceptions.PolarsError as bad:
            detail = [line for line in str(bad).splitlines() if "escaped" in line or "offset" in line]
            return IngestError(
                f"{f}: cannot be read as CSV: {str(bad).strip().splitlines()[0]}"
                + (f" ({'; '.join(d.strip() for d in detail)})" if detail else "")
            )
    return IngestError(f"{', '.join(files)}: cannot be read: {reason}")


def _check(column: str, bad: pl.Expr, value: pl.Expr, reason: str | pl.Expr) -> tuple:
    return bad, column, value, reason


def _first_problem(checks: list[tuple]) -> list[pl.Expr]:
    """Three columns naming the first failed check of each row: column, offending value, reason.

    A reason is a fixed text or, where the row itself explains it (an adapter's exclusion), an
    expression.
    """
    column = reason = value = None
    for bad, col, val, why in reversed(checks):
        why = why if isinstance(why, pl.Expr) else pl.lit(why)
        column = pl.when(bad).then(pl.lit(col)).otherwise(column if column is not None else pl.lit(None))
        value = pl.when(bad).then(val.cast(pl.String)).otherwise(value if value is not None else pl.lit(None))
        reason = pl.when(bad).then(why).otherwise(reason if reason is not None else pl.lit(None))
    return [column.alias("_column"), value.alias("_value"), reason.alias("_reason")]


def _blank(name: str) -> pl.Expr:
    text = pl.col(name).cast(pl.String)
    return text.is_null() | (text.str.strip_chars() == "")


def _typed_events(frame: pl.LazyFrame, adapter: Adapter) -> pl.LazyFrame:
    """Map a source frame to canonical columns, typed, with the first problem of each row named."""
    mapped = adapter.events(frame)
    names = mapped.collect_schema().names()
    if "_excluded" not in names:
        mapped = mapped.with_columns(pl.lit(None, dtype=pl.String).alias("_excluded"))
    # The risk context is optional: a source without a column has it null (blank text is null too).
    mapped = mapped.with_columns(
        (
            pl.col(c).cast(pl.String).str.strip_chars().replace("", None) if c in names else pl.lit(None, pl.String)
        ).alias(c)
        for c in OPTIONAL_EVENT_COLUMNS
    )
    price_text = pl.col("price").cast(pl.String).str.strip_chars()
    qty_text = pl.col("quantity").cast(pl.String).str.strip_chars()
    mapped = mapped.with_columns(
        price_text.alias("_raw_price"),
        qty_text.alias("_raw_quantity"),
        price_text.cast(pl.Float64, strict=False).alias("price"),
        qty_text.cast(pl.Float64, strict=False).alias("_quantity_number"),
        *(
            pl.col(c).cast(pl.String).str.strip_chars().alias(c)
            for c in ("user_id", "session_id", "item_id", "event_type")
        ),
    )
    qty = pl.col("_quantity_number")
    # The first failing check names the row's problem; an adapter's exclusion explains a row best
    # (a cancelled invoice also has a negative quantity).
    checks = [
        _check(
            adapter.exclusion_column or "_excluded",
            pl.col("_excluded").is_not_null(),
            pl.col(adapter.exclusion_column) if adapter.exclusion_column else pl.col("_excluded"),
            pl.col("_excluded"),
        ),
        _check(
            "event_time",
            pl.col("_raw_event_time").is_null() | (pl.col("_raw_event_time") == ""),
            pl.lit(""),
            "missing event_time",
        ),
        _check("event_time", pl.col("event_time").is_null(), pl.col("_raw_event_time"), "unparseable event_time"),
        _check("user_id", _blank("user_id"), pl.col("user_id"), "missing user_id"),
        _check("session_id", _blank("session_id"), pl.col("session_id"), "missing session_id"),
        _check(
            "item_id",
            _blank("item_id") & ~pl.col("event_type").is_in(ITEMLESS_EVENT_TYPES).fill_null(False),
            pl.col("item_id"),
            "missing item_id",
        ),
        _check(
            "event_type",
            ~pl.col("event_type").is_in(EVENT_TYPES) | pl.col("event_type").is_null(),
            pl.col("event_type"),
            "unknown event_type",
        ),
        _check(
            "price",
            pl.col("_raw_price").is_not_null() & (pl.col("_raw_price") != "") & pl.col("price").is_null(),
            pl.col("_raw_price"),
            "unparseable price",
        ),
        _check("price", pl.col("price") < 0, pl.col("_raw_price"), "negative price"),
        _check("quantity", qty.is_null() | (qty != qty.floor()), pl.col("_raw_quantity"), "unparseable quantity"),
        _check("quantity", qty <= 0, pl.col("_raw_quantity"), "non-positive quantity"),
    ]
    return mapped.with_columns(
        *_first_problem(checks),
        pl.col("_quantity_number").cast(pl.Int32, strict=False).alias("quantity"),
        # An item-less event's blank item is null, not an empty id.
        pl.col("item_id").replace("", None),
    )


def _sorted_unique(events: pl.DataFrame) -> pl.DataFrame:
    """Events sorted by every column, exact duplicates dropped.

    Sorting by every column puts duplicates next to each other, so comparing each row with the one
    before finds them without the hash table of ``unique()``, which costs gigabytes at 10 million
    rows. The full sort also gives a stable order, so the same input always writes the same bytes.
    """
    ordered = events.sort([*EVENTS_SORT_KEY, "price", "quantity", *OPTIONAL_EVENT_COLUMNS], nulls_last=True).cast(
        EVENTS_SCHEMA
    )
    same_as_previous = pl.all_horizontal(pl.col(c).eq_missing(pl.col(c).shift(1)) for c in EVENTS_SCHEMA).fill_null(
        False
    )
    return ordered.filter(~same_as_previous)


def _write_parquet(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.write_parquet(tmp, compression="zstd", statistics=True)
    tmp.replace(path)


def _write_quarantine(frame: pl.DataFrame, path: Path) -> str | None:
    """Replace the interval's quarantine file with ``frame``, in source order; remove it if empty."""
    if frame.height == 0:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.with_columns(pl.col("_source_file").cast(pl.String)).sort("_source_file", "_source_row").write_csv(tmp)
    tmp.replace(path)
    return str(path)


def _read_catalog(files: list[str], adapter: Adapter) -> pl.LazyFrame:
    """The landing catalog files of the canonical layout."""
    catalog_adapter = Adapter("catalog", CATALOG_COLUMNS, lambda f: f, separator=adapter.separator)
    frames = [_scan(f, catalog_adapter) for f in files]
    return pl.concat(
        [f.select(*CATALOG_COLUMNS, "_source_file", "_source_row") for f in frames], how="vertical_relaxed"
    )


def _typed_catalog(frame: pl.LazyFrame) -> pl.LazyFrame:
    price_text = pl.col("price").cast(pl.String).str.strip_chars()
    typed = frame.with_columns(
        *(
            pl.col(c).cast(pl.String).str.strip_chars().replace("", None).alias(c)
            for c in ("item_id", "category", "brand")
        ),
        price_text.alias("_raw_price"),
        price_text.cast(pl.Float64, strict=False).alias("price"),
    )
    checks = [
        _check("item_id", _blank("item_id"), pl.col("item_id"), "missing item_id"),
        _check(
            "price",
            pl.col("_raw_price").is_not_null() & (pl.col("_raw_price") != "") & pl.col("price").is_null(),
            pl.col("_raw_price"),
            "unparseable price",
        ),
        _check("price", pl.col("price") < 0, pl.col("_raw_price"), "negative price"),
    ]
    return typed.with_columns(*_first_problem(checks))


def ingest_events(
    interval: Interval,
    events_source: str,
    paths: StatePaths,
    adapter_name: str = "canonical",
    catalog_source: str | None = None,
) -> IngestResult:
    """Ingest every event of ``interval`` from the source files into staged partitions.

    Args:
        interval: whole UTC days to ingest; one partition is staged per day.
        events_source: path, glob or fsspec URI of the event files; ``{date}`` is replaced by the
            interval's first day, and relative paths are read from the state folder.
        paths: where state lives.
        adapter_name: the source layout (see :mod:`pipeline.data.adapters`).
        catalog_source: landing catalog files (canonical layout only); other layouts derive the
            catalog from their events.

    Returns:
        Counts, staged days and quarantine files.

    Raises:
        IngestError: no file matches, a file cannot be read, or it lacks a required column; a source
            outside ``SHOPML_INGEST_SOURCES`` (default: the state folder's ``landing``), or a file
            over ``SHOPML_INGEST_MAX_BYTES`` as stored or decompressed.
    """
    import shutil
    import tempfile

    # Remote and compressed sources are spooled here, decompressed as they stream (``_spooled``).
    paths.staging.mkdir(parents=True, exist_ok=True)
    spool = Path(tempfile.mkdtemp(prefix=".ingest-spool-", dir=paths.staging))
    token = _SPOOL.set(spool)
    try:
        return _ingest_spooled(interval, events_source, paths, adapter_name, catalog_source)
    finally:
        _SPOOL.reset(token)
        shutil.rmtree(spool, ignore_errors=True)


def _ingest_spooled(
    interval: Interval, events_source: str, paths: StatePaths, adapter_name: str, catalog_source: str | None
) -> IngestResult:
    """``ingest_events``'s work, inside its spool folder."""
    adapter = get_adapter(adapter_name)
    first_day = interval.days[0]
    uri = resolve_uri(events_source, paths.home, first_day)
    files = _list_files(uri, paths.home)
    if not files:
        raise IngestError(f"no event files match {uri!r} (events_source={events_source!r})")
    source = pl.concat([_scan(f, adapter) for f in files], how="diagonal_relaxed")

    typed = _typed_events(source, adapter).with_columns(pl.col("event_time").dt.date().alias("_day"))
    in_interval = (pl.col("event_time") >= interval.start) & (pl.col("event_time") < interval.end)
    # Rows with no usable time are charged to every interval that reads their file.
    ours = in_interval | pl.col("event_time").is_null()
    try:
        frame = typed.select(
            *EVENT_COLUMNS,
            "_day",
            "_source_file",
            "_source_row",
            "_column",
            "_value",
            "_reason",
            ours.alias("_ours"),
        ).collect(engine="streaming")
    except pl.exceptions.PolarsError as exc:
        raise _unreadable(files, adapter, exc) from exc

    rows_read = frame.height
    outside, outside_defective = frame.select(
        (~pl.col("_ours")).sum().alias("outside"),
        (~pl.col("_ours") & pl.col("_reason").is_not_null()).sum().alias("defective"),
    ).row(0)
    # Each step drops its input, so ten million rows stay within a few GiB.
    frame = frame.filter(pl.col("_ours"))
    bad = frame.filter(pl.col("_reason").is_not_null())
    accepted_rows = frame.filter(pl.col("_reason").is_null())
    del frame
    # Selecting columns shares them: one filter serves both the events and the catalog's keys.
    good = accepted_rows.select(*EVENT_COLUMNS, "_day")
    source_keys = accepted_rows.select("_source_file", "_source_row")
    del accepted_rows

    staged_days, quarantine_files = [], []
    accepted = duplicates = 0
    reasons = {row["_reason"]: row["count"] for row in bad.group_by("_reason").len(name="count").iter_rows(named=True)}
    single_day = len(interval.days) == 1
    for day in interval.days:
        the_day = date.fromisoformat(day)
        part = good.drop("_day") if single_day else good.filter(pl.col("_day") == the_day).drop("_day")
        unique = _sorted_unique(part)
        duplicates += part.height - unique.height
        accepted += unique.height
        del part
        _write_parquet(unique, paths.staging / "events" / partition_dir_name(day) / PARTITION_FILE)
        del unique
        staged_days.append(day)
        # A row with no usable time is quarantined once, with the interval's first day.
        day_bad = (
            bad
            if single_day
            else bad.filter((pl.col("_day") == the_day) | (pl.col("_day").is_null() & pl.lit(day == first_day)))
        )
        qfile = _write_quarantine(
            day_bad.select(*QUARANTINE_COLUMNS, *EVENT_COLUMNS).with_columns(
                pl.col("event_time").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")
            ),
            paths.quarantine / "events" / partition_dir_name(day) / "quarantine.csv",
        )
        if qfile:
            quarantine_files.append(qfile)

    del good
    catalog_items, catalog_bad = _ingest_catalog(interval, adapter, source, source_keys, catalog_source, paths)

    if accepted + duplicates + outside + bad.height != rows_read:
        raise AssertionError(
            f"ingest accounting of {uri}: {rows_read} rows read but {accepted} accepted + "
            f"{duplicates} duplicates + {outside} outside + {bad.height} quarantined"
        )
    result = IngestResult(
        interval_start=interval.start.isoformat(),
        interval_end=interval.end.isoformat(),
        adapter=adapter.name,
        sources=files,
        staged_days=staged_days,
        rows_read=rows_read,
        rows_accepted=accepted,
        rows_duplicate=duplicates,
        rows_outside_interval=outside,
        rows_quarantined=bad.height,
        quarantine_reasons=reasons,
        rows_outside_with_defects=outside_defective,
        quarantine_files=quarantine_files,
        catalog_items=catalog_items,
        catalog_rows_quarantined=catalog_bad,
    )
    report = paths.reports / "ingest" / f"{first_day}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result.to_dict(), indent=2))
    log.info(result.summary())
    for row in bad.head(5).iter_rows(named=True):
        log.warning(
            "quarantined %s row %s: %s %s=%r",
            row["_source_file"],
            row["_source_row"],
            row["_reason"],
            row["_column"],
            row["_value"],
        )
    return result


def _ingest_catalog(
    interval: Interval,
    adapter: Adapter,
    source: pl.LazyFrame,
    accepted_keys: pl.DataFrame,
    catalog_source: str | None,
    paths: StatePaths,
) -> tuple[int, int]:
    """Stage the catalog rows of the interval; returns (items staged, rows quarantined).

    ``accepted_keys`` (``_source_file``, ``_source_row``) names the accepted event rows, from which
    adapters without a catalog file derive theirs.
    """
    first_day = interval.days[0]
    if adapter.catalog is not None:
        raw = (
            source.select(*adapter.catalog(), "_source_file", "_source_row")
            .join(accepted_keys.lazy(), on=["_source_file", "_source_row"], how="semi")
            .filter(pl.col("item_id").is_not_null())  # an item-less event (a signup) declares no item
        )
    elif catalog_source:
        uri = resolve_uri(catalog_source, paths.home, first_day)
        files = _list_files(uri, paths.home)
        if not files:
            raise IngestError(f"no catalog files match {uri!r} (catalog_source={catalog_source!r})")
        raw = _read_catalog(files, adapter)
    else:
        raw = source.select(
            pl.col("item_id").cast(pl.String),
            pl.lit(None, dtype=pl.String).alias("category"),
            pl.lit(None, dtype=pl.String).alias("brand"),
            pl.col("price"),
            "_source_file",
            "_source_row",
        )
        raw = raw.join(accepted_keys.lazy(), on=["_source_file", "_source_row"], how="semi").filter(
            pl.col("item_id").is_not_null() & (pl.col("item_id").cast(pl.String).str.strip_chars() != "")
        )
    typed = _typed_catalog(raw).collect(engine="streaming")
    bad = typed.filter(pl.col("_reason").is_not_null())
    # The last row of an item wins (sources list price changes in time order).
    good = (
        typed.filter(pl.col("_reason").is_null())
        .sort("_source_file", "_source_row")
        .unique(subset="item_id", keep="last", maintain_order=False)
        .select(CATALOG_COLUMNS)
        .sort("item_id")
        .cast(CATALOG_SCHEMA)
    )
    _write_parquet(good, paths.staging / "catalog" / partition_dir_name(first_day) / PARTITION_FILE)
    _write_quarantine(
        bad.select(*QUARANTINE_COLUMNS, *CATALOG_COLUMNS),
        paths.quarantine / "catalog" / partition_dir_name(first_day) / "quarantine.csv",
    )
    return good.height, bad.height
