"""Reading and checking tabular interaction files, shared by the loaders.

Every problem found in a file is raised as `DataError` naming the file and, where one place is
to blame, the 1-based physical line (counting the header) or the column. The happy path is
vectorised (pyarrow's CSV reader, numpy, pandas); a file is re-read record by record only to
find where a problem is, once one is known to exist.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import pathlib
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from tfmarl.data.errors import DataError, DataWarning

ON_DUPLICATES = ("warn", "drop", "error")

# Timestamps at or beyond this many seconds (about the year 5138) are almost surely milliseconds.
_MAX_ABS_SECONDS = 10**11
_SHOWN_LINES = 5
# Ids above these are corrupt or mis-parsed values. Formats known to number their ids densely
# (MovieLens) use the tight bound; a free-form log may hold 13-digit barcodes or 64-bit hashes,
# so only what no int64 holds is absurd there.
_MAX_DENSE_ID = 2**31
_MAX_ANY_ID = 2**63
# Stands in for a multi-character separator, which the CSV reader cannot split on.
_UNIT_SEPARATOR = "\x1f"
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def check_on_duplicates(value) -> str:
    """Returns ``value`` if it is a duplicates policy, else raises ValueError naming the allowed ones."""
    if value not in ON_DUPLICATES:
        raise ValueError(f"on_duplicates must be one of {', '.join(map(repr, ON_DUPLICATES))}, got {value!r}")
    return value


def file_kind(path) -> str:
    """'parquet' or 'text', from the file name (a compression suffix is looked through).

    A directory holding Parquet files is a Parquet data set.
    """
    path = pathlib.Path(path)
    if path.is_dir() and any(f.suffix.lower() in (".parquet", ".pq") for f in path.rglob("*")):
        return "parquet"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _OPENERS:
        suffixes = suffixes[:-1]
    return "parquet" if suffixes and suffixes[-1] in (".parquet", ".pq") else "text"


def require_file(path) -> pathlib.Path:
    """Returns ``path`` as a Path; FileNotFoundError if missing, DataError if a directory or empty."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise DataError("expected a file, found a directory", path=path)
    if path.stat().st_size == 0:
        raise DataError("empty file", path=path)
    return path


def _open_binary(path: pathlib.Path):
    return _OPENERS.get(path.suffix.lower(), open)(path, "rb")


def _read_bytes(path: pathlib.Path) -> bytes:
    with _open_binary(path) as f:
        return f.read()


# --- where rows are ------------------------------------------------------------------------


class Locator:
    """Says where a data row (0-based, in reading order) of a table came from."""

    path: pathlib.Path

    def error(self, row: int, problem: str, column: str | None = None) -> DataError:
        raise NotImplementedError

    def describe(self, rows: Sequence[int]) -> str:
        """E.g. 'line 3', 'lines 3, 7' or 'rows 2, 6 (0-based)', for messages."""
        raise NotImplementedError


class TextLocator(Locator):
    """Rows of a delimited text file; maps them to physical lines by re-reading the file.

    Records are counted as the CSV reader counts them: empty lines are skipped and a quoted
    field may span lines (a record is then placed at its first line).
    """

    def __init__(self, path, *, sep: str, quoted: bool, encoding: str, header: bool, data: bytes | None = None):
        self.path = pathlib.Path(path)
        self.sep = sep
        self.quoted = quoted
        self.encoding = encoding
        self.header_rows = 1 if header else 0
        self.data = data  # the file's bytes, when they had to be rewritten before parsing

    def open(self):
        """The bytes to parse, as a binary file object."""
        return io.BytesIO(self.data) if self.data is not None else _open_binary(self.path)

    def records(self):
        """Yields (first physical line, fields) for each non-empty record, the header included."""
        quoting = csv.QUOTE_MINIMAL if self.quoted else csv.QUOTE_NONE
        with io.TextIOWrapper(self.open(), encoding=self.encoding, errors="replace", newline="") as f:
            reader = csv.reader(f, delimiter=self.sep, quoting=quoting, strict=False)
            start = 1
            try:
                for fields in reader:
                    if fields:
                        yield start, fields
                    start = reader.line_num + 1
            except csv.Error as e:
                raise DataError(f"cannot split the line into fields: {e}", path=self.path, line=start) from None

    def lines(self, rows: Sequence[int]) -> dict[int, int]:
        """Maps each data row in ``rows`` to its 1-based physical line."""
        wanted = {int(r) + self.header_rows: int(r) for r in rows}
        found = {}
        last = max(wanted, default=-1)
        for index, (line, _) in enumerate(self.records()):
            if index in wanted:
                found[wanted[index]] = line
            if index >= last:
                break
        return found

    def error(self, row, problem, column=None):
        return DataError(problem, path=self.path, line=self.lines([row]).get(int(row)), column=column)

    def describe(self, rows):
        lines = self.lines(rows)
        return ("line " if len(rows) == 1 else "lines ") + ", ".join(str(lines.get(int(r), "?")) for r in rows)


