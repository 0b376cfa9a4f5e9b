import re

from sea_dist.ops.report import render_report


def _history(n=4, bad=False):
    out = []
    for e in range(n):
        out.append({
            "epoch": e,
            "loss": {"total": 1.0 / (e + 1), "bpr": 0.9 / (e + 1), "club": 0.0, "align": float("nan") if bad and e == 2 else 0.1},
            "valid": {"recall@20": 0.1 * e, "ndcg@20": 0.05 * e, "map@20": 0.01},
            "test": {"recall@20": 0.1 * e, "ndcg@20": 0.05 * e, "map@20": 0.01},
            "train_s": 2.0, "sampling_s": 0.5, "feature_fetch_s": 0.1, "model_s": 1.0, "club_fit_s": 0.4, "eval_s": 0.1,
        })
    return out


SUMMARY = {"mode": "sampled", "world_size": 2, "dataset": {"name": "d", "version": "v1"}, "best_epoch": 3,
           "epochs_run": 4, "valid": {"recall@20": 0.3, "ndcg@20": 0.15}, "test": {"recall@20": 0.29, "ndcg@20": 0.14},
           "popularity_test": {"recall@20": 0.05, "ndcg@20": 0.02}}


def test_report_has_a_line_per_series_with_one_point_per_epoch():
    page = render_report(SUMMARY, _history())
    lines = re.findall(r'<polyline data-series="([^"]+)"[^>]*points="([^"]*)"', page)
    names = [n for n, _ in lines]
    assert names[:4] == ["total", "bpr", "club", "align"]
    assert "recall@20" in names and "ndcg@20" in names and "map@20" not in names
    assert all(len(points.split()) == 4 for _, points in lines)
    assert "losses finite: <b>yes</b>" in page and "0.2900" in page


def test_report_flags_non_finite_losses():
    page = render_report(SUMMARY, _history(bad=True))
    assert "losses finite: <b>NO</b>" in page
