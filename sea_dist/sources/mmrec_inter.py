"""MMRec's ``.inter`` file (``userID``, ``itemID``, ``x_label``): finding it, reading it, checking it.

The interaction half of the MMRec importer (:mod:`sea_dist.sources.mmrec`), which adds the
feature files and writes the dataset. Reads in blocks with pyarrow's CSV reader, so a 50M-line
file never exists as Python objects; every error names the file and the line.
"""
from __future__ import annotations

import glob
import os
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from sea_dist.data.meta import SPLIT_NAMES
from sea_dist.storage.errors import DatasetError

__all__ = ["INTER_COLUMNS", "MMRecError", "MMRecInteractions", "find_inter_file", "read_inter", "count_distinct"]

INTER_COLUMNS: tuple[str, str, str] = ("userID", "itemID", "x_label")


_BLOCK_BYTES = 16 << 20  # .inter read block


class MMRecError(DatasetError):
    """The MMRec input breaks the format; the message names the file and the problem."""


class MMRecInteractions:
    """The three columns of a ``.inter`` file, in file order."""

    def __init__(self, path: str, users: np.ndarray, items: np.ndarray, splits: np.ndarray):
        self.path, self.users, self.items, self.splits = path, users, items, splits

    @property
    def n(self) -> int:
        return int(self.users.size)


def find_inter_file(src: str, name: str | None = None) -> tuple[str, str]:
    """(path, dataset name) of the ``.inter`` file in ``src``: ``<name>.inter`` or the only one."""
    if not os.path.isdir(src):
        raise MMRecError(f"{src}: not a directory (expected an MMRec dataset folder)")
    found = sorted(glob.glob(os.path.join(glob.escape(src), "*.inter")))
    if name:
        path = os.path.join(src, f"{name}.inter")
        if not os.path.isfile(path):
            have = ", ".join(os.path.basename(f) for f in found) or "none"
            raise MMRecError(f"{path}: interaction file missing (.inter files in {src}: {have})")
        return path, name
    if not found:
        raise MMRecError(f"{src}: no <name>.inter interaction file (MMRec format: TAB-separated, with a header)")
    if len(found) > 1:
        names = ", ".join(os.path.basename(f) for f in found)
        raise MMRecError(f"{src}: several .inter files ({names}); pick one with --name NAME")
    return found[0], os.path.basename(found[0])[: -len(".inter")]


def _header(path: str) -> list[str]:
    with open(path, "rb") as f:
        line = f.readline()
    text = line.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if not text.strip():
        raise MMRecError(f"{path}: empty file or empty header line (expected a header with {list(INTER_COLUMNS)})")
    # pyarrow unquotes header fields ("userID" -> userID); compare the same names
    return [c[1:-1] if len(c) >= 2 and c[0] == c[-1] == '"' else c for c in text.split("\t")]


def _locate_bad_line(path: str, cols: list[str]) -> str:
    """Error path only: the first line pyarrow could not convert, found with plain Python."""
    want = [cols.index(c) for c in INTER_COLUMNS]
    with open(path, encoding="utf-8", errors="replace") as f:
        next(f, None)
        for line_no, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != len(cols):
                return f"line {line_no} has {len(fields)} fields, the header {len(cols)}"
            for c, k in zip(INTER_COLUMNS, want):
                v = fields[k].strip()
                if v and not (v.lstrip("+-").isdigit()):
                    return f"line {line_no}: {c} {v!r} is not an integer"
    return ""


