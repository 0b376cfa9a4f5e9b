"""The human-readable table printed at the end of a run."""
from __future__ import annotations


def format_result_table(summary: dict, topk: list[int]) -> str:
    rows = []
    header = f"{'split':<14}" + "".join(f"{f'{m}@{k}':>13}" for k in topk for m in ("Recall", "NDCG"))
    rows.append(header)
    rows.append("-" * len(header))
    for label, metrics in (
        ("valid", summary["valid"]),
        ("test", summary["test"]),
        ("popularity", summary["popularity_test"]),
    ):
        rows.append(
            f"{label:<14}"
            + "".join(
                f"{metrics.get(f'{m}@{k}', float('nan')):>13.4f}" for k in topk for m in ("recall", "ndcg")
            )
        )
    throughput = summary["throughput"]
    rows.append(
        f"mode {summary['mode']}, {summary['world_size']} worker(s), best epoch "
        f"{summary['best_epoch']} of {summary['epochs_run']}, "
        f"{throughput['train_edges_per_s_per_worker']:.0f} train edges/s per worker, "
        f"wall {summary['wall_s']:.0f}s"
    )
    return "\n".join(rows)
