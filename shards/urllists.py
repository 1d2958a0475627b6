"""URL lists: read them in img2dataset's formats and check them before anything is downloaded.

A URL list is a table with a URL column, usually a caption column, sometimes the curator's content
hash, and any number of other columns (LAION's similarity, NSFW, license) that travel with each row
into the sidecars. Problems with the list as a whole (unreadable file, missing or mistyped columns, no
rows) raise ``UrlListError`` before any download; problems with single rows (no URL, a scheme that
is not HTTP, a duplicate URL, an empty caption, a malformed expected hash) become that row's recorded
reason and the row is never fetched.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from poisonlab.pipelines.sample import RESERVED_META_KEYS, Status
from poisonlab.shards.sidecar import SIDECAR_COLUMNS

HASH_LENGTHS = {"md5": 32, "sha256": 64, "sha512": 128}  # the hashes img2dataset computes (hex digits)
URL_SCHEMES = frozenset({"http", "https"})  # never file:// (it would read local files into the dataset)
_BASE_FORMATS = ("parquet", "csv", "tsv", "jsonl", "json", "txt")
INPUT_FORMATS = _BASE_FORMATS + tuple(f"{f}.gz" for f in _BASE_FORMATS if f != "parquet")
_HEX = re.compile(r"^[0-9a-f]+$")

# Plan columns (what every planned row holds besides the source's extra columns).
FETCH_URL = "fetch_url"  # the URL img2dataset downloads; null for rows that must not be fetched
SKIP_STATUS = "skip_status"
SKIP_REASON = "skip_reason"


class UrlListError(ValueError):
    """A URL list that cannot be ingested as given; raised before any download starts."""


@dataclasses.dataclass(frozen=True)
class UrlColumns:
    """Which columns hold what. ``hash`` names the curator's content hash of each image, if any."""

    url: str = "url"
    caption: str | None = "caption"
    hash: str | None = None
    hash_type: str = "sha256"

    def __post_init__(self) -> None:
        if self.hash_type not in HASH_LENGTHS:
            raise UrlListError(f"unsupported hash type {self.hash_type!r}; known: {', '.join(HASH_LENGTHS)}")

    @property
    def expected_column(self) -> str:
        return f"expected_{self.hash_type}"

    @property
    def download_column(self) -> str:
        return f"download_{self.hash_type}"


def list_format(path: Path) -> str:
    """The format of a URL-list file from its name (``.csv.gz`` -> ``csv.gz``)."""
    name = Path(path).name.lower()
    for fmt in sorted(INPUT_FORMATS, key=len, reverse=True):
        if name.endswith("." + fmt):
            return fmt
    raise UrlListError(f"cannot tell the format of {path} from its name; known: {', '.join(INPUT_FORMATS)}")


