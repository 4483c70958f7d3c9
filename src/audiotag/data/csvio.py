"""Reading user CSV files tolerantly but never silently.

Byte-order marks, CRLF line ends, quoted commas and blank lines are handled; stray whitespace is
stripped and reported; a missing header, missing columns, a non-UTF-8 file or a row with the wrong
number of fields is reported with its line number.
"""

from __future__ import annotations

import csv
import difflib
import io
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .records import Problem


@dataclass
class CsvTable:
    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str, str]]]  # (line number, row)


def read_text(path: Path, problems: list[Problem]) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
        problems.append(Problem("csv-bom", "starts with a UTF-8 byte-order mark; it was ignored", severity="warning",
                                source=path.name, hint="harmless here, but some tools read the first column name wrongly"))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8 (byte {raw[e.start]:#04x})",
                        hint="save the file as UTF-8") from None


def resolve_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], *, what: str, path: Path,
                   required: bool = True) -> str | None:
    """The column to use for ``what``: ``wanted`` if given, else the first of ``candidates`` present."""
    if wanted is not None:
        if wanted in columns:
            return wanted
        close = difflib.get_close_matches(wanted, columns, n=1)
        raise DataError(f"{path}: has no column {wanted!r} for the {what} (columns: {', '.join(columns)})",
                        hint=f"did you mean {close[0]!r}?" if close else f"pick one of: {', '.join(columns)}")
    for name in candidates:
        if name in columns:
            return name
    if not required:
        return None
    raise DataError(f"{path}: cannot tell which column holds the {what} (columns: {', '.join(columns)})",
                    hint=f"expected one of {', '.join(candidates)}; name it explicitly (e.g. --{what.split()[0]}-col)")


def read_table(path: Path, problems: list[Problem], *, expect: tuple[str, ...] = ()) -> CsvTable:
    """Read a CSV with a header row. ``expect`` (column names) only sharpens the no-header message."""
    text = read_text(path, problems)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    padded_rows: list[int] = []
    line_start = 1
    for fields in reader:
        line = line_start
        line_start = reader.line_num + 1
        if not fields or all(not f.strip() for f in fields):
            continue
        if header is None:
            header = [f.strip() for f in fields]
            if header != fields:
                problems.append(Problem("csv-whitespace", "the header has spaces around column names; they were stripped",
                                        severity="warning", source=path.name, row=line))
            if expect and not set(expect) & set(header) and any("." in f for f in header):
                raise DataError(f"{path}: the first line {','.join(fields)!r} looks like data, not a header",
                                hint=f"add a header line such as {','.join(expect)!r}")
            if len(set(header)) != len(header):
                dupes = sorted({c for c in header if header.count(c) > 1})
                raise DataError(f"{path}: the header repeats column(s) {', '.join(dupes)}")
            continue
        if len(fields) != len(header):
            first = fields[0].strip() if fields else ""
            problems.append(Problem(
                "csv-row", f"has {len(fields)} fields, the header has {len(header)}: {','.join(fields)[:120]!r}",
                hint="quote fields that contain commas (\"a,b\")", source=path.name, row=line,
                fname=first or None))
            continue
        stripped = [f.strip() for f in fields]
        if stripped != fields:
            padded_rows.append(line)
        rows.append((line, dict(zip(header, stripped))))
    if header is None:
        raise DataError(f"{path}: the file is empty", hint=f"it needs a header line such as {','.join(expect) or 'fname,labels'!r}")
    if padded_rows:
        shown = ", ".join(map(str, padded_rows[:5])) + (" ..." if len(padded_rows) > 5 else "")
        problems.append(Problem("csv-whitespace", f"{len(padded_rows)} rows have spaces around values (lines {shown}); "
                                "they were stripped", severity="warning", source=path.name))
    return CsvTable(path=path, columns=header, rows=rows)


def read_vocabulary(path: Path, problems: list[Problem]) -> tuple[str, ...]:
    """``vocabulary.csv`` in the Zenodo FSDKaggle2019 format (``index,label`` rows, no header),
    or one label per line."""
    text = read_text(path, problems)
    labels: list[tuple[int, str]] = []
    for n, fields in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        fields = [f.strip() for f in fields]
        if not fields or not any(fields):
            continue
        if len(fields) == 1:
            labels.append((len(labels), fields[0]))
        elif fields[0].lstrip("-").isdigit():
            labels.append((int(fields[0]), fields[1]))
        elif n == 1:
            continue  # a header such as "index,label"
        else:
            raise DataError(f"{path}:{n}: expected 'index,label', got {','.join(fields)!r}")
    if not labels:
        raise DataError(f"{path}: the vocabulary is empty")
    order = sorted(labels)
    vocab = tuple(label for _, label in order)
    dupes = sorted({v for v in vocab if vocab.count(v) > 1})
    if dupes:
        raise DataError(f"{path}: label(s) listed twice: {', '.join(dupes)}")
    if any(not v for v in vocab):
        raise DataError(f"{path}: has an empty label name")
    return vocab