def read_inter(path: str, progress: Callable[[str], None] | None = None) -> MMRecInteractions:
    """Read and check a ``.inter`` file block by block (only userID, itemID, x_label)."""
    say = progress or (lambda _msg: None)
    cols = _header(path)
    missing = [c for c in INTER_COLUMNS if c not in cols]
    if missing:
        hint = " (is it TAB-separated?)" if len(cols) == 1 and ("," in cols[0] or " " in cols[0]) else ""
        raise MMRecError(f"{path}: missing column(s) {missing} in the header{hint}; found {cols}")
    t0 = time.perf_counter()
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter="\t"),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(INTER_COLUMNS), column_types={c: pa.int64() for c in INTER_COLUMNS}
            ),
        )
    except (pa.ArrowException, OSError) as e:
        where = _locate_bad_line(path, cols)
        raise MMRecError(f"{path}: cannot parse as a TAB-separated .inter file ({where or e})") from e
    users, items, labels = [], [], []
    row = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowException, OSError) as e:
            where = _locate_bad_line(path, cols)
            raise MMRecError(f"{path}: cannot parse as a TAB-separated .inter file ({where or e})") from e
        for c, out in zip(INTER_COLUMNS, (users, items, labels)):
            col = batch.column(c)
            if col.null_count:
                r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise MMRecError(f"{path}: empty {c} at data row {row + r + 1} (1-based, after the header)")
            arr = col.to_numpy()  # a view of the batch's buffer (int64, no nulls); copied below
            if c == "x_label":
                bad = np.flatnonzero((arr < 0) | (arr > 2))
                if bad.size:
                    r = int(bad[0])
                    raise MMRecError(
                        f"{path}: x_label {arr[r]} at data row {row + r + 1} is outside {{0, 1, 2}} "
                        "(0 train, 1 valid, 2 test)"
                    )
                arr = arr.astype(np.int8)
            else:
                neg = np.flatnonzero(arr < 0)
                if neg.size:
                    r = int(neg[0])
                    raise MMRecError(f"{path}: negative {c} {arr[r]} at data row {row + r + 1}")
                arr = arr.copy()  # numpy-owned: Arrow's block buffers go back to its pool now
            out.append(arr)
        row += batch.num_rows
        del batch
    del reader
    pa.default_memory_pool().release_unused()  # the reader's blocks, before the arrays double up
    if row == 0:
        raise MMRecError(f"{path}: no interaction rows after the header")
    u = np.concatenate(users)
    del users
    i = np.concatenate(items)
    del items
    splits = np.concatenate(labels)
    del labels
    counts = np.bincount(splits, minlength=3)
    for code, sname in enumerate(SPLIT_NAMES):
        if counts[code] == 0:
            raise MMRecError(f"{path}: no rows with x_label {code} ({sname} split is empty)")
    _check_duplicates(path, u, i)
    say(f"{os.path.basename(path)}: {row} rows ({counts[0]}/{counts[1]}/{counts[2]} train/valid/test) "
        f"in {time.perf_counter() - t0:.1f}s")
    return MMRecInteractions(path, u, i, splits)


def _check_duplicates(path: str, users: np.ndarray, items: np.ndarray) -> None:
    if users.size < 2:
        return
    span = int(items.max()) + 1
    if int(users.max()) < (np.iinfo(np.int64).max // span):
        keys = users * span + items
        sk = np.sort(keys)  # one sort; positions are only looked up on the (rare) error path
        dup = np.flatnonzero(sk[1:] == sk[:-1])
        if not dup.size:
            return
        rows = np.flatnonzero(keys == sk[dup[0]])[:2]
    else:  # ids too large for one int64 key
        order = np.lexsort((items, users))
        su, si = users[order], items[order]
        dup = np.flatnonzero((su[1:] == su[:-1]) & (si[1:] == si[:-1]))
        if not dup.size:
            return
        rows = np.sort(order[dup[0] : dup[0] + 2])
    r0, r1 = int(rows[0]), int(rows[1])
    raise MMRecError(
        f"{path}: duplicate interaction (userID {users[r0]}, itemID {items[r0]}) at data rows "
        f"{r0 + 1} and {r1 + 1} ({dup.size} duplicate rows in all)"
    )


def count_distinct(ids: np.ndarray) -> int:
    hi = int(ids.max()) + 1
    if hi <= 4 * ids.size + (1 << 20):  # MMRec ids are contiguous: a bitmap, no sort
        seen = np.zeros(hi, dtype=bool)
        seen[ids] = True
        return int(np.count_nonzero(seen))
    return int(np.unique(ids).size)