def list_files(path: Path, what: str = "URL list") -> list[Path]:
    """The file, or a folder's files of one format (img2dataset reads folders the same way)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UrlListError(f"{what} {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    formats = {list_format(p) for p in files}
    if len(formats) != 1:
        raise UrlListError(f"a {what} folder must hold files of one format; {path} holds {sorted(formats) or 'none'}")
    return files


def _read_file(path: Path, fmt: str) -> pa.Table:
    base, _, gz = fmt.partition(".")
    if base == "parquet":
        return pq.read_table(path)
    with pa.input_stream(str(path), compression="gzip" if gz else None) as stream:
        if base == "txt":
            lines = [line.strip() for line in stream.read().decode("utf-8").splitlines()]
            return pa.table({"url": pa.array([line for line in lines if line], type=pa.string())})
        if base == "csv":
            return pa_csv.read_csv(stream)
        if base == "tsv":
            return pa_csv.read_csv(stream, parse_options=pa_csv.ParseOptions(delimiter="\t"))
        if base == "jsonl":
            return pa_json.read_json(stream)
        records = json.loads(stream.read().decode("utf-8"))
        if not isinstance(records, list):
            raise UrlListError(f"{path}: a .json URL list must hold a list of records")
        return pa.Table.from_pylist(records)


def read_url_list(path: Path, what: str = "URL list") -> pa.Table:
    """All rows of a URL-list (or any table) file or folder, in file order then row order."""
    tables = []
    for file in list_files(path, what):
        fmt = list_format(file)
        try:
            tables.append(_read_file(file, fmt))
        except UrlListError:
            raise
        except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError) as exc:
            raise UrlListError(f"cannot read {file} as {fmt}: {exc}") from exc
    try:
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except pa.ArrowException as exc:
        raise UrlListError(f"the files of {path} do not share one schema: {exc}") from exc
    if table.num_rows == 0:
        raise UrlListError(f"{what} {path} has no rows")
    return table


def check_columns(table: pa.Table, columns: UrlColumns) -> None:
    """Every named column exists and holds text, or a clear error listing what the list does hold."""
    wanted = {"URL": columns.url, "caption": columns.caption, "hash": columns.hash}
    missing = [f"{role} column {name!r}" for role, name in wanted.items() if name and name not in table.column_names]
    if missing:
        raise UrlListError(
            f"the URL list has no {' and no '.join(missing)}; its columns are {', '.join(table.column_names)}"
            + (" (a .txt list holds URLs only: pass --caption-col '')" if table.column_names == ["url"] else "")
        )
    for role, name in (("URL", columns.url), ("hash", columns.hash)):
        if name and not (pa.types.is_string(table[name].type) or pa.types.is_large_string(table[name].type)
                         or pa.types.is_null(table[name].type)):
            raise UrlListError(f"the {role} column {name!r} holds {table[name].type}, not text")


def _text_values(table: pa.Table, name: str | None) -> list[str | None]:
    if not name:
        return [None] * table.num_rows
    values = table[name]
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.string())
    return values.to_pylist()


def _skip_url(url: str | None) -> str | None:
    if url is None or not url.strip():
        return "missing_url: the row has no URL"
    scheme = urlsplit(url.strip()).scheme.lower()
    if scheme not in URL_SCHEMES:
        return f"unsupported_url_scheme: {scheme or 'none'!r} (only http and https are fetched)"
    return None


def _skip_hash(value: str | None, columns: UrlColumns) -> str | None:
    length = HASH_LENGTHS[columns.hash_type]
    if value is None or len(value.strip()) != length or not _HEX.match(value.strip().lower()):
        return f"invalid_expected_hash: not a {columns.hash_type} hex digest, so the image cannot be verified"
    return None


def row_verdicts(
    table: pa.Table, columns: UrlColumns, verify: bool = True
) -> tuple[list[str | None], list[str | None]]:
    """(status, reason) of every row that must not be fetched, None for rows to fetch.

    Checks run in order: URL, expected hash (only when verifying: a row that cannot be verified is not
    fetched), caption, then duplicates among rows still to be fetched, so the first fetchable occurrence
    of a URL is the one that is downloaded.
    """
    urls = _text_values(table, columns.url)
    captions = _text_values(table, columns.caption)
    hashes = _text_values(table, columns.hash)
    statuses: list[str | None] = []
    reasons: list[str | None] = []
    first_row: dict[str, int] = {}
    for i, (url, caption, digest) in enumerate(zip(urls, captions, hashes, strict=True)):
        status, reason = Status.ERROR.value, _skip_url(url)
        if reason is None and columns.hash and verify:
            reason = _skip_hash(digest, columns)
        if reason is None and columns.caption and (caption is None or not caption.strip()):
            status, reason = Status.DROPPED.value, "empty_caption: nothing to pair the image with"
        if reason is None:
            earlier = first_row.setdefault(url.strip(), i)
            if earlier != i:
                status, reason = Status.DROPPED.value, f"duplicate_url: the same URL as row {earlier}"
        statuses.append(None if reason is None else status)
        reasons.append(None if reason is None else f"ingest: {reason}")
    return statuses, reasons


def extra_name(name: str, taken: set[str]) -> str:
    """Source columns keep their names unless poisonlab or img2dataset uses them: then ``list_NAME``."""
    while name in taken:
        name = f"list_{name}"
    return name


def plan_table(table: pa.Table, columns: UrlColumns, verify: bool = True) -> pa.Table:
    """One plan row per URL-list row: what to fetch, the caption, the expected hash and the extra columns."""
    check_columns(table, columns)
    statuses, reasons = row_verdicts(table, columns, verify)
    urls = _text_values(table, columns.url)
    plan: dict[str, pa.Array] = {
        "url": pa.array(urls, type=pa.string()),
        FETCH_URL: pa.array([u.strip() if s is None else None for u, s in zip(urls, statuses, strict=True)],
                            type=pa.string()),
        "caption": pa.array(_text_values(table, columns.caption), type=pa.string()),
        SKIP_STATUS: pa.array(statuses, type=pa.string()),
        SKIP_REASON: pa.array(reasons, type=pa.string()),
    }
    if columns.hash:
        plan[columns.expected_column] = pa.array(
            [None if h is None else h.strip().lower() for h in _text_values(table, columns.hash)], type=pa.string()
        )
    taken = set(plan) | set(SIDECAR_COLUMNS) | set(RESERVED_META_KEYS) | {
        "key", columns.download_column, "original_width", "original_height", "exif",
    }
    for name in table.column_names:
        if name not in (columns.url, columns.caption, columns.hash):
            new = extra_name(name, taken)
            taken.add(new)
            plan[new] = table[name]
    return pa.table(plan)
