"""Owner-sharded user tables: ownership, lookups, init, and equivalence with the replicas (2 gloo ranks)."""
import pytest
import torch
import torch.nn.functional as F

from sea_dist.model.sea import UserTables
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.sharded_tables import (
    ReplicatedTables,
    ShardedTables,
    even_bounds,
    init_user_tables,
    owner_of,
)
from tests.dist_utils import run_distributed

pytestmark = pytest.mark.timeout(60)

MODS = ["a", "b"]


def _full_init(n_users, dim, seed, chunk_rows):
    with torch.random.fork_rng(devices=[]):
        tables = UserTables(n_users, MODS, dim, sparse=True)
    return init_user_tables(tables, seed, chunk_rows)


def test_owner_of_at_range_boundaries():
    bounds = torch.tensor([0, 4, 4, 10])  # rank 1 owns nothing
    ids = torch.tensor([0, 3, 4, 5, 9])
    assert owner_of(ids, bounds).tolist() == [0, 0, 2, 2, 2]
    assert even_bounds(10, 3) == [0, 3, 6, 10]


def test_init_is_independent_of_the_sharding():
    full = _full_init(23, 3, seed=7, chunk_rows=4)
    for rank, bounds in [(0, [0, 9, 23]), (1, [0, 9, 23]), (2, [0, 5, 6, 23])]:
        ctx = WorkerContext(rank=rank, world_size=len(bounds) - 1)  # construction does not communicate
        shard = ShardedTables(23, MODS, 3, bounds, ctx, lr=0.1, seed=7, init_chunk_rows=4)
        lo, hi = bounds[rank], bounds[rank + 1]
        for key, value in shard.local.state_dict().items():
            assert torch.equal(value, full.state_dict()[key][lo:hi]), key
    weights = full.modality_weights.weight
    assert torch.allclose(weights.sum(1), torch.ones(23))
    assert not torch.equal(full.preferences["a"].weight, _full_init(23, 3, 8, 4).preferences["a"].weight)


def test_single_rank_gather_order_and_prefix_lookup():
    shard = ShardedTables(10, MODS, 3, [0, 10], WorkerContext(), lr=0.1, seed=1, init_chunk_rows=4)
    full = _full_init(10, 3, seed=1, chunk_rows=4)
    ids = torch.tensor([7, 2, 9, 0])
    rows = shard.gather(ids)
    assert rows.modalities == MODS
    assert torch.equal(rows.preferences["b"](ids), full.preferences["b"].weight[ids])
    assert torch.equal(rows.modality_weights(ids[:2]), full.modality_weights.weight[ids[:2]])  # seed prefix
    assert torch.equal(rows.preferences["a"](torch.tensor([9, 7])), full.preferences["a"].weight[[9, 7]])
    assert rows.modality_weights.touched.tolist() == [True, True, False, False]
    with pytest.raises(KeyError):
        rows.preferences["a"](torch.tensor([3]))
    with pytest.raises(IndexError):
        shard.gather(torch.tensor([10]))


def _loss(tables, ids, n_seed, weights):
    """SEA's use of the tables: weights of the seed prefix, normalised preferences of all ids."""
    loss = (tables.modality_weights(ids[:n_seed]) * weights["w"][: n_seed]).sum() ** 2
    for m in MODS:
        loss = loss + (F.normalize(tables.preferences[m](ids)) * weights[m][: ids.numel()]).sum()
    return loss


def _batch(rank, step, n_users):
    if step == 2:  # only rank 0's ids: rank 1's shard gets empty gradients, its step count must still advance
        return torch.tensor([[3, 0, 8], [8, 1]][rank]), 1
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randperm(n_users, generator=g)[: 6 + rank], 3


def _run_steps(store, rank, n_users, dim):
    g = torch.Generator().manual_seed(5)
    weights = {m: torch.randn(n_users, dim, generator=g) for m in MODS}
    weights["w"] = torch.randn(n_users, len(MODS), generator=g)
    traffic = []
    for step in range(5):
        ids, n_seed = _batch(rank, step, n_users)
        store.zero_grad()
        rows = store.gather(ids)
        _loss(rows, ids, n_seed, weights).backward()
        store.push_gradients(rows)
        traffic.append(store.step().as_dict())
    return traffic


def _equivalence(rank, world):
    n_users, dim, bounds = 23, 3, [0, 9, 23]
    ctx = WorkerContext.from_process_group()
    sharded = ShardedTables(n_users, MODS, dim, bounds, ctx, lr=0.05, seed=3, init_chunk_rows=4)
    replicated = ReplicatedTables(n_users, MODS, dim, ctx, lr=0.05, seed=3, init_chunk_rows=4)
    start = sharded.gather_full(), replicated.gather_full()
    _run_steps(sharded, rank, n_users, dim)
    _run_steps(replicated, rank, n_users, dim)
    lo, hi = bounds[rank], bounds[rank + 1]
    moments = []
    for local, full in zip(sharded.local.parameters(), replicated.tables.parameters()):
        s, r = sharded.optimizer.state[local], replicated.optimizer.state[full]
        moments.append((s["step"], r["step"], s["exp_avg"], r["exp_avg"][lo:hi], s["exp_avg_sq"], r["exp_avg_sq"][lo:hi]))
    return start, sharded.gather_full(), replicated.gather_full(), replicated.tables.state_dict(), moments


