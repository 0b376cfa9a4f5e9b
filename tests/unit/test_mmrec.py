"""MMRec import: the split is kept row for row, features and modality order survive, and every
malformed input fails with an error naming the file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sea_dist.sources import mmrec, mmrec_inter
from sea_dist.data.dataset import load_dataset
from sea_dist.sources.mmrec_inter import MMRecError
from sea_dist.sources.mmrec import import_mmrec

from tests.conftest import MOTO_BUCKET

N_USERS, N_ITEMS = 30, 20
IMAGE_DIM, TEXT_DIM = 4096, 384  # MMRec's real dims (VGG-16 image, sentence-transformers text)


def write_mmrec(
    folder: Path,
    name: str = "toy",
    *,
    image: bool = True,
    text: bool = True,
    extra_items: int = 0,
    seed: int = 0,
) -> dict:
    """A small MMRec-format dataset: ``<name>.inter`` (TAB, header, rating/timestamp columns,
    x_label per user: last two rows valid/test) plus the feature ``.npy`` files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for u in range(N_USERS):
        k = int(rng.integers(4, 9))
        items = rng.choice(N_ITEMS, size=k, replace=False)
        for j, i in enumerate(items):
            label = 0 if j < k - 2 else (1 if j == k - 2 else 2)
            rows.append((u, int(i), int(rng.integers(1, 6)), 1_400_000_000 + int(rng.integers(0, 10**7)), label))
    order = rng.permutation(len(rows))  # MMRec files are not necessarily grouped by user
    rows = [rows[r] for r in order]
    lines = ["userID\titemID\trating\ttimestamp\tx_label"] + ["\t".join(map(str, r)) for r in rows]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    n = N_ITEMS + extra_items
    out = {"rows": rows, "folder": folder}
    if image:
        out["image"] = rng.standard_normal((n, IMAGE_DIM)).astype(np.float32)
        np.save(folder / "image_feat.npy", out["image"])
    if text:
        out["text"] = rng.standard_normal((n, TEXT_DIM)).astype(np.float32)
        np.save(folder / "text_feat.npy", out["text"])
    return out


def _triples(ds) -> list[tuple[int, int, int]]:
    return list(zip(ds.user_raw_ids[ds.users].tolist(), ds.item_raw_ids[ds.items].tolist(), ds.splits.tolist()))


def test_import_keeps_split_features_and_modality_order(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "toy")
    lines: list[str] = []
    root = import_mmrec(str(src["folder"]), progress=lines.append)
    assert root == str(tmp_path / "toy" / "sea_dist")
    ds = load_dataset(root)
    want = [(u, i, x) for u, i, _, _, x in src["rows"]]
    assert _triples(ds) == want  # row for row, in file order
    assert set(_triples(ds)) == set(want)
    assert list(ds.meta.modalities.items()) == [("image", IMAGE_DIM), ("text", TEXT_DIM)]
    np.testing.assert_array_equal(ds.item_raw_ids, np.arange(N_ITEMS))
    np.testing.assert_array_equal(ds.features["image"], src["image"])
    np.testing.assert_array_equal(ds.features["text"], src["text"])
    m = ds.meta
    assert m.name == "toy" and m.version.startswith("mmrec-")
    assert (m.n_users, m.n_items, m.n_interactions) == (N_USERS, N_ITEMS, len(src["rows"]))
    assert m.splits == {"train": sum(r[4] == 0 for r in src["rows"]), "valid": N_USERS, "test": N_USERS}
    with open(os.path.join(root, "dataset.json")) as f:
        assert list(json.load(f)["modalities"]) == ["image", "text"]
    assert any("wrote" in s for s in lines)


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    a = write_mmrec(tmp_path / "a", seed=1)
    b = write_mmrec(tmp_path / "b", name="renamed", seed=1)  # same bytes, other file name
    c = write_mmrec(tmp_path / "c", seed=2)
    va = load_dataset(import_mmrec(str(a["folder"]))).meta.version
    assert load_dataset(import_mmrec(str(b["folder"]))).meta.version == va
    assert load_dataset(import_mmrec(str(a["folder"]), str(tmp_path / "again"))).meta.version == va
    assert load_dataset(import_mmrec(str(c["folder"]))).meta.version != va


