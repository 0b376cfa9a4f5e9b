"""Seeded synthetic multimodal recommendation data with *planted* structure.

Why planted structure: the bundled default dataset must let a user see SEA learn something in
minutes on a laptop, and tests need data where "the model works" is checkable. Random
interactions would make every model tie with a popularity ranking. So:

* users and items get latent taste vectors from a mixture of ``n_clusters`` Gaussian clusters
  (a shared ``latent_dim`` part), plus one ``unique_dim`` latent per modality;
* each user draws ``n_u >= min_per_user`` distinct items (skewed, log-normal counts), without
  replacement, with probability ``∝ exp(affinity_scale * affinity(u, i) + popularity_i)``
  (Gumbel top-k), where affinity is the shared-latent dot product plus a smaller contribution
  of every modality-unique latent and ``popularity_i`` a mild log-normal item skew;
* each modality's features are a random linear map of ``[shared latent, that modality's unique
  latent]`` into the modality's dim, plus Gaussian noise: every modality carries the generic
  signal (what SEA's alignment loss pulls together) and something of its own (what the
  separation loss keeps apart), and items are only known through features, as in SEA;
* splits follow MMRec: each user's interactions are shuffled; users with < 10 get n-2/1/1,
  others 80/10/10 (valid and test rounded half up, at least 1 each).

Raw ids are deliberately not contiguous (users ``1000 + 3u``, items ``10**6 + 7i``) and
interactions are written in shuffled order, so the loader's id mapping is always exercised.
Everything is vectorised; the default tier generates in well under a second, the Baby-like
tier (19k x 7k x 160k, 4096 + 384 dims) in a few seconds.

Catalog-size tiers do not fit this exact, all-in-memory sampler (it scores every user against
every item): the CLI hands specs above :data:`STREAM_THRESHOLD` interactions (or any with
``--stream``) to :mod:`sea_dist.sources.synthetic_stream`, which generates the same kind of planted
structure chunk by chunk in bounded memory (dense ids ``0..n-1``, rows grouped by user).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from sea_dist.data.meta import DatasetMeta, SPLIT_NAMES
from sea_dist.data.writer import write_dataset
from sea_dist.local_cache import cache_dir
from sea_dist.sources.spec_checks import check_common_spec, count_cap

__all__ = [
    "GENERATOR_VERSION",
    "SyntheticSpec",
    "SyntheticData",
    "DEFAULT_SPEC",
    "generate",
    "generate_full",
    "mmrec_split",
    "write_synthetic",
    "default_dataset_root",
    "main",
]

#: Bump whenever the generator's output for a given spec changes: the bundled default
#: dataset's cache path includes it, so old caches are never mistaken for the new data.
GENERATOR_VERSION = "1"

#: The CLI switches to the streaming generator above this many interactions (or with --stream).
STREAM_THRESHOLD = 1_000_000

USER_ID_BASE, USER_ID_STEP = 1000, 3
ITEM_ID_BASE, ITEM_ID_STEP = 10**6, 7
_USER_CHUNK = 1024  # users per Gumbel top-k block; fixed so the random stream never depends on the machine


@dataclass
class SyntheticSpec:
    """What to generate. Equal specs give bit-identical data."""

    n_users: int = 5000
    n_items: int = 2000
    n_interactions: int = 75000  # all splits together
    modalities: dict = field(default_factory=lambda: {"image": 256, "text": 128})
    seed: int = 2024
    name: str = "synthetic-default"
    latent_dim: int = 16  # shared (generic) taste dims
    unique_dim: int = 8  # per-modality unique taste dims
    n_clusters: int = 20
    cluster_std: float = 0.6  # spread of users/items around their cluster centre (centres ~ N(0, 1))
    affinity_scale: float = 1.0  # inverse temperature of the interaction sampler
    unique_weight: float = 0.5  # weight of the modality-unique affinities relative to the shared one
    popularity_std: float = 0.5  # std of the log-normal item popularity skew (mild)
    count_sigma: float = 1.0  # log-normal sigma of interactions per user (skew)
    min_per_user: int = 5  # so every user can give train/valid/test at least one row each
    feature_noise: float = 0.5  # std of the per-entry feature noise (signal entries have std ~1)


DEFAULT_SPEC = SyntheticSpec()


@dataclass
class SyntheticData:
    """Generated data plus the hidden latents (for tests and diagnostics; never written)."""

    meta: DatasetMeta
    users_raw: np.ndarray  # int64 [E], shuffled order
    items_raw: np.ndarray  # int64 [E]
    splits: np.ndarray  # int8 [E]
    features: dict[str, np.ndarray]  # modality -> float32 [n_items, dim], row j = item_raw_ids[j]
    item_raw_ids: np.ndarray  # int64 [n_items], ascending: item index i <-> latent row i
    user_latent: np.ndarray  # float32 [n_users, latent_dim + M*unique_dim]; row u = user index u
    item_latent: np.ndarray  # float32 [n_items, latent_dim + M*unique_dim], affinity weights folded in
    item_popularity: np.ndarray  # float32 [n_items], the log-popularity bias

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Planted affinity (without popularity) of contiguous (user, item) index pairs."""
        return np.einsum("ij,ij->i", self.user_latent[users], self.item_latent[items])

    def as_tuple(self) -> tuple:
        return (self.meta, self.users_raw, self.items_raw, self.splits, self.features, self.item_raw_ids)