@pytest.mark.timeout(120)
def test_sharded_steps_match_replicated_steps_on_two_ranks():
    results = run_distributed(_equivalence, 2)
    (start_sharded, start_replicated), final_sharded, final_replicated, _, _ = results[0]
    assert results[1][0] == (None, None) and results[1][1] is None
    for key in start_replicated:
        assert torch.equal(start_sharded[key], start_replicated[key]), key
        assert not torch.allclose(final_replicated[key], start_replicated[key]), key  # training moved them
        torch.testing.assert_close(final_sharded[key], final_replicated[key], atol=1e-6, rtol=0)
        assert torch.equal(results[1][3][key], final_replicated[key])  # replicas stay identical
    for rank in range(2):
        for s_step, r_step, s_avg, r_avg, s_sq, r_sq in results[rank][4]:
            assert s_step == r_step == 5
            torch.testing.assert_close(s_avg, r_avg, atol=1e-6, rtol=0)
            torch.testing.assert_close(s_sq, r_sq, atol=1e-6, rtol=0)


def _hand_made_traffic(rank, world):
    # users 0..3 on rank 0, 4..9 on rank 1; dim 3, 2 modalities: a gathered row is 3+3+2 floats
    ctx = WorkerContext.from_process_group()
    kinds = {
        "sharded": ShardedTables(10, MODS, 3, [0, 4, 10], ctx, lr=0.1, seed=0),
        "replicated": ReplicatedTables(10, MODS, 3, ctx, lr=0.1, seed=0),
    }
    ids, n_seed = [(torch.tensor([1, 5, 7, 2]), 2), (torch.tensor([6, 3, 9]), 1)][rank]
    out = {}
    for name, store in kinds.items():
        rows = store.gather(ids)
        loss = rows.modality_weights(ids[:n_seed]).sum() + sum(rows.preferences[m](ids).sum() for m in MODS)
        loss.backward()
        store.push_gradients(rows)
        out[name] = store.step().as_dict()
    return out


@pytest.mark.timeout(120)
def test_traffic_counts_rows_and_bytes_for_a_hand_made_step():
    got = run_distributed(_hand_made_traffic, 2)
    row, pref_grad, weight_grad = (3 + 3 + 2) * 4, 8 + 3 * 4, 8 + 2 * 4  # bytes; gradients carry their int64 id
    # rank 0 asks rank 1 for 5 and 7, rank 1 asks rank 0 for 3 (8-byte ids out, rows back);
    # gradients: rank 0 -> rank 1: 5, 7 in both preference tables and seed 5's weights (5 rows),
    # rank 1 -> rank 0: 3 in both preference tables (its seed 6 is its own): 2 rows
    bytes_0_to_1 = 2 * 8 + 1 * row + 4 * pref_grad + 1 * weight_grad
    bytes_1_to_0 = 1 * 8 + 2 * row + 2 * pref_grad
    assert got[0]["sharded"] == dict(lookup_rows_sent=1, lookup_rows_received=2, grad_rows_sent=5,
                                     grad_rows_received=2, bytes_sent=bytes_0_to_1, bytes_received=bytes_1_to_0)
    assert got[1]["sharded"] == dict(lookup_rows_sent=2, lookup_rows_received=1, grad_rows_sent=2,
                                     grad_rows_received=5, bytes_sent=bytes_1_to_0, bytes_received=bytes_0_to_1)
    # replicated: each rank's touched rows (4+4+2 and 3+3+1) go to the other rank, no lookups
    r0, r1 = 2 * 4 * pref_grad + 2 * weight_grad, 2 * 3 * pref_grad + 1 * weight_grad
    assert got[0]["replicated"] == dict(lookup_rows_sent=0, lookup_rows_received=0, grad_rows_sent=10,
                                        grad_rows_received=7, bytes_sent=r0, bytes_received=r1)
    assert got[1]["replicated"]["grad_rows_sent"] == 7 and got[1]["replicated"]["bytes_sent"] == r1


def test_world_size_one_matches_replicated():
    ctx = WorkerContext()
    sharded = ShardedTables(12, MODS, 4, [0, 12], ctx, lr=0.05, seed=2, init_chunk_rows=5)
    replicated = ReplicatedTables(12, MODS, 4, ctx, lr=0.05, seed=2, init_chunk_rows=5)
    traffic = _run_steps(sharded, 0, 12, 4)
    _run_steps(replicated, 0, 12, 4)
    assert all(v == 0 for t in traffic for v in t.values())
    full_s, full_r = sharded.gather_full(), replicated.gather_full()
    for key in full_r:
        torch.testing.assert_close(full_s[key], full_r[key], atol=1e-6, rtol=0)
    restored = ShardedTables(12, MODS, 4, [0, 12], ctx, lr=0.05, seed=99)
    restored.load_state_dict(sharded.state_dict())
    assert all(torch.equal(restored.gather_full()[k], full_s[k]) for k in full_s)
    with pytest.raises(ValueError):
        ShardedTables(12, MODS, 4, [0, 6, 12], WorkerContext(rank=0, world_size=2), 0.05, 2).load_state_dict(
            sharded.state_dict()
        )
