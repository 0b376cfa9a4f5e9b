"""Streaming synthetic catalog generator: catalog-size tiers in bounded memory.

:mod:`sea_dist.sources.synthetic` builds everything in memory and samples every user against every
item (exact, but ``users x items`` work): right for the default and Baby-like tiers, hopeless
for the "large, this machine" tier of docs/design.md, "Scale tiers" (2M users x 200k items x 50M interactions).
This module generates the *same kind* of planted structure chunk by chunk and writes it straight
into the data contract, local or ``s3://``::

    python -m sea_dist.sources.synthetic --users 2000000 --items 200000 \\
        --interactions 50000000 --out s3://bucket/catalog      # routed here (> 1M interactions)

or from Python: ``write_stream(StreamSpec(2_000_000, 200_000, 50_000_000), "s3://b/catalog")``
(:mod:`sea_dist.sources.stream_writer`; the spec is :mod:`sea_dist.sources.stream_spec`).

The model keeps the in-memory generator's ingredients (:class:`~sea_dist.sources.synthetic.SyntheticSpec`:
Gaussian cluster latents shared by interactions and features, modality-unique latents, mild
popularity, log-normal counts, MMRec splits) and adds what makes its signal independent of the
catalogue size: **clusters of a fixed size and per-user interests**. The in-memory sampler
scores every user against every item; at 200k items the softmax mass of any user spreads over
so many items that held-out items become unpredictable (the first version of this module did
the same through a candidate sampler: valid Recall@20 of an oracle fell from 0.31 at 2k items
to 0.04 at 20k). Here a user's world is a bounded neighbourhood, the same at every size:

* items: ``n_clusters = n_items / items_per_cluster`` clusters (100 items each by default, as
  the bundled 2,000-item / 20-cluster dataset); shared latent ``z_i = centre[c_i] +
  cluster_std * noise`` (``latent_dim``), one unique latent ``v_im ~ N(0, I)`` (``unique_dim``)
  per modality, log-popularity ``pop_i ~ N(0, popularity_std^2)``. Held in memory for the run
  (``n_items x (latent_dim + M*unique_dim + 1)`` float32: 26 MB for 200k items);
* related clusters: each cluster's ``cluster_neighbours`` nearest centres (dot product) among
  ``cluster_pool`` random others. The pool keeps the neighbourhood geometry of a 20-cluster
  catalogue whatever the number of clusters (the nearest of 2,000 centres in 16 dimensions
  would be far closer than the nearest of 20, blurring a user's interests together);
* users, generated per chunk of ``users_per_chunk``: own cluster ``c_u`` (uniform), ``z_u =
  centre[c_u] + ...``, unique tastes ``q_um = unique_centre_m[c_u] + ...``; logit of (u, i) =
  ``affinity_scale * (z_u.z_i/sqrt(d) + unique_weight * sum_m q_um.v_im/sqrt(du)) + pop_i``
  (as the in-memory generator);
* interests: the own cluster and the user's favourite related clusters (ordered by its affinity
  to their centres plus Gumbel noise), ``n_interests`` of them, more for heavy users (enough to
  hold ``oversample`` x its count);
* counts: skewed (log-normal) per user, in ``[min_per_user, n_items // 2]``; each chunk gets
  its exact share of ``n_interactions`` (so the total is exact unless the caps bind; the real
  total is what ``dataset.json`` records);
* each user draws ``k`` distinct items with ``p ∝ exp(logit)`` without replacement (Gumbel
  top-k) from its candidates: every item of its interest clusters plus ``explore_items``
  uniform draws from the whole catalogue (the long tail), each standing for ``tail_items /
  explore_items`` items (``+ log`` of that on its logit), so the tail's pull is the same at
  every size. With the defaults, on the bundled dataset's shape (5k x 2k x 75k) a user's items
  fall 50% in its own cluster, 72% in its top five clusters (in-memory generator: 52%, 77%),
  and popularity, feature-profile and item co-occurrence baselines match the bundled
  dataset's within 6%; at 4x the catalogue they keep 80-86% of it while popularity falls
  (``tests/unit/test_synthetic_stream.py``). Users whose count needs more clusters than their
  neighbourhood holds, or whose clusters are too small, draw from every item exactly (tiny
  catalogues, very heavy users);
* splits as MMRec (and :func:`~sea_dist.sources.synthetic.mmrec_split`): each user's items in a
  random order, ``n < 10``: ``n-2/1/1``, else valid = test = ``round_half_up(0.1 n)``;
* features: per modality, ``[z_i, v_im] @ A_m + feature_noise * noise``, generated and written
  one row group at a time (so a 4096-d modality never needs more than a row group in memory).

Cost: about ``(1 + cluster_neighbours) * items_per_cluster`` scores per user (users of one
cluster are scored together against its neighbourhood); memory is the item latents plus one
chunk's interactions and bounded score blocks, independent of ``n_users`` and
``n_interactions``.

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

import math
from typing import Iterator

import numpy as np

from sea_dist.sources.spec_checks import count_cap
from sea_dist.sources.stream_spec import (
    RNG_FEATURE_MAP,
    RNG_FEATURE_NOISE,
    RNG_ITEMS,
    RNG_USERS,
    StreamSpec,
    check_stream_spec,
    n_clusters,
    stream_rng,
)

__all__ = ["StreamModel", "feature_groups", "feature_matrix"]

_BLOCK_CANDIDATES = 1 << 18  # candidate scores per block of one cluster's users: bounds the temporaries
_DENSE_BLOCK_SCORES = 1 << 22  # users x items scores per block on the exact path (16 MB)


def _related_clusters(rng: np.random.Generator, centres: np.ndarray, pool: int, m: int) -> np.ndarray:
    """[K, m] each cluster's related clusters, best first: the m of ``pool`` other clusters
    (drawn at random, all others when K <= pool + 1) whose centres have the highest dot product
    with its own.

    Why a pool and not the m nearest of all K: in a 16-d latent space the nearest of 2,000
    centres are much closer than the nearest of 20, so a user's interests would blur together
    as the catalogue grows. Choosing among a fixed-size pool gives every catalogue the
    neighbourhood geometry of a ``pool + 1``-cluster one (the bundled dataset has 20).
    """
    K = centres.shape[0]
    pool = min(pool, K - 1)
    m = min(m, pool)
    if m <= 0:
        return np.empty((K, 0), dtype=np.int64)
    if pool == K - 1:
        cand = np.broadcast_to(np.arange(K - 1), (K, K - 1)).copy()
    else:  # distinct draws from the K - 1 others: redraw the rows that repeat one (rare)
        cand = np.sort(rng.integers(0, K - 1, (K, pool)), axis=1)
        while True:
            bad = np.flatnonzero((cand[:, 1:] == cand[:, :-1]).any(axis=1))
            if not bad.size:
                break
            cand[bad] = np.sort(rng.integers(0, K - 1, (bad.size, pool)), axis=1)
    cand += cand >= np.arange(K)[:, None]  # skip the cluster itself
    s = np.einsum("kd,kpd->kp", centres, centres[cand])
    top = np.argsort(-s, axis=1, kind="stable")[:, :m]
    return np.take_along_axis(cand, top, axis=1)


class StreamModel:
    """The planted structure: item latents and cluster graph (held), user latents (per chunk).

    Public so tests and diagnostics can score (user, item) pairs of a written dataset
    (:meth:`affinity`) without the generator keeping anything but the items in memory.
    """

    def __init__(self, spec: StreamSpec):
        check_stream_spec(spec)
        self.spec = spec
        rng = stream_rng(spec, RNG_ITEMS)
        I, K, d, du = spec.n_items, n_clusters(spec), spec.latent_dim, spec.unique_dim
        self.n_clusters = K
        self.mods = list(spec.modalities)
        f32 = np.float32
        self.centres = rng.standard_normal((K, d), dtype=f32)
        self.unique_centres = {m: rng.standard_normal((K, du), dtype=f32) for m in self.mods}
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
        # rows sorted by cluster: a cluster's items are one contiguous block of positions
        self.sorted_to_item = np.argsort(self.item_cluster, kind="stable").astype(np.int64)
        self.item_vec_sorted = np.ascontiguousarray(item_vec[self.sorted_to_item])
        del item_vec
        self.cluster_of_pos = self.item_cluster[self.sorted_to_item].astype(np.int32)
        self.cluster_size = np.bincount(self.item_cluster, minlength=K).astype(np.int64)
        self.cluster_start = np.concatenate([[0], np.cumsum(self.cluster_size)[:-1]]).astype(np.int64)
        # where a user's other interests come from: its cluster's related clusters
        self.neighbours = _related_clusters(rng, self.centres, spec.cluster_pool, spec.cluster_neighbours)

    @property
    def tail_bonus(self) -> float:
        """Log-weight of each tail draw: the ``explore_items`` draws stand for ``tail_items``
        items outside a user's interests, whatever this catalogue's size (a tail weighted by the
        real catalogue would swamp the interests at catalogue scale: the old generator's flaw)."""
        spec = self.spec
        if not spec.explore_items or not spec.tail_items:
            return 0.0
        return float(math.log(spec.tail_items / spec.explore_items))

    @property
    def n_chunks(self) -> int:
        return -(-self.spec.n_users // self.spec.users_per_chunk)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        lo = chunk * self.spec.users_per_chunk
        return lo, min(self.spec.n_users, lo + self.spec.users_per_chunk)

    def _user_latents(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(clusters, user_vec [n, D]) of a chunk: the first draws of the chunk's stream."""
        spec, f32 = self.spec, np.float32
        d, du = spec.latent_dim, spec.unique_dim
        cl = rng.integers(0, self.n_clusters, n)
        parts = [self.centres[cl] + f32(spec.cluster_std) * rng.standard_normal((n, d), dtype=f32)]
        for m in self.mods:
            parts.append(self.unique_centres[m][cl] + f32(spec.cluster_std) * rng.standard_normal((n, du), dtype=f32))
        parts.append(np.ones((n, 1), dtype=f32))
        return cl, np.concatenate(parts, axis=1).astype(f32)

    def user_clusters(self, chunk: int) -> np.ndarray:
        """Own cluster of each of a chunk's users."""
        lo, hi = self.chunk_bounds(chunk)
        return self._user_latents(stream_rng(self.spec, RNG_USERS, chunk), hi - lo)[0]

    def user_vectors(self, chunk: int) -> np.ndarray:
        """user_vec [n, D] of a chunk's users (regenerated from the chunk's random stream)."""
        lo, hi = self.chunk_bounds(chunk)
        return self._user_latents(stream_rng(self.spec, RNG_USERS, chunk), hi - lo)[1]

    def interests(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """(clusters [n, 1 + m] in each user's interest order, own first; how many it draws
        from [n]) of a chunk's users: replays the chunk's stream as :meth:`sample_chunk` does.
        A count above ``1 + m`` means the user draws from the whole catalogue."""
        lo, hi = self.chunk_bounds(chunk)
        rng = stream_rng(self.spec, RNG_USERS, chunk)
        cl, uvec = self._user_latents(rng, hi - lo)
        counts = self._counts(rng, lo, hi)
        rank = self._interest_ranks(rng, cl, uvec)
        slots = np.concatenate([cl[:, None], self.neighbours[cl]], axis=1)
        ordered = np.empty_like(slots)
        np.put_along_axis(ordered, rank, slots, axis=1)
        return ordered, self._n_interests(counts)

    def _n_interests(self, counts: np.ndarray) -> np.ndarray:
        """Interest clusters per user: enough to hold ``oversample`` x its count."""
        spec = self.spec
        per_cluster = spec.n_items / self.n_clusters
        return np.maximum(spec.n_interests, np.ceil(spec.oversample * counts / per_cluster)).astype(np.int64)

    def item_vectors(self) -> np.ndarray:
        """item_vec [n_items, D] in item order (a copy: n_items x D float32)."""
        out = np.empty_like(self.item_vec_sorted)
        out[self.sorted_to_item] = self.item_vec_sorted
        return out

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

    def _interest_ranks(self, rng: np.random.Generator, cl: np.ndarray, uvec: np.ndarray) -> np.ndarray:
        """[n, 1 + m] rank of each slot of a user's cluster (slot 0 itself, slot 1 + s its s-th
        related cluster) in the order the user takes them as interests: its own first, then the
        related ones by the user's affinity to their centres (+ Gumbel noise), so two users of
        one cluster share their first interest and differ in the rest."""
        spec = self.spec
        nb = self.neighbours[cl]  # [n, m]
        n, m = nb.shape
        d = spec.latent_dim
        s = np.einsum("nd,nmd->nm", uvec[:, :d], self.centres[nb]) * np.float32(spec.affinity_scale / math.sqrt(d))
        s += self._gumbel(rng, s.shape)
        rank = np.zeros((n, m + 1), dtype=np.int64)
        np.put_along_axis(rank[:, 1:], np.argsort(-s, axis=1, kind="stable"), np.arange(1, m + 1)[None, :], axis=1)
        return rank

    def _gumbel(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        e = rng.standard_exponential(shape, dtype=np.float32)
        np.maximum(e, np.finfo(np.float32).tiny, out=e)  # float32 draws can be exactly 0
        return -np.log(e)

    def _top_sorted(self, scores: np.ndarray, k: int) -> np.ndarray:
        """[n, k] column indices of each row's k highest scores, highest first."""
        if k < scores.shape[1]:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)

    def _sample_exact(self, rng: np.random.Generator, uvec: np.ndarray, kmax: int) -> np.ndarray:
        """[n, kmax] positions, best first: Gumbel top-k against every item (heavy users)."""
        I = self.spec.n_items
        out = np.empty((uvec.shape[0], kmax), dtype=np.int64)
        step = max(1, _DENSE_BLOCK_SCORES // I)
        for b in range(0, uvec.shape[0], step):
            s = uvec[b : b + step] @ self.item_vec_sorted.T
            s += self._gumbel(rng, s.shape)
            out[b : b + step] = self._top_sorted(s, kmax)
        return out

    def _slot_columns(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slots, positions, slot of each position) of cluster ``c``: the items of ``c`` and
        of its related clusters, the candidates its users' interests are drawn from."""
        slots = np.concatenate([[c], self.neighbours[c]]).astype(np.int64)
        size, start = self.cluster_size[slots], self.cluster_start[slots]
        W = int(size.sum())
        cols = np.repeat(start - np.concatenate([[0], np.cumsum(size)[:-1]]), size) + np.arange(W)
        return slots, cols, np.repeat(np.arange(slots.size), size)

    def _sample_cluster_users(
        self,
        rng: np.random.Generator,
        slot_columns: tuple[np.ndarray, np.ndarray, np.ndarray],
        uvec: np.ndarray,
        rank: np.ndarray,
        n_int: np.ndarray,
        k: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Gumbel top-k for users of one cluster: ([n, kmax] positions best first, #candidates).

        A user's candidates: every item of its ``n_int`` interest clusters (``rank`` [n, slots]
        is the rank of each slot of its cluster in the user's order, see
        :meth:`_interest_ranks`) and ``explore_items`` tail draws, weighted by
        :attr:`tail_bonus` (a draw repeating an item already there is dropped). The users are
        scored against all slots in one product, the clusters a user did not pick masked out.
        """
        spec = self.spec
        slots, cols, slot_of_col = slot_columns
        n, W, X = uvec.shape[0], cols.size, spec.explore_items
        chosen = rank < n_int[:, None]  # [n, slots]
        scores = np.empty((n, W + X), dtype=np.float32)
        # einsum, not matmul: these products are small, and a multithreaded BLAS spends more on
        # waking its threads than on the product (7x slower on a loaded 2-core machine)
        scores[:, :W] = np.einsum("nd,wd->nw", uvec, self.item_vec_sorted[cols])
        valid = np.empty((n, W + X), dtype=bool)
        valid[:, :W] = chosen[:, slot_of_col]
        tail = np.sort(rng.integers(0, spec.n_items, (n, X)), axis=1)
        if X:
            dup = np.zeros(tail.shape, dtype=bool)
            dup[:, 1:] = tail[:, 1:] == tail[:, :-1]
            in_slot = self.cluster_of_pos[tail][:, :, None] == slots[None, None, :]  # [n, X, slots]
            dup |= (in_slot & chosen[:, None, :]).any(axis=2)
            valid[:, W:] = ~dup
            scores[:, W:] = np.einsum("nd,nxd->nx", uvec, self.item_vec_sorted[tail]) + np.float32(self.tail_bonus)
        scores += self._gumbel(rng, scores.shape)
        scores[~valid] = -np.inf
        top = self._top_sorted(scores, min(int(k.max()), W + X))
        in_tail = top >= W
        picks = cols[np.where(in_tail, 0, top)]
        picks[in_tail] = np.take_along_axis(tail, np.where(in_tail, top - W, 0), axis=1)[in_tail]
        return picks, valid.sum(axis=1)

    def sample_chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, items, splits) of one user chunk: dense indices, grouped by user."""
        spec = self.spec
        lo, hi = self.chunk_bounds(chunk)
        n = hi - lo
        rng = stream_rng(spec, RNG_USERS, chunk)
        cl, uvec = self._user_latents(rng, n)
        counts = self._counts(rng, lo, hi)
        rank = self._interest_ranks(rng, cl, uvec)
        m = rank.shape[1] - 1
        n_int = self._n_interests(counts)  # more than the neighbourhood: the whole catalogue
        offsets = np.concatenate([[0], np.cumsum(counts)])
        items = np.full(int(offsets[-1]), -1, dtype=np.int64)
        splits = np.empty(items.size, dtype=np.int8)

        def place(rows: np.ndarray, picks: np.ndarray) -> None:
            """MMRec split: each user's k picks in a random order, then train / valid / test."""
            k = counts[rows]
            col = np.arange(picks.shape[1])[None, :]
            keep = col < k[:, None]
            shuffle = np.argsort(np.where(keep, rng.random(picks.shape), 2.0), axis=1)
            picks = np.take_along_axis(picks, shuffle, axis=1)
            hold = np.where(k < 10, 1, np.floor(0.1 * k + 0.5)).astype(np.int64)[:, None]
            code = np.where(col < k[:, None] - 2 * hold, 0, np.where(col < k[:, None] - hold, 1, 2)).astype(np.int8)
            dest = (offsets[rows][:, None] + col)[keep]
            items[dest] = self.sorted_to_item[picks[keep]]
            splits[dest] = code[keep]

        whole = n_int > m + 1
        local = np.flatnonzero(~whole)
        by_cluster = local[np.argsort(cl[local], kind="stable")]
        bounds = np.flatnonzero(np.diff(cl[by_cluster])) + 1
        short: list[np.ndarray] = [np.flatnonzero(whole)]
        for users_of_c in np.split(by_cluster, bounds) if by_cluster.size else []:
            slot_columns = self._slot_columns(int(cl[users_of_c[0]]))
            step = max(1, _BLOCK_CANDIDATES // (slot_columns[1].size + spec.explore_items))
            for b in range(0, users_of_c.size, step):  # bounded temporaries in few-cluster catalogues
                rows = users_of_c[b : b + step]
                picks, n_valid = self._sample_cluster_users(
                    rng, slot_columns, uvec[rows], rank[rows], n_int[rows], counts[rows]
                )
                ok = n_valid >= counts[rows]  # tiny clusters: the whole catalogue instead
                if ok.any():
                    place(rows[ok], picks[ok])
                short.append(rows[~ok])
        rest = np.sort(np.concatenate(short))
        for b in range(0, rest.size, 4096):
            rows = rest[b : b + 4096]
            place(rows, self._sample_exact(rng, uvec[rows], int(counts[rows].max())))
        users = np.repeat(np.arange(lo, hi, dtype=np.int64), counts)
        return users, items, splits


def _feature_map(model: StreamModel, mi: int) -> np.ndarray:
    """Modality ``mi``'s random linear map ``[z_i, v_im] -> features``."""
    spec = model.spec
    d, du = spec.latent_dim, spec.unique_dim
    A = stream_rng(spec, RNG_FEATURE_MAP, mi).standard_normal((d + du, int(spec.modalities[model.mods[mi]])), dtype=np.float32)
    A /= np.float32(math.sqrt(d + du))
    return A


def feature_groups(model: StreamModel, mi: int, shard: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first item, end, float32 rows) of each row group of modality ``mi``'s feature ``shard``."""
    spec = model.spec
    m = model.mods[mi]
    A = _feature_map(model, mi)
    rng = stream_rng(spec, RNG_FEATURE_NOISE, mi, shard)
    lo, hi = shard * spec.items_per_shard, min(spec.n_items, (shard + 1) * spec.items_per_shard)
    for a in range(lo, hi, spec.row_group_size):
        b = min(hi, a + spec.row_group_size)
        x = np.concatenate([model.zi[a:b], model.vi[m][a:b]], axis=1) @ A
        x += np.float32(spec.feature_noise) * rng.standard_normal((b - a, A.shape[1]), dtype=np.float32)
        yield a, b, x


def feature_matrix(model: StreamModel, mi: int) -> np.ndarray:
    """All of modality ``mi``'s features as written (float32, before any float16 cast): for
    tests and diagnostics; the writer never holds more than a row group."""
    n_shards = -(-model.spec.n_items // model.spec.items_per_shard)
    return np.concatenate([x for k in range(n_shards) for _, _, x in feature_groups(model, mi, k)])
