"""Streaming synthetic catalog generator: catalog-size tiers in bounded memory.

:mod:`sea_dist.data.synthetic` builds everything in memory and samples every user against every
item (exact, but ``users x items`` work): right for the default and Baby-like tiers, hopeless
for the "large, this machine" tier of docs/design.md, "Scale tiers" (2M users x 200k items x 50M interactions).
This module generates the *same kind* of planted structure chunk by chunk and writes it straight
into the data contract, local or ``s3://``::

    python -m sea_dist.data.synthetic --users 2000000 --items 200000 \\
        --interactions 50000000 --out s3://bucket/catalog      # routed here (> 1M interactions)

or from Python: ``write_stream(StreamSpec(2_000_000, 200_000, 50_000_000), "s3://b/catalog")``.

The model (same knobs and meaning as :class:`~sea_dist.data.synthetic.SyntheticSpec`):

* items: cluster ``c_i`` of ``n_clusters``; shared latent ``z_i = centre[c_i] + cluster_std *
  noise`` (``latent_dim``), one unique latent ``v_im ~ N(0, I)`` (``unique_dim``) per modality,
  log-popularity ``pop_i ~ N(0, popularity_std^2)``. Held in memory for the whole run
  (``n_items x (latent_dim + M*unique_dim + 1)`` float32: 26 MB for 200k items);
* users, generated per chunk of ``users_per_chunk``: cluster ``c_u``, ``z_u = centre[c_u] + ...``,
  unique tastes ``q_um = unique_centre_m[c_u] + ...``; logit of (u, i) =
  ``affinity_scale * (z_u.z_i/sqrt(d) + unique_weight * sum_m q_um.v_im/sqrt(du)) + pop_i``;
* counts: skewed (log-normal) per user, in ``[min_per_user, n_items // 2]``; each chunk gets
  its exact share of ``n_interactions`` (so the total is exact unless the caps bind; the real
  total is what ``dataset.json`` records);
* each user draws ``k`` distinct items with ``p ∝ exp(logit)`` without replacement by Gumbel
  top-k, against a *candidate set* instead of the whole catalog (that is what makes it
  streamable): ``ceil(oversample * k) + 8`` distinct candidates, drawn per cluster — how many
  from each cluster follows the user's analytic cluster mass ``n_c exp(z_u.mean(z_i in c)/...)``
  mixed with ``proposal_floor`` of the plain cluster sizes (so every item can be drawn), then
  distinct items uniformly within the cluster — and scored with the sampled-softmax correction
  ``logit - log(inclusion probability)``. Users whose candidate set would exceed
  ``dense_above`` of the catalog are sampled exactly against all items (tiny catalogs, heavy
  users). ``test_synthetic_stream`` checks the approximation against the exact sampler;
* splits as MMRec (and :func:`~sea_dist.data.synthetic.mmrec_split`): each user's items in a
  random order, ``n < 10``: ``n-2/1/1``, else valid = test = ``round_half_up(0.1 n)``;
* features: per modality, ``[z_i, v_im] @ A_m + feature_noise * noise``, generated and written
  one row group at a time (so a 4096-d modality never needs more than a row group in memory).

Layout: ``features/<m>/part-NNNNN.parquet`` (``items_per_shard`` items each, sorted by item id,
row groups of ``row_group_size``, no dictionaries, ``fixed_size_list<float32|float16>``),
``interactions/part-NNNNN.parquet`` (one per user chunk, rows grouped by user),
``dataset.json`` last (an old one is removed first, so readers never pair it with new shards).
Ids are dense (users ``0..n_users-1``, items ``0..n_items-1``) unless ``sparse_ids``, which uses
the in-memory generator's ``1000 + 3u`` / ``10**6 + 7i``.

Determinism: every random stream is keyed by ``(seed, purpose, index)``, so equal specs give
identical files; the user side depends on ``users_per_chunk`` (chunks are the unit of the
random streams), the item side and features do not depend on any chunk size.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import posixpath
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sea_dist.data.dataset import SPLIT_NAMES, DatasetMeta, make_filesystem
from sea_dist.data.synthetic import check_common_spec, count_cap

__all__ = ["STREAM_GENERATOR_VERSION", "StreamSpec", "StreamModel", "write_stream", "main"]

#: Bump whenever the output for a given spec changes (it is part of ``dataset.json``'s version).
STREAM_GENERATOR_VERSION = "1"

# purposes of the keyed random streams: default_rng([seed, purpose, index...])
_RNG_ITEMS, _RNG_USERS, _RNG_FEATURE_MAP, _RNG_FEATURE_NOISE = 0, 1, 2, 3
_BLOCK_CANDIDATES = 1 << 18  # candidates scored per numpy block: bounds the temporaries (~40 MB)
_DENSE_BLOCK_SCORES = 1 << 22  # users x items scores per block on the exact path (16 MB)


@dataclass
class StreamSpec:
    """What to generate. Equal specs give identical datasets."""

    n_users: int
    n_items: int
    n_interactions: int  # all splits together; the written total can differ slightly (recorded)
    modalities: dict = field(default_factory=lambda: {"image": 64, "text": 32})
    seed: int = 7
    name: str = "synthetic-catalog"
    users_per_chunk: int = 100_000  # one interactions/part file per chunk
    items_per_shard: int = 50_000  # one features/<m>/part file per shard
    row_group_size: int = 8192  # feature row groups: the unit of ranged reads
    feature_dtype: str = "float32"  # or "float16"
    # planted structure (as SyntheticSpec)
    latent_dim: int = 16
    unique_dim: int = 8
    n_clusters: int = 20
    cluster_std: float = 0.6
    affinity_scale: float = 1.0
    unique_weight: float = 0.5
    popularity_std: float = 0.5
    count_sigma: float = 1.0
    min_per_user: int = 5
    feature_noise: float = 0.5
    # sampler
    oversample: float = 4.0  # candidates per requested interaction
    proposal_floor: float = 0.05  # share of candidates proposed by cluster size alone
    dense_above: float = 0.25  # exact all-items sampling when candidates exceed this share of items
    sparse_ids: bool = False  # raw ids 1000+3u / 10**6+7i instead of 0..n-1


def _check_spec(spec: StreamSpec) -> None:
    check_common_spec(spec)
    if spec.feature_dtype not in ("float32", "float16"):
        raise ValueError(f"feature_dtype must be 'float32' or 'float16', got {spec.feature_dtype!r}")
    for key in ("users_per_chunk", "items_per_shard", "row_group_size", "n_clusters", "latent_dim", "unique_dim"):
        if getattr(spec, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(spec, key)}")
    if spec.oversample < 1.0:
        raise ValueError(f"oversample must be >= 1, got {spec.oversample}")
    if not 0.0 < spec.proposal_floor <= 1.0:
        raise ValueError(f"proposal_floor must be in (0, 1], got {spec.proposal_floor}")


def _rng(spec: StreamSpec, *key: int) -> np.random.Generator:
    return np.random.default_rng([int(spec.seed) & 0xFFFFFFFF, *key])


class StreamModel:
    """The planted structure: item latents (held), user latents (regenerated per chunk).

    Public so tests and diagnostics can score (user, item) pairs of a written dataset
    (:meth:`affinity`) without the generator keeping anything but the items in memory.
    """

    def __init__(self, spec: StreamSpec):
        _check_spec(spec)
        self.spec = spec
        rng = _rng(spec, _RNG_ITEMS)
        I, K, d, du = spec.n_items, spec.n_clusters, spec.latent_dim, spec.unique_dim
        self.mods = list(spec.modalities)
        f32 = np.float32
        self.centres = rng.standard_normal((K, d)).astype(f32)
        self.unique_centres = {m: rng.standard_normal((K, du)).astype(f32) for m in self.mods}
        self.item_cluster = rng.integers(0, K, I)
        self.zi = self.centres[self.item_cluster] + f32(spec.cluster_std) * rng.standard_normal((I, d), dtype=f32)
        self.vi = {m: rng.standard_normal((I, du), dtype=f32) for m in self.mods}
        self.popularity = (spec.popularity_std * rng.standard_normal(I)).astype(f32)

        # scoring table: logit(u, i) = user_vec(u) . item_vec(i), popularity as the last column
        a = spec.affinity_scale
        item_vec = np.concatenate(
            [self.zi * f32(a / math.sqrt(d))]
            + [self.vi[m] * f32(a * spec.unique_weight / math.sqrt(du)) for m in self.mods]
            + [self.popularity[:, None]],
            axis=1,
        ).astype(f32)
        # rows sorted by cluster: candidate gathers stay inside one cluster's block (cache friendly)
        self.sorted_to_item = np.argsort(self.item_cluster, kind="stable").astype(np.int64)
        self.item_vec_sorted = np.ascontiguousarray(item_vec[self.sorted_to_item])
        del item_vec
        self.cluster_size = np.bincount(self.item_cluster, minlength=K).astype(np.int64)
        self.cluster_start = np.concatenate([[0], np.cumsum(self.cluster_size)[:-1]]).astype(np.int64)
        # cluster means of the (scaled) shared part: the proposal's cluster logits
        self.cluster_mean = np.zeros((K, d), dtype=f32)
        for c in range(K):
            block = self.item_vec_sorted[self.cluster_start[c] : self.cluster_start[c] + self.cluster_size[c], :d]
            if block.size:
                self.cluster_mean[c] = block.mean(axis=0, dtype=np.float64)

    @property
    def n_chunks(self) -> int:
        return -(-self.spec.n_users // self.spec.users_per_chunk)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        lo = chunk * self.spec.users_per_chunk
        return lo, min(self.spec.n_users, lo + self.spec.users_per_chunk)

    def _user_latents(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(clusters, user_vec [n, D]) of a chunk: the first draws of the chunk's stream."""
        spec, f32 = self.spec, np.float32
        K, d, du = spec.n_clusters, spec.latent_dim, spec.unique_dim
        cl = rng.integers(0, K, n)
        parts = [self.centres[cl] + f32(spec.cluster_std) * rng.standard_normal((n, d), dtype=f32)]
        for m in self.mods:
            parts.append(self.unique_centres[m][cl] + f32(spec.cluster_std) * rng.standard_normal((n, du), dtype=f32))
        parts.append(np.ones((n, 1), dtype=f32))
        return cl, np.concatenate(parts, axis=1).astype(f32)

    def user_vectors(self, chunk: int) -> np.ndarray:
        """user_vec [n, D] of a chunk's users (regenerated from the chunk's random stream)."""
        lo, hi = self.chunk_bounds(chunk)
        return self._user_latents(_rng(self.spec, _RNG_USERS, chunk), hi - lo)[1]

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Planted logit (affinity + popularity) of (dense user index, dense item index) pairs."""
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        out = np.empty(users.size, dtype=np.float32)
        pos_of_item = np.empty_like(self.sorted_to_item)
        pos_of_item[self.sorted_to_item] = np.arange(self.sorted_to_item.size)
        chunk_of = users // self.spec.users_per_chunk
        for c in np.unique(chunk_of):
            sel = np.flatnonzero(chunk_of == c)
            uv = self.user_vectors(int(c))[users[sel] - self.chunk_bounds(int(c))[0]]
            out[sel] = np.einsum("nd,nd->n", uv, self.item_vec_sorted[pos_of_item[items[sel]]])
        return out

    # ---- interactions of one user chunk ------------------------------------------------------

    def _counts(self, rng: np.random.Generator, lo: int, hi: int) -> np.ndarray:
        """Skewed per-user counts of a chunk, summing to its exact share of n_interactions."""
        spec = self.spec
        U, N, n, mn = spec.n_users, spec.n_interactions, hi - lo, spec.min_per_user
        cap_extra = count_cap(spec) - mn
        target = N * hi // U - N * lo // U
        extra_total = min(max(target - mn * n, 0), cap_extra * n)
        w = rng.lognormal(0.0, spec.count_sigma, n)
        extra = np.minimum(np.floor(w / w.sum() * extra_total), cap_extra).astype(np.int64)
        rem = extra_total - int(extra.sum())
        while rem > 0:  # what flooring/capping left, weighted the same way (1-3 rounds)
            p = w * (extra < cap_extra)
            add = np.bincount(rng.choice(n, size=rem, p=p / p.sum()), minlength=n)
            extra = np.minimum(extra + add, cap_extra)
            rem = extra_total - int(extra.sum())
        return extra + mn

    def _proposal(self, user_vec: np.ndarray) -> np.ndarray:
        """Cluster proposal [n, K]: analytic cluster mass of each user, floored by cluster size."""
        spec = self.spec
        d = spec.latent_dim
        size = self.cluster_size.astype(np.float64)
        with np.errstate(divide="ignore"):
            logits = user_vec[:, :d].astype(np.float64) @ self.cluster_mean.T.astype(np.float64) + np.log(size)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        p = (1.0 - spec.proposal_floor) * p + spec.proposal_floor * (size / size.sum())
        return p / p.sum(axis=1, keepdims=True)

    def _gumbel(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        e = rng.standard_exponential(shape, dtype=np.float32)
        np.maximum(e, np.finfo(np.float32).tiny, out=e)  # float32 draws can be exactly 0
        return -np.log(e)

    def _topk(self, scores: np.ndarray, k: int) -> np.ndarray:
        if k >= scores.shape[1]:
            return np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
        return np.argpartition(-scores, k - 1, axis=1)[:, :k]

    def _sample_exact(self, rng: np.random.Generator, uvec: np.ndarray, k: int) -> np.ndarray:
        """[n, k] sorted positions: Gumbel top-k against every item (exact sampler)."""
        I = self.spec.n_items
        out = np.empty((uvec.shape[0], k), dtype=np.int64)
        step = max(1, _DENSE_BLOCK_SCORES // I)
        for b in range(0, uvec.shape[0], step):
            s = uvec[b : b + step] @ self.item_vec_sorted.T
            s += self._gumbel(rng, s.shape)
            out[b : b + step] = self._topk(s, k)
        return out

    def _sample_candidates(
        self, rng: np.random.Generator, uvec: np.ndarray, prop: np.ndarray, k: int, C: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Gumbel top-k over C distinct candidates per user; ([n, k] sorted positions, ok rows).

        Rows whose clusters cannot supply k distinct candidates (only in tiny catalogs) come
        back with ok=False and are redone by the exact sampler.
        """
        K = self.spec.n_clusters
        n = uvec.shape[0]
        size = self.cluster_size
        m = np.minimum(rng.multinomial(C, prop), size)  # candidates per (user, cluster), distinct
        real = m.sum(axis=1)
        ok = real >= k
        pad = C - real
        counts = np.concatenate([m, pad[:, None]], axis=1).ravel()  # group = (user, cluster|pad)
        G = n * (K + 1)
        # per group: an arithmetic progression (offset + j*stride) mod n_c of distinct positions
        size_g = np.tile(np.append(size, 1), n)
        off = np.floor(rng.random(G) * size_g).astype(np.int64)
        stride = 1 + np.floor(rng.random(G) * np.maximum(size_g - 1, 1)).astype(np.int64)
        period = size_g // np.gcd(stride, size_g)
        stride[period < counts] = 1  # j*stride must not wrap onto itself within the group
        start_g = np.tile(np.append(self.cluster_start, 0), n)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_rho = np.log(counts / size_g).astype(np.float32)  # inclusion prob of the group's items
        log_rho[K :: K + 1] = np.inf  # pads: score -inf
        g = np.repeat(np.arange(G), counts)
        j = np.arange(g.size) - np.repeat(np.cumsum(counts) - counts, counts)
        pos = start_g[g] + (off[g] + j * stride[g]) % size_g[g]
        D = uvec.shape[1]
        cand = np.take(self.item_vec_sorted, pos, axis=0).reshape(n, C, D)
        s = np.einsum("nd,ncd->nc", uvec, cand)
        s -= log_rho[g].reshape(n, C)
        s += self._gumbel(rng, s.shape)
        top = self._topk(s, k)
        return np.take_along_axis(pos.reshape(n, C), top, axis=1), ok

    def sample_chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, items, splits) of one user chunk: dense indices, grouped by user."""
        spec = self.spec
        lo, hi = self.chunk_bounds(chunk)
        n = hi - lo
        rng = _rng(spec, _RNG_USERS, chunk)
        _, uvec = self._user_latents(rng, n)
        counts = self._counts(rng, lo, hi)
        prop = self._proposal(uvec)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        E = int(offsets[-1])
        items = np.empty(E, dtype=np.int64)
        splits = np.empty(E, dtype=np.int8)
        I = spec.n_items
        for k in np.unique(counts):
            k = int(k)
            rows = np.flatnonzero(counts == k)
            C = int(math.ceil(spec.oversample * k)) + 8
            picks = np.empty((rows.size, k), dtype=np.int64)
            if C >= spec.dense_above * I or C >= I:
                picks[:] = self._sample_exact(rng, uvec[rows], k)
            else:
                step = max(1, _BLOCK_CANDIDATES // C)
                for b in range(0, rows.size, step):
                    r = rows[b : b + step]
                    p, ok = self._sample_candidates(rng, uvec[r], prop[r], k, C)
                    if not ok.all():
                        p[~ok] = self._sample_exact(rng, uvec[r[~ok]], k)
                    picks[b : b + step] = p
            # MMRec split: a random order per user, then train / valid / test by position
            picks = np.take_along_axis(picks, np.argsort(rng.random(picks.shape), axis=1), axis=1)
            hold = 1 if k < 10 else max(1, int(math.floor(0.1 * k + 0.5)))
            code = np.zeros(k, dtype=np.int8)
            code[k - 2 * hold : k - hold] = 1
            code[k - hold :] = 2
            dest = offsets[rows][:, None] + np.arange(k)
            items[dest] = self.sorted_to_item[picks]
            splits[dest] = code
        users = np.repeat(np.arange(lo, hi, dtype=np.int64), counts)
        return users, items, splits


# --------------------------------------------------------------------------------------------
# writing


def _open_writer(fs: Any, path: str, schema: pa.Schema, stack: list, **kwargs: Any) -> pq.ParquetWriter:
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return pq.ParquetWriter(path, schema, **kwargs)
    f = fs.open(path, "wb")
    stack.append(f)
    return pq.ParquetWriter(f, schema, **kwargs)


def _write_parquet(fs: Any, path: str, schema: pa.Schema, tables: Any, **kwargs: Any) -> None:
    """Write an iterable of tables (each written with ``write_table``) as one Parquet file."""
    stack: list = []
    try:
        w = _open_writer(fs, path, schema, stack, **kwargs)
        try:
            for t, rg in tables:
                w.write_table(t, row_group_size=rg)
        finally:
            w.close()
    finally:
        for f in stack:
            f.close()


def _clear(fs: Any, folder: str) -> None:
    fs.makedirs(folder, exist_ok=True)
    old = sorted(fs.glob(posixpath.join(folder, "part-*.parquet")))
    if old:
        fs.rm(old)


def _part(k: int, n: int) -> str:
    return f"part-{k:0{max(5, len(str(max(n - 1, 0))))}d}.parquet"


def _spec_version(spec: StreamSpec) -> str:
    blob = json.dumps(asdict(spec)).encode()
    return f"stream{STREAM_GENERATOR_VERSION}-seed{spec.seed}-{hashlib.sha256(blob).hexdigest()[:12]}"


def _write_features(fs: Any, path: str, model: StreamModel, say: Callable[[str], None]) -> None:
    spec = model.spec
    I, d, du = spec.n_items, spec.latent_dim, spec.unique_dim
    np_dtype = np.float16 if spec.feature_dtype == "float16" else np.float32
    pa_dtype = pa.float16() if spec.feature_dtype == "float16" else pa.float32()
    n_shards = -(-I // spec.items_per_shard)
    id_base, id_step = (10**6, 7) if spec.sparse_ids else (0, 1)
    for mi, m in enumerate(model.mods):
        dim = int(spec.modalities[m])
        A = _rng(spec, _RNG_FEATURE_MAP, mi).standard_normal((d + du, dim), dtype=np.float32)
        A /= np.float32(math.sqrt(d + du))
        folder = posixpath.join(path, "features", m)
        _clear(fs, folder)
        schema = pa.schema([("item_id", pa.int64()), ("embedding", pa.list_(pa_dtype, dim))])
        t0 = time.perf_counter()
        for k in range(n_shards):
            lo, hi = k * spec.items_per_shard, min(I, (k + 1) * spec.items_per_shard)
            rng = _rng(spec, _RNG_FEATURE_NOISE, mi, k)

            def groups(lo: int = lo, hi: int = hi, rng: np.random.Generator = rng, A: np.ndarray = A):
                for a in range(lo, hi, spec.row_group_size):
                    b = min(hi, a + spec.row_group_size)
                    x = np.concatenate([model.zi[a:b], model.vi[m][a:b]], axis=1) @ A
                    x += np.float32(spec.feature_noise) * rng.standard_normal((b - a, dim), dtype=np.float32)
                    vals = pa.array(x.astype(np_dtype, copy=False).reshape(-1), pa_dtype)
                    ids = pa.array(id_base + id_step * np.arange(a, b, dtype=np.int64), pa.int64())
                    yield pa.Table.from_arrays([ids, pa.FixedSizeListArray.from_arrays(vals, dim)], schema=schema), b - a

            _write_parquet(fs, posixpath.join(folder, _part(k, n_shards)), schema, groups(), use_dictionary=False)
        say(f"features[{m}]: {I} x {dim} in {n_shards} shard(s), {time.perf_counter() - t0:.1f}s")


def write_stream(
    spec: StreamSpec, root: str, s3_endpoint_url: str = "", progress: Callable[[str], None] | None = print
) -> str:
    """Generate ``spec`` chunk by chunk into ``root`` (local path, ``file://`` or ``s3://``).

    Memory: the item latents plus one user chunk's interactions and candidate blocks (~ a few
    hundred MB at 2M x 200k x 50M with the default chunk size), independent of n_users and
    n_interactions. ``dataset.json`` is written last with the exact counts.
    """
    say = progress or (lambda _msg: None)
    _check_spec(spec)
    t_start = time.perf_counter()
    fs, path = make_filesystem(root, s3_endpoint_url)
    fs.makedirs(path, exist_ok=True)
    meta_path = posixpath.join(path, "dataset.json")
    if fs.exists(meta_path):
        fs.rm(meta_path)  # never pair an old dataset.json with half-written new shards

    model = StreamModel(spec)
    say(f"latents: {spec.n_items} items in {spec.n_clusters} clusters ({time.perf_counter() - t_start:.1f}s)")
    _write_features(fs, path, model, say)

    ifolder = posixpath.join(path, "interactions")
    _clear(fs, ifolder)
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("split", pa.int8())])
    uid_base, uid_step, iid_base, iid_step = (1000, 3, 10**6, 7) if spec.sparse_ids else (0, 1, 0, 1)
    n_chunks = model.n_chunks
    total, split_counts = 0, np.zeros(3, dtype=np.int64)
    t0 = time.perf_counter()
    for c in range(n_chunks):
        users, items, splits = model.sample_chunk(c)
        total += users.size
        split_counts += np.bincount(splits, minlength=3)
        table = pa.Table.from_arrays(
            [
                pa.array(uid_base + uid_step * users if spec.sparse_ids else users, pa.int64()),
                pa.array(iid_base + iid_step * items if spec.sparse_ids else items, pa.int64()),
                pa.array(splits, pa.int8()),
            ],
            schema=schema,
        )
        del users, items, splits
        _write_parquet(fs, posixpath.join(ifolder, _part(c, n_chunks)), schema, [(table, None)])
        del table
        dt = time.perf_counter() - t0
        say(f"interactions chunk {c + 1}/{n_chunks}: {total} rows, {total / max(dt, 1e-9):,.0f} rows/s")

    meta = DatasetMeta(
        name=spec.name,
        version=_spec_version(spec),
        n_users=spec.n_users,
        n_items=spec.n_items,
        n_interactions=int(total),
        modalities={m: int(spec.modalities[m]) for m in model.mods},
        splits={name: int(split_counts[k]) for k, name in enumerate(SPLIT_NAMES)},
    )
    with fs.open(meta_path, "wb") as f:
        f.write((json.dumps(meta.to_dict(), indent=2) + "\n").encode("utf-8"))
    fs.invalidate_cache()
    say(
        f"wrote {root}: {meta.n_users} users, {meta.n_items} items, {meta.n_interactions} interactions "
        f"(requested {spec.n_interactions}) in {time.perf_counter() - t_start:.1f}s"
    )
    return root


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m sea_dist.data.synthetic_stream --users N --items N --interactions N --out ROOT``."""
    p = argparse.ArgumentParser(
        prog="python -m sea_dist.data.synthetic_stream",
        description="Write a large seeded synthetic catalog (planted structure) in bounded memory.",
    )
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--interactions", type=int, required=True)
    p.add_argument("--out", required=True, help="dataset root: local path, file:// or s3:// URI")
    p.add_argument("--image-dim", type=int, default=64)
    p.add_argument("--text-dim", type=int, default=32)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--name", default="synthetic-catalog")
    p.add_argument("--feature-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--users-per-chunk", type=int, default=100_000)
    p.add_argument("--items-per-shard", type=int, default=50_000)
    p.add_argument("--sparse-ids", action="store_true")
    p.add_argument("--s3-endpoint-url", default="")
    a = p.parse_args(argv)
    spec = StreamSpec(
        n_users=a.users,
        n_items=a.items,
        n_interactions=a.interactions,
        modalities={"image": a.image_dim, "text": a.text_dim},
        seed=a.seed,
        name=a.name,
        users_per_chunk=a.users_per_chunk,
        items_per_shard=a.items_per_shard,
        feature_dtype=a.feature_dtype,
        sparse_ids=a.sparse_ids,
    )
    t0 = time.perf_counter()
    try:
        write_stream(spec, a.out, a.s3_endpoint_url, progress=lambda s: print(f"[{time.perf_counter() - t0:6.1f}s] {s}", flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