class ParquetLocator(Locator):
    """Rows of a Parquet file or dataset: they have no lines, so messages give the row index."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def error(self, row, problem, column=None):
        return DataError(f"{problem} (row {int(row)}, 0-based)", path=self.path, column=column)

    def describe(self, rows):
        return ("row " if len(rows) == 1 else "rows ") + ", ".join(str(int(r)) for r in rows) + " (0-based)"


# --- reading -------------------------------------------------------------------------------


def read_delimited(
    path,
    *,
    sep: str,
    header: bool = True,
    encoding: str = "utf-8",
    quoted: bool = True,
    names: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, TextLocator]:
    """Reads a delimited text file into a DataFrame of strings ("" for empty cells).

    With ``header`` the first non-empty line names the columns; otherwise ``names`` does. Every
    line must have as many fields as the first; empty lines are skipped. ``quoted``: whether
    double quotes quote fields (as in CSV) or are ordinary characters. Raises DataError (naming
    file and line) for an empty file, a file without data rows, a line with the wrong number of
    fields or bytes not valid in ``encoding``; FileNotFoundError for a missing file.
    """
    path = require_file(path)
    data = None
    if len(sep) > 1:
        # Byte-level replacement is safe for ASCII-compatible encodings (UTF-8, latin-1).
        data = _read_bytes(path).replace(sep.encode(encoding), _UNIT_SEPARATOR.encode(encoding))
        sep = _UNIT_SEPARATOR
    locator = TextLocator(path, sep=sep, quoted=quoted, encoding=encoding, header=header, data=data)
    records = locator.records()
    first = next(records, None)
    records.close()
    if first is None:
        raise DataError("empty file (no lines with data)", path=path)
    expected = len(names) if names is not None and not header else len(first[1])
    table = _parse(locator, expected)
    if header:
        names = [str(c) for c in table.slice(0, 1).to_pylist()[0].values()]
        repeated = [n for i, n in enumerate(names) if n in names[:i]]
        if repeated:
            raise DataError(f"column {repeated[0]!r} appears twice in the header", path=path, line=first[0])
        table = table.slice(1)
    if table.num_rows == 0:
        raise DataError("no data rows" + (" (only a header)" if header else ""), path=path)
    frame = table.to_pandas()
    frame.columns = list(names)
    return frame, locator


def _parse(locator: TextLocator, n_columns: int) -> pa.Table:
    """All records as a table of ``n_columns`` string columns f0, f1, ..."""
    names = [f"f{i}" for i in range(n_columns)]
    try:
        with locator.open() as f:
            return pa_csv.read_csv(
                f,
                read_options=pa_csv.ReadOptions(column_names=names, encoding=locator.encoding),
                parse_options=pa_csv.ParseOptions(delimiter=locator.sep, quote_char='"' if locator.quoted else False,
                                                  newlines_in_values=locator.quoted),
                convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                      strings_can_be_null=False),
            )
    except pa.ArrowInvalid as e:
        if "UTF8" in str(e) or "UTF-8" in str(e):
            raise _decode_error(locator, e) from None
        raise _field_count_error(locator, n_columns, fallback=str(e)) from None
    except UnicodeDecodeError as e:
        raise _decode_error(locator, e) from None


def _decode_error(locator: TextLocator, exc: Exception) -> DataError:
    # The reader's exception does not say where in the file: decode it again to find out.
    raw = locator.data if locator.data is not None else _read_bytes(locator.path)
    try:
        raw.decode(locator.encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        bad = raw[e.start:e.end].hex(" ")
        return DataError(f"bytes not valid {locator.encoding} at byte offset {e.start} (0x{bad}): {e.reason}",
                         path=locator.path, line=line)
    return DataError(f"bytes not valid {locator.encoding}: {exc}", path=locator.path)


def _field_count_error(locator: TextLocator, expected: int, fallback: str) -> DataError:
    """Names the first record whose number of fields is not ``expected``."""
    for line, fields in locator.records():
        if len(fields) != expected:
            return DataError(f"expected {expected} fields, found {len(fields)}", path=locator.path, line=line)
    return DataError(f"cannot parse: {fallback}", path=locator.path)


def read_parquet(path, columns: Sequence[str]) -> tuple[pd.DataFrame, ParquetLocator]:
    """Reads ``columns`` of a Parquet file (or a directory of them). DataError if one is missing."""
    import pyarrow.dataset as ds  # slow to import; only Parquet readers pay for it

    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError("empty file", path=path)
    try:
        dataset = ds.dataset(path, format="parquet")
        require_columns(dataset.schema.names, columns, path)
        frame = dataset.to_table(columns=list(dict.fromkeys(columns))).to_pandas()
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"not a readable Parquet file: {e}", path=path) from None
    if len(frame) == 0:
        raise DataError("no data rows", path=path)
    return frame, ParquetLocator(path)


def read_table(path, columns: Sequence[str], *, sep: str | None = None, encoding: str = "utf-8"):
    """Reads a CSV/TSV (strings) or Parquet file by its name, checking ``columns`` are present."""
    if file_kind(path) == "parquet":
        return read_parquet(path, columns)
    path = require_file(path)
    frame, locator = read_delimited(path, sep=sep or sniff_separator(path, encoding), encoding=encoding)
    require_columns(frame.columns, columns, path)
    return frame, locator


def sniff_separator(path, encoding: str = "utf-8") -> str:
    """',' for .csv, tab for .tsv/.tab; otherwise guessed from the first lines, else DataError."""
    path = pathlib.Path(path)
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in _OPENERS]
    last = suffixes[-1] if suffixes else ""
    if last == ".csv":
        return ","
    if last in (".tsv", ".tab"):
        return "\t"
    with _open_binary(path) as f:
        head = f.read(64 * 1024).decode(encoding, errors="replace")
    try:
        return csv.Sniffer().sniff(head, delimiters=",\t;|").delimiter
    except csv.Error:
        raise DataError("cannot tell the field separator; pass sep=", path=path) from None


def require_columns(found: Sequence[str], wanted: Sequence[str], path) -> None:
    """DataError naming the first column of ``wanted`` not in ``found``, and listing ``found``."""
    found = [str(c) for c in found]
    for column in wanted:
        if column not in found:
            raise DataError(f"missing column; columns found: {', '.join(map(repr, found))}",
                            path=path, column=column)


# --- converting columns --------------------------------------------------------------------


def _first(mask) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def _numbers(values: pd.Series) -> np.ndarray:
    """float64 values of a column; NaN where a cell is not a number."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    try:
        # ~20x faster than pd.to_numeric on strings, but strict: any odd cell sends us below.
        return pc.cast(pa.array(values, from_pandas=True), pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def string_ids(values: pd.Series, locator: Locator, column: str, what: str) -> pd.Series:
    """Ids as strings, unchanged if already strings; DataError for an empty or missing id.

    A numeric column, or one whose ids are all integers written out, must also hold no negative
    or absurdly large (beyond int64) id, as the README promises: there "-1" is a sentinel or a
    sign error, not a name. Other strings ("sku-12", "-x") are names and stay free-form.
    """
    if pd.api.types.is_float_dtype(values):
        finite = np.isfinite(values.to_numpy())
        if finite.all() and (values == np.round(values)).all():
            values = values.astype(np.int64)  # a float column of whole ids (e.g. from Parquet)
    missing = values.isna().to_numpy()
    if missing.any():
        raise locator.error(_first(missing), f"missing {what}", column)
    strings = values.astype(str).reset_index(drop=True)
    empty = (strings.str.strip() == "").to_numpy()
    if empty.any():
        raise locator.error(_first(empty), f"empty {what}", column)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        _check_numeric_ids(_numbers(values), strings, locator, column, what, _MAX_ANY_ID, whole=False)
    else:
        numbers = _numbers(strings)  # cheap; the regex only runs on columns that are all numbers
        if np.isfinite(numbers).all() and strings.str.fullmatch(r"\s*[+-]?[0-9]+\s*").all():
            _check_numeric_ids(numbers, strings, locator, column, what, _MAX_ANY_ID)
    return strings


def integer_ids(values: pd.Series, locator: Locator, column: str, what: str) -> np.ndarray:
    """Numeric ids as int64; DataError for an empty, non-integer, negative or > 2**31 one."""
    numbers = _numbers(values)
    _check_numeric_ids(numbers, values, locator, column, what, _MAX_DENSE_ID)
    return numbers.astype(np.int64)


def _check_numeric_ids(numbers: np.ndarray, values: pd.Series, locator: Locator, column: str, what: str,
                       limit: int, *, whole: bool = True) -> None:
    """DataError naming the first id that is empty, not a number (or, if ``whole``, not an
    integer), negative or over ``limit``; ``numbers`` are ``values`` as float64."""
    valid = (numbers >= 0) & (numbers <= limit)  # False for NaN
    if whole:
        valid &= numbers == np.round(numbers)
    if not valid.all():
        row = _first(~valid)
        raw, number = values.iloc[row], numbers[row]
        if isinstance(raw, str) and not raw.strip():
            problem = f"empty {what}"
        elif np.isnan(number) or (whole and (not np.isfinite(number) or number != np.round(number))):
            problem = f"{what} {raw!r} is not an integer"
        elif number < 0:
            problem = f"{what} {raw!r} is negative"
        else:
            problem = f"{what} {raw!r} is implausibly large (over 2**{limit.bit_length() - 1})"
        raise locator.error(row, problem, column)


def id_strings(ids: np.ndarray) -> pd.Series:
    """Integer ids as decimal strings ("7", never "007")."""
    codes, uniques = pd.factorize(ids)
    # Format each distinct id once, not once per row.
    return pd.Series(uniques.astype(str), dtype=str).take(codes).reset_index(drop=True)


def ratings(values: pd.Series, locator: Locator, column: str) -> np.ndarray:
    """Ratings as float64; DataError for an empty, unparsable or non-finite one."""
    numbers = _numbers(values)
    bad = ~np.isfinite(numbers)
    if bad.any():
        row = _first(bad)
        raw = values.iloc[row]
        empty = isinstance(raw, str) and not raw.strip()
        problem = "empty rating" if empty else f"rating {raw!r} is not a finite number"
        raise locator.error(row, problem, column)
    return numbers


def check_rating_scale(values: np.ndarray, locator: Locator, column: str, *, low: float, high: float,
                       step: float, dataset: str) -> None:
    """DataError for the first rating outside [low, high] or not a multiple of ``step``."""
    steps = values / step
    bad = (values < low) | (values > high) | (steps != np.round(steps))
    if bad.any():
        row = _first(bad)
        raise locator.error(
            row, f"rating {values[row]:g} is outside {dataset}'s scale ({low:g} to {high:g} in steps of {step:g})",
            column)


def timestamps(values: pd.Series, locator: Locator, column: str, *, fmt: str | None = None,
               allow_dates: bool = True) -> np.ndarray:
    """Timestamps as int64 seconds since the epoch (UTC).

    Accepts integer seconds, floats with whole values, datetimes, and (if ``allow_dates``) date
    strings: ISO 8601, or ``fmt`` (strftime codes) if given. Strings without a UTC offset are UTC;
    fractions of a second in dates are dropped (but a non-whole number of seconds is an error).
    A text column is numeric or dates according to its first value (unless ``fmt`` is given).
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return _datetimes_to_seconds(values, locator, column, values)
    if pd.api.types.is_bool_dtype(values):
        raise DataError(f"timestamps must be numbers or dates, got {values.dtype}", path=locator.path,
                        column=column)
    if pd.api.types.is_numeric_dtype(values):
        return _numbers_to_seconds(_numbers(values), values, locator, column)
    if fmt is None:
        numbers = _numbers(values)
        if not allow_dates or np.isfinite(numbers[0]):
            return _numbers_to_seconds(numbers, values, locator, column)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns about format inference; failures are checked below
        parsed = pd.to_datetime(values, format=fmt or "ISO8601", utc=True, errors="coerce")
    return _datetimes_to_seconds(parsed, locator, column, values, fmt)


def _numbers_to_seconds(numbers: np.ndarray, raw: pd.Series, locator, column) -> np.ndarray:
    finite = np.isfinite(numbers)
    whole = finite & (numbers == np.round(numbers))
    plausible = whole & (np.abs(numbers) < _MAX_ABS_SECONDS)
    if not plausible.all():
        row = _first(~plausible)
        value = raw.iloc[row]
        if not finite[row]:
            problem = f"unparsable timestamp {value!r}"
        elif not whole[row]:
            problem = f"timestamp {value!r} is not a whole number of seconds"
        else:
            problem = f"timestamp {value!r} is implausible as seconds since 1970 (milliseconds?)"
        raise locator.error(row, problem, column)
    if raw.dtype.kind in "iu":
        return raw.to_numpy(dtype=np.int64)  # exact, where a float64 detour could round
    return numbers.astype(np.int64)


def _datetimes_to_seconds(parsed: pd.Series, locator, column, raw: pd.Series, fmt=None) -> np.ndarray:
    parsed = pd.Series(parsed).reset_index(drop=True)
    missing = parsed.isna().to_numpy()
    if missing.any():
        row = _first(missing)
        expected = f" (expected format {fmt!r})" if fmt else " (expected ISO 8601, or pass timestamp_format)"
        raise locator.error(row, f"unparsable timestamp {raw.iloc[row]!r}{expected}", column)
    if parsed.dt.tz is None:
        parsed = parsed.dt.tz_localize("UTC")
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


# --- duplicates ----------------------------------------------------------------------------


def _repeats(log: pd.DataFrame, key: list[str]) -> np.ndarray:
    """Whether each row repeats the ``key`` of an earlier row."""
    # Only rows sharing a timestamp can repeat one another; checking those alone is much faster.
    candidates = log["timestamp"].duplicated(keep=False).to_numpy()
    repeats = np.zeros(len(log), dtype=bool)
    if candidates.any():
        repeats[candidates] = log.loc[candidates, key].duplicated(keep="first").to_numpy()
    return repeats


def apply_duplicate_policy(log: pd.DataFrame, locator: Locator, mode: str) -> tuple[pd.DataFrame, int]:
    """Handles rows repeating an earlier (user_id, item_id, timestamp); returns (log, how many).

    'warn' keeps them, 'drop' keeps only the first of each; both warn with DataWarning. 'error'
    raises DataError at the first repeat. ``log`` rows must be in file order.
    """
    key = ["user_id", "item_id", "timestamp"]
    repeats = _repeats(log, key)
    count = int(repeats.sum())
    if count == 0:
        return log, 0
    rows = np.flatnonzero(repeats)
    if mode == "error":
        first = rows[0]
        same = (log[key] == log[key].iloc[first]).all(axis=1).to_numpy()
        original = locator.describe([_first(same)])
        raise locator.error(first, f"duplicate interaction: same user, item and timestamp as {original}; "
                                   "pass on_duplicates='warn' or 'drop' to accept duplicates")
    shown = locator.describe(rows[:_SHOWN_LINES]) + (", ..." if count > _SHOWN_LINES else "")
    where = locator.path
    if mode == "drop":
        log = log.loc[~repeats].reset_index(drop=True)
        warnings.warn(DataWarning(f"{where}: dropped {count} duplicate interaction(s) (same user, item and "
                                  f"timestamp as an earlier row), at {shown}"), stacklevel=3)
    else:
        warnings.warn(DataWarning(f"{where}: {count} duplicate interaction(s) (same user, item and timestamp "
                                  f"as an earlier row), kept, at {shown}; pass on_duplicates='drop' to "
                                  "drop them"), stacklevel=3)
    return log, count