def user_raw_id(u: np.ndarray | int) -> np.ndarray | int:
    return USER_ID_BASE + USER_ID_STEP * np.asarray(u, dtype=np.int64)


def item_raw_id(i: np.ndarray | int) -> np.ndarray | int:
    return ITEM_ID_BASE + ITEM_ID_STEP * np.asarray(i, dtype=np.int64)


def _user_counts(rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray:
    """Skewed per-user counts, each in [min_per_user, cap], summing exactly to n_interactions."""
    U, lo, cap = spec.n_users, spec.min_per_user, count_cap(spec)
    w = rng.lognormal(0.0, spec.count_sigma, U)
    extra_total = spec.n_interactions - lo * U
    cap_extra = cap - lo
    extra = np.minimum(np.floor(w / w.sum() * extra_total), cap_extra).astype(np.int64)
    rem = extra_total - int(extra.sum())
    while rem > 0:  # hand out what flooring/capping left, weighted the same way; 1-3 rounds
        p = w * (extra < cap_extra)
        add = np.bincount(rng.choice(U, size=rem, p=p / p.sum()), minlength=U)
        extra = np.minimum(extra + add, cap_extra)
        rem = extra_total - int(extra.sum())
    return extra + lo


def mmrec_split(rng: np.random.Generator, users: np.ndarray, n_users: int) -> np.ndarray:
    """MMRec-style per-user split codes (int8) for interactions with contiguous ``users``.

    Each user's rows are put in a seeded random order; a user with n < 10 rows gets n-2 train,
    1 valid, 1 test; otherwise valid = test = max(1, round_half_up(0.1 n)), train the rest.
    """
    E = users.size
    order = np.lexsort((rng.random(E), users))  # grouped by user, random within user
    counts = np.bincount(users, minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(E) - np.repeat(starts, counts)  # position within the user's shuffled rows
    n = counts[users[order]]
    n_holdout = np.where(n < 10, 1, np.maximum(1, np.floor(0.1 * n + 0.5).astype(np.int64)))
    n_train = n - 2 * n_holdout
    code = np.where(rank < n_train, 0, np.where(rank < n_train + n_holdout, 1, 2)).astype(np.int8)
    splits = np.empty(E, dtype=np.int8)
    splits[order] = code
    return splits


def generate_full(spec: SyntheticSpec, progress: Callable[[str], None] | None = None) -> SyntheticData:
    """Generate everything in memory, latents included (see module docstring for the model)."""
    check_common_spec(spec)
    say = progress or (lambda _msg: None)
    rng = np.random.default_rng(spec.seed)
    U, I, d, du = spec.n_users, spec.n_items, spec.latent_dim, spec.unique_dim
    mods = list(spec.modalities)
    f32 = np.float32

    # latent tastes: shared part from a cluster mixture, unique parts per modality
    centres = rng.standard_normal((spec.n_clusters, d)).astype(f32)
    u_cl = rng.integers(0, spec.n_clusters, U)
    i_cl = rng.integers(0, spec.n_clusters, I)
    zu = centres[u_cl] + spec.cluster_std * rng.standard_normal((U, d)).astype(f32)
    zi = centres[i_cl] + spec.cluster_std * rng.standard_normal((I, d)).astype(f32)
    uniq_centres = {m: rng.standard_normal((spec.n_clusters, du)).astype(f32) for m in mods}
    qu = {m: uniq_centres[m][u_cl] + spec.cluster_std * rng.standard_normal((U, du)).astype(f32) for m in mods}
    vi = {m: rng.standard_normal((I, du)).astype(f32) for m in mods}
    popularity = (spec.popularity_std * rng.standard_normal(I)).astype(f32)

    # one dot product = shared affinity / sqrt(d) + unique_weight * sum_m unique affinity / sqrt(du)
    user_latent = np.concatenate([zu] + [qu[m] for m in mods], axis=1).astype(f32)
    item_latent = np.concatenate(
        [zi / np.sqrt(d)] + [vi[m] * (spec.unique_weight / np.sqrt(du)) for m in mods], axis=1
    ).astype(f32)
    say(f"latents: {U} users, {I} items, {spec.n_clusters} clusters")

    # interactions: Gumbel top-k = sampling n_u distinct items with p ∝ exp(logit)
    counts = _user_counts(rng, spec)
    scaled_items = (spec.affinity_scale * item_latent).T.copy()
    users_parts, items_parts = [], []
    for lo in range(0, U, _USER_CHUNK):
        hi = min(U, lo + _USER_CHUNK)
        logits = user_latent[lo:hi] @ scaled_items + popularity
        expo = rng.standard_exponential((hi - lo, I), dtype=f32)
        np.maximum(expo, np.finfo(f32).tiny, out=expo)  # float32 draws can be exactly 0
        logits -= np.log(expo)  # + Gumbel noise: top-k of logit + Gumbel = sampling without replacement
        c = counts[lo:hi]
        kmax = int(c.max())
        if kmax < I:
            top = np.argpartition(-logits, kmax - 1, axis=1)[:, :kmax]
        else:
            top = np.broadcast_to(np.arange(I), (hi - lo, I))
        order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        keep = np.arange(kmax)[None, :] < c[:, None]
        users_parts.append(np.repeat(np.arange(lo, hi, dtype=np.int64), c))
        items_parts.append(top[keep].astype(np.int64))
    users = np.concatenate(users_parts)
    items = np.concatenate(items_parts)
    say(f"interactions: {users.size} sampled (per user min {counts.min()}, median {int(np.median(counts))}, max {counts.max()})")

    splits = mmrec_split(rng, users, U)
    perm = rng.permutation(users.size)  # files hold interactions in no particular order
    users, items, splits = users[perm], items[perm], splits[perm]

    # features: shared signal + modality-unique signal, linearly mapped, plus noise
    features: dict[str, np.ndarray] = {}
    for m in mods:
        dim = int(spec.modalities[m])
        lat = np.concatenate([zi, vi[m]], axis=1)
        A = rng.standard_normal((d + du, dim)).astype(f32) / np.sqrt(d + du, dtype=f32)
        x = lat @ A
        x += spec.feature_noise * rng.standard_normal((I, dim), dtype=f32)
        features[m] = x
        say(f"features[{m}]: {I} x {dim}")

    split_counts = np.bincount(splits.astype(np.int64), minlength=3)
    meta = DatasetMeta(
        name=spec.name,
        version=f"gen{GENERATOR_VERSION}-seed{spec.seed}",
        n_users=U,
        n_items=I,
        n_interactions=int(users.size),
        modalities={m: int(spec.modalities[m]) for m in mods},
        splits={name: int(split_counts[k]) for k, name in enumerate(SPLIT_NAMES)},
    )
    return SyntheticData(
        meta=meta,
        users_raw=user_raw_id(users),
        items_raw=item_raw_id(items),
        splits=splits,
        features=features,
        item_raw_ids=item_raw_id(np.arange(I)),
        user_latent=user_latent,
        item_latent=item_latent,
        item_popularity=popularity,
    )


def generate(
    spec: SyntheticSpec,
) -> tuple[DatasetMeta, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(meta, users_raw, items_raw, splits, features, item_raw_ids): :func:`write_dataset`'s inputs."""
    return generate_full(spec).as_tuple()


def write_synthetic(
    spec: SyntheticSpec, root: str, progress: Callable[[str], None] | None = None, **write_kwargs: Any
) -> str:
    """Generate ``spec`` and write it to ``root`` (any URI :func:`write_dataset` takes)."""
    data = generate_full(spec, progress)
    write_dataset(root, *data.as_tuple(), **write_kwargs)
    if progress:
        progress(f"wrote {root}")
    return root


def _spec_key(spec: SyntheticSpec) -> str:
    # no sort_keys: the order of modalities matters (the first one defines the item universe
    # and gets mm_image_weight), so {"image", "text"} and {"text", "image"} are different data
    blob = json.dumps(asdict(spec)).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def default_dataset_root(spec: SyntheticSpec | None = None) -> str:
    """Local root of the bundled default dataset, generated on first use.

    The path carries the generator version and a hash of the spec, so a generator change makes
    a new dataset instead of silently reusing an old one. Generation writes into a private
    temporary folder and renames it into place (atomic on one filesystem), so concurrent workers
    either see the complete dataset or none; a worker that loses the race drops its copy.
    Cheap when present: one ``os.path.exists``.
    """
    spec = spec or DEFAULT_SPEC
    base = os.path.join(cache_dir(), "datasets")
    final = os.path.join(base, f"{spec.name}-gen{GENERATOR_VERSION}-{_spec_key(spec)}")
    if os.path.exists(os.path.join(final, "dataset.json")):
        return final
    os.makedirs(base, exist_ok=True)
    tmp = os.path.join(base, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write_synthetic(spec, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # another process won the race (final exists and is non-empty): use theirs
            if not os.path.exists(os.path.join(final, "dataset.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m sea_dist.sources.synthetic --users N --items N --interactions N --out ROOT``."""
    p = argparse.ArgumentParser(
        prog="python -m sea_dist.sources.synthetic",
        description="Write a seeded synthetic multimodal dataset (planted structure) in the sea_dist data contract.",
    )
    d = DEFAULT_SPEC
    p.add_argument("--users", type=int, default=d.n_users, help="number of users")
    p.add_argument("--items", type=int, default=d.n_items, help="number of items")
    p.add_argument("--interactions", type=int, default=d.n_interactions, help="interactions, all splits")
    p.add_argument("--out", required=True, help="dataset root: local path, file:// or s3:// URI")
    p.add_argument("--image-dim", type=int, default=d.modalities["image"], help="image feature dim (even)")
    p.add_argument("--text-dim", type=int, default=d.modalities["text"], help="text feature dim (even)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--name", default=None, help="dataset name (default: synthetic-<users>x<items>)")
    p.add_argument("--feature-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--items-per-shard", type=int, default=100_000)
    p.add_argument("--interactions-per-shard", type=int, default=1_000_000)
    p.add_argument("--s3-endpoint-url", default="", help="S3 endpoint override (S3-compatible stores)")
    p.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"use the bounded-memory streaming generator (default: when --interactions > {STREAM_THRESHOLD:,})",
    )
    p.add_argument(
        "--users-per-chunk",
        type=int,
        default=None,
        help="streaming only: users per interactions part file (default: about --interactions-per-shard rows)",
    )
    p.add_argument(
        "--sparse-ids",
        action="store_true",
        help="streaming only: raw ids 1000+3u / 10**6+7i (the in-memory generator's) instead of 0..n-1",
    )
    a = p.parse_args(argv)
    stream = a.interactions > STREAM_THRESHOLD if a.stream is None else a.stream
    if stream:
        return _main_stream(a)
    spec = SyntheticSpec(
        n_users=a.users,
        n_items=a.items,
        n_interactions=a.interactions,
        modalities={"image": a.image_dim, "text": a.text_dim},
        seed=a.seed,
        name=d.name,
    )
    if a.name:
        spec.name = a.name
    elif spec != d:  # only the default spec may call itself the default dataset
        spec.name = f"synthetic-{a.users}x{a.items}"
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    try:
        write_synthetic(
            spec,
            a.out,
            progress=say,
            feature_dtype=a.feature_dtype,
            items_per_shard=a.items_per_shard,
            interactions_per_shard=a.interactions_per_shard,
            s3_endpoint_url=a.s3_endpoint_url,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _main_stream(a: argparse.Namespace) -> int:
    """The CLI's large-tier path: same flags, :func:`sea_dist.sources.stream_writer.write_stream`."""
    from sea_dist.sources.stream_spec import StreamSpec  # lazy: only this path needs them
    from sea_dist.sources.stream_writer import write_stream

    users_per_chunk = a.users_per_chunk
    if users_per_chunk is None:  # part files of about --interactions-per-shard rows
        users_per_chunk = max(1, a.interactions_per_shard * max(a.users, 1) // max(a.interactions, 1))
    spec = StreamSpec(
        n_users=a.users,
        n_items=a.items,
        n_interactions=a.interactions,
        modalities={"image": a.image_dim, "text": a.text_dim},
        seed=a.seed,
        name=a.name or f"synthetic-{a.users}x{a.items}",
        users_per_chunk=users_per_chunk,
        items_per_shard=a.items_per_shard,
        feature_dtype=a.feature_dtype,
        sparse_ids=a.sparse_ids,
    )
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    try:
        write_stream(spec, a.out, s3_endpoint_url=a.s3_endpoint_url, progress=say)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