def test_only_present_modalities_and_extra_feature_rows(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "t", image=False, extra_items=5)
    ds = load_dataset(import_mmrec(str(src["folder"]), feature_dtype="float16", items_per_shard=7))
    assert ds.meta.modalities == {"text": TEXT_DIM}
    assert ds.meta.n_items == N_ITEMS + 5  # items without interactions are still items
    np.testing.assert_array_equal(ds.features["text"], src["text"].astype(np.float16).astype(np.float32))
    src = write_mmrec(tmp_path / "i", text=False)
    assert load_dataset(import_mmrec(str(src["folder"]))).meta.modalities == {"image": IMAGE_DIM}


def test_inter_read_in_many_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mmrec_inter, "_BLOCK_BYTES", 1024)  # ~35 rows a block: many batches
    src = write_mmrec(tmp_path / "toy")
    inter = mmrec_inter.read_inter(str(src["folder"] / "toy.inter"))
    assert list(zip(inter.users.tolist(), inter.items.tolist(), inter.splits.tolist())) == [
        (u, i, x) for u, i, _, _, x in src["rows"]
    ]
    path = _rewrite_inter(src["folder"], lambda ls: ls[:150] + ["\t" + ls[150].split("\t", 1)[1]] + ls[151:])
    with pytest.raises(MMRecError, match=r"empty userID at data row 150 "):
        mmrec_inter.read_inter(str(path))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_mmrec(tmp_path / "d", name="baby")
    write_mmrec(tmp_path / "d", name="sports", image=False, text=False, seed=3)  # a second .inter
    out = tmp_path / "out"
    assert mmrec.main([str(src["folder"]), "--out", str(out), "--name", "baby"]) == 0
    assert "wrote" in capsys.readouterr().out
    ds = load_dataset(str(out))
    assert ds.meta.name == "baby" and _triples(ds) == [(u, i, x) for u, i, _, _, x in src["rows"]]
    assert mmrec.main([str(src["folder"])]) == 2
    err = capsys.readouterr().err
    assert "several .inter files" in err and "baby.inter" in err and "sports.inter" in err


def test_import_to_s3(tmp_path: Path, moto_s3: str) -> None:
    src = write_mmrec(tmp_path / "toy")
    root = f"s3://{MOTO_BUCKET}/mmrec/toy"
    import_mmrec(str(src["folder"]), root, s3_endpoint_url=moto_s3)
    ds = load_dataset(root, s3_endpoint_url=moto_s3)
    assert _triples(ds) == [(u, i, x) for u, i, _, _, x in src["rows"]]
    np.testing.assert_array_equal(ds.features["image"], src["image"])


# ---- errors: each names the file ----------------------------------------------------------------


def _rewrite_inter(folder: Path, edit) -> Path:
    path = folder / "toy.inter"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


def _expect(folder: Path, *fragments: str, name: str | None = None) -> None:
    with pytest.raises(MMRecError) as e:
        import_mmrec(str(folder), name=name)
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))
    assert not (folder / "sea_dist" / "dataset.json").exists()


def test_missing_inter_file(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "d")
    os.remove(src["folder"] / "toy.inter")
    _expect(src["folder"], str(src["folder"]), "no <name>.inter")


def test_several_inter_files_need_a_name(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "d")
    write_mmrec(tmp_path / "d", name="other", seed=5)  # overwrites the .npy files: same shapes
    _expect(src["folder"], "several .inter files", "other.inter", "toy.inter", "--name")
    _expect(src["folder"], str(src["folder"] / "nope.inter"), "missing", name="nope")
    assert load_dataset(import_mmrec(str(src["folder"]), name="other")).meta.name == "other"


