"""The synthetic generator: determinism, MMRec split rules, planted structure, caching, CLI."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from sea_dist.sources import synthetic as syn
from sea_dist.data.dataset import load_dataset
from sea_dist.sources.synthetic import DEFAULT_SPEC, SyntheticSpec, generate, generate_full, mmrec_split

SMALL = SyntheticSpec(n_users=300, n_items=200, n_interactions=4000, modalities={"image": 16, "text": 8}, seed=7, name="small")


@pytest.fixture(scope="module")
def default_data() -> syn.SyntheticData:
    return generate_full(DEFAULT_SPEC)


def _contiguous(data: syn.SyntheticData) -> tuple[np.ndarray, np.ndarray]:
    users = (data.users_raw - syn.USER_ID_BASE) // syn.USER_ID_STEP
    items = (data.items_raw - syn.ITEM_ID_BASE) // syn.ITEM_ID_STEP
    return users, items


def test_same_seed_same_arrays_other_seed_differs() -> None:
    a, b = generate(SMALL), generate(SMALL)
    assert a[0] == b[0]
    for x, y in zip(a[1:4], b[1:4]):
        np.testing.assert_array_equal(x, y)
    for m in SMALL.modalities:
        np.testing.assert_array_equal(a[4][m], b[4][m])
    np.testing.assert_array_equal(a[5], b[5])
    c = generate(SyntheticSpec(**{**SMALL.__dict__, "seed": 8}))
    assert not np.array_equal(a[2], c[2])


def test_default_tier_shape_and_contract(default_data: syn.SyntheticData) -> None:
    d, spec = default_data, DEFAULT_SPEC
    users, items = _contiguous(d)
    assert d.meta.n_users == spec.n_users and d.meta.n_items == spec.n_items
    assert d.users_raw.size == spec.n_interactions == d.meta.n_interactions
    assert d.meta.modalities == {"image": 256, "text": 128}
    assert sum(d.meta.splits.values()) == spec.n_interactions
    assert d.meta.splits["train"] > 0.75 * spec.n_interactions  # ~60k train, as docs/design.md's default tier
    # raw ids are not contiguous, interactions are not grouped by user
    assert set(np.unique(d.users_raw) % 3) == {1} and d.users_raw.min() == 1000
    assert (d.item_raw_ids == 10**6 + 7 * np.arange(spec.n_items)).all()
    assert not (np.diff(d.users_raw) >= 0).all()
    # every user has >= 5 distinct items; no duplicate pairs; some skew
    per_user = np.bincount(users, minlength=spec.n_users)
    assert per_user.min() >= 5 and per_user.max() > 4 * np.median(per_user)
    assert np.unique(users * spec.n_items + items).size == users.size
    for m, dim in spec.modalities.items():
        f = d.features[m]
        assert f.shape == (spec.n_items, dim) and f.dtype == np.float32 and np.isfinite(f).all()


def test_mmrec_split_hand_checked() -> None:
    # users with 5, 10, 15 and 25 interactions
    counts = np.array([5, 10, 15, 25])
    users = np.repeat(np.arange(4), counts)
    splits = mmrec_split(np.random.default_rng(0), users, 4)
    table = np.stack([np.bincount(users[splits == s], minlength=4) for s in (0, 1, 2)], axis=1)
    # n<10: n-2/1/1; else valid = test = round_half_up(0.1 n): 1, 2 (1.5 -> 2), 3 (2.5 -> 3)
    assert table.tolist() == [[3, 1, 1], [8, 1, 1], [11, 2, 2], [19, 3, 3]]
    # the held-out rows are a random pick, not the last rows of each user
    other = mmrec_split(np.random.default_rng(1), users, 4)
    assert not np.array_equal(splits, other)


def test_split_rules_hold_for_every_user(default_data: syn.SyntheticData) -> None:
    d = default_data
    users, _ = _contiguous(d)
    U = DEFAULT_SPEC.n_users
    n = np.bincount(users, minlength=U)
    got = [np.bincount(users[d.splits == s], minlength=U) for s in (0, 1, 2)]
    hold = np.where(n < 10, 1, np.floor(0.1 * n + 0.5)).astype(np.int64)
    np.testing.assert_array_equal(got[1], hold)
    np.testing.assert_array_equal(got[2], hold)
    np.testing.assert_array_equal(got[0], n - 2 * hold)
    small = n < 10
    assert small.any() and (got[0][small] == n[small] - 2).all()


def test_planted_structure_beats_popularity(default_data: syn.SyntheticData) -> None:
    """Held-out items score high on the planted affinity, and — what SEA actually sees — a
    naive feature-based ranking already beats popularity by a wide margin."""
    d = default_data
    U, I = DEFAULT_SPEC.n_users, DEFAULT_SPEC.n_items
    users, items = _contiguous(d)
    train, test = d.splits == 0, d.splits == 2

    rng = np.random.default_rng(0)
    rand_items = rng.integers(0, I, test.sum())
    held = d.affinity(users[test], items[test]).mean()
    rand = d.affinity(users[test], rand_items).mean()
    assert held > rand + 1.0, (held, rand)

    def recall_at_20(scores: np.ndarray) -> float:
        scores = scores.astype(np.float64)
        scores[users[train], items[train]] = -np.inf  # MMRec masks training items
        top = np.argpartition(-scores, 20, axis=1)[:, :20]
        in_top = np.zeros((U, I), dtype=bool)
        np.put_along_axis(in_top, top, True, axis=1)
        hits = np.bincount(users[test], weights=in_top[users[test], items[test]], minlength=U)
        return float((hits / np.maximum(np.bincount(users[test], minlength=U), 1)).mean())

    popularity = np.bincount(items[train], minlength=I).astype(np.float64)
    r_pop = recall_at_20(np.broadcast_to(popularity, (U, I)).copy())
    r_latent = recall_at_20(d.user_latent @ d.item_latent.T)
    f = d.features["image"] / np.linalg.norm(d.features["image"], axis=1, keepdims=True)
    profile = np.zeros((U, f.shape[1]), dtype=np.float32)
    np.add.at(profile, users[train], f[items[train]])
    r_feat = recall_at_20(profile @ f.T)
    assert r_latent > 4 * r_pop, (r_latent, r_pop)
    assert r_feat > 2 * r_pop, (r_feat, r_pop)
    assert r_latent > r_feat  # features are a noisy view: there is something left to learn


def test_write_synthetic_round_trip(tmp_path: Path) -> None:
    data = generate_full(SMALL)
    root = syn.write_synthetic(SMALL, str(tmp_path / "ds"), items_per_shard=64, interactions_per_shard=1500, feature_dtype="float16")
    ds = load_dataset(root)
    assert ds.meta == data.meta
    np.testing.assert_array_equal(ds.user_raw_ids, np.unique(data.users_raw))
    np.testing.assert_array_equal(ds.item_raw_ids, data.item_raw_ids)
    np.testing.assert_array_equal(ds.user_raw_ids[ds.users], data.users_raw)
    np.testing.assert_array_equal(ds.item_raw_ids[ds.items], data.items_raw)
    np.testing.assert_array_equal(ds.features["text"], data.features["text"].astype(np.float16).astype(np.float32))


def test_baby_tier_generates_quickly() -> None:
    spec = SyntheticSpec(n_users=19000, n_items=7000, n_interactions=160000, modalities={"image": 4096, "text": 384})
    d = generate_full(spec)
    users, _ = _contiguous(d)
    assert d.users_raw.size == 160000
    assert np.bincount(users, minlength=19000).min() >= 5
    assert d.features["image"].shape == (7000, 4096)
    assert all(v > 0 for v in d.meta.splits.values())


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        generate(SyntheticSpec(n_users=10, n_items=20, n_interactions=60, modalities={"image": 3}))
    with pytest.raises(ValueError, match="min_per_user"):
        generate(SyntheticSpec(n_users=10, n_items=20, n_interactions=40))
    with pytest.raises(ValueError, match="exceeds"):
        generate(SyntheticSpec(n_users=10, n_items=20, n_interactions=150))


def test_default_dataset_root_is_cached_and_race_safe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEA_DIST_CACHE", str(tmp_path / "cache"))
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(syn.default_dataset_root(SMALL))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(results)) == 1
    root = results[0]
    assert root.startswith(str(tmp_path / "cache"))
    assert f"gen{syn.GENERATOR_VERSION}" in os.path.basename(root)
    assert os.listdir(os.path.dirname(root)) == [os.path.basename(root)]  # no tmp dirs left
    assert load_dataset(root).meta == generate_full(SMALL).meta

    # present: returned without regenerating
    monkeypatch.setattr(syn, "write_synthetic", lambda *a, **k: pytest.fail("regenerated"))
    assert syn.default_dataset_root(SMALL) == root


def test_default_dataset_root_default_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEA_DIST_CACHE", str(tmp_path))
    ds = load_dataset(syn.default_dataset_root())
    assert ds.meta.name == "synthetic-default" and ds.meta.n_interactions == 75000


def test_cli_writes_a_loadable_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = syn.main(["--users", "50", "--items", "40", "--interactions", "400", "--out", str(out), "--image-dim", "8", "--text-dim", "4", "--seed", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "interactions: 400 sampled" in printed and f"wrote {out}" in printed
    ds = load_dataset(str(out))
    assert ds.meta.modalities == {"image": 8, "text": 4} and ds.meta.n_users == 50
    assert syn.main(["--users", "50", "--items", "40", "--interactions", "10", "--out", str(tmp_path / "x")]) == 2