def test_missing_column(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "d")
    path = _rewrite_inter(src["folder"], lambda ls: [ls[0].replace("x_label", "label")] + ls[1:])
    _expect(src["folder"], str(path), "missing column(s) ['x_label']", "'label'")


def test_comma_separated_file_gets_a_hint(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "d")
    path = _rewrite_inter(src["folder"], lambda ls: [line.replace("\t", ",") for line in ls])
    _expect(src["folder"], str(path), "missing column(s)", "TAB-separated")


def test_x_label_outside_range(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "d")
    path = _rewrite_inter(src["folder"], lambda ls: ls[:5] + [ls[5].rsplit("\t", 1)[0] + "\t3"] + ls[6:])
    _expect(src["folder"], str(path), "x_label 3 at data row 5", "outside {0, 1, 2}")


def test_unparsable_and_empty_values(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "d")
    path = _rewrite_inter(src["folder"], lambda ls: ls[:3] + ["abc" + ls[3][ls[3].index("\t"):]] + ls[4:])
    _expect(src["folder"], str(path), "cannot parse", "line 4: userID 'abc' is not an integer")
    src = write_mmrec(tmp_path / "f")
    path = _rewrite_inter(src["folder"], lambda ls: ls[:6] + [ls[6] + "\t9"] + ls[7:])
    _expect(src["folder"], str(path), "cannot parse", "line 7 has 6 fields, the header 5")
    src = write_mmrec(tmp_path / "e")
    path = _rewrite_inter(src["folder"], lambda ls: ls[:3] + [ls[3][ls[3].index("\t"):]] + ls[4:])
    _expect(src["folder"], str(path), "empty userID", "data row 3")


def test_duplicate_rows(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "d")
    path = _rewrite_inter(src["folder"], lambda ls: ls + [ls[7]])  # line 7 = data row 7
    u, i = src["rows"][6][:2]
    _expect(src["folder"], str(path), f"duplicate interaction (userID {u}, itemID {i})", "data rows 7 and")


def test_empty_split(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "d")
    path = _rewrite_inter(src["folder"], lambda ls: [ls[0]] + [l for l in ls[1:] if not l.endswith("\t1")])
    _expect(src["folder"], str(path), "no rows with x_label 1", "valid")


def test_too_few_feature_rows(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "d")
    np.save(src["folder"] / "image_feat.npy", src["image"][: N_ITEMS - 1])
    _expect(src["folder"], str(src["folder"] / "image_feat.npy"), f"{N_ITEMS - 1} feature rows", f"itemID up to {N_ITEMS - 1}")


def test_modalities_disagree_on_rows(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "d", extra_items=2)
    np.save(src["folder"] / "text_feat.npy", src["text"][:N_ITEMS])
    _expect(src["folder"], str(src["folder"] / "text_feat.npy"), "image_feat.npy")


def test_nan_in_features(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "d")
    bad = src["text"].copy()
    bad[13, 100] = np.nan
    np.save(src["folder"] / "text_feat.npy", bad)
    _expect(src["folder"], str(src["folder"] / "text_feat.npy"), "NaN", "row 13", "'text'")


def test_no_modality_file(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "d", image=False, text=False)
    _expect(src["folder"], str(src["folder"]), "no modality feature file", "image_feat.npy", "text_feat.npy")


def test_bad_feature_arrays(tmp_path: Path) -> None:
    src = write_mmrec(tmp_path / "d")
    path = src["folder"] / "image_feat.npy"
    np.save(path, src["image"][:, :-1])
    _expect(src["folder"], str(path), "dim 4095", "even")
    np.save(path, src["image"].reshape(-1))
    _expect(src["folder"], str(path), "2-d")
    np.save(path, np.zeros((N_ITEMS, 4), dtype=np.int64))
    _expect(src["folder"], str(path), "float")
    path.write_bytes(b"not an npy file")
    _expect(src["folder"], str(path), "not a readable .npy")
