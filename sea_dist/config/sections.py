"""Typed run configuration: one dataclass per section, each checking its own values.

Every knob a user can turn lives here, with its default and a one-line meaning in the field's
``metadata["help"]``; ``--help`` is generated from that text, so a field without help is a bug.
Defaults follow the SEA reference (``docs/model.md``) unless noted.

Each section's ``problems()`` lists what is wrong with its values (every check runs, so one
error names every problem); :meth:`Config.problems` adds the checks that span sections, and
:func:`validate_config` raises them as one :class:`ConfigError`. Catching these at start-up
avoids configurations that would fail (or silently do the wrong thing) deep inside a
distributed run. Filling a config from files and overrides is :mod:`sea_dist.config.parse`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

from sea_dist.config.checks import CLUB_FIT_CHOICES, CLUB_KERNEL_CHOICES, METRIC_CHOICES, Checks, ConfigError, is_int


def _opt(default, help: str, **kw):
    """A dataclass field with its help text; mutable defaults go through ``default_factory``."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class DataConfig:
    root: str = _opt(
        "",
        "dataset root (local path, file:// or s3:// URI); empty = the bundled default dataset",
    )
    s3_endpoint_url: str = _opt(
        "",
        "S3 endpoint override for S3-compatible stores (e.g. http://127.0.0.1:9000); "
        "credentials come from the usual AWS_* environment variables",
    )
    s3_max_attempts: int = _opt(
        5,
        "botocore attempts per S3 request, first included, for connection errors, timeouts, "
        "5xx and throttling (all object-storage I/O: data, prepared, outputs, checkpoints)",
    )
    s3_retry_mode: str = _opt(
        "standard",
        "botocore retry mode: standard (exponential backoff with jitter) or adaptive (also "
        "slows the client down after throttling responses)",
    )
    s3_connect_timeout_s: float = _opt(5.0, "S3 connect timeout, seconds (a timed-out connect is retried)")
    s3_read_timeout_s: float = _opt(30.0, "S3 socket read timeout, seconds (a timed-out read is retried)")
    storage_retries: int = _opt(
        6,
        "attempts in all of one storage operation (a row group read, an upload, a manifest "
        "write) once botocore's per-request retries gave up: rides out longer outages; 1 = none",
    )
    storage_retry_max_delay_s: float = _opt(
        10.0, "cap of the backoff between those attempts (exponential from 0.5 s, full jitter)"
    )
    prepared: str = _opt(
        "",
        "partitioned mode: a prepared version (<root>/prepared/<version>); empty = the one "
        "for data.root and the prepare settings, built by the driver when missing",
    )

    def problems(self) -> list[str]:
        return []  # every value of this section is usable as given


@dataclass
class GraphConfig:
    knn_k: int = _opt(10, "neighbours per item in each modality's item-item kNN graph")
    mm_image_weight: float = _opt(
        0.1,
        "with two modalities: weight of the first modality's kNN graph "
        "(the reference's image modality), the second gets 1 - this",
    )
    modality_weights: list = _opt(
        [],
        "explicit per-modality kNN mixing weights (dataset.json order, must sum to 1); "
        "overrides mm_image_weight; empty = automatic",
    )
    knn_block_size: int = _opt(
        4096, "rows per block when computing exact top-k (bounds memory to block x items)"
    )
    fanouts: list = _opt(
        [10, 10],
        "sampled neighbours per node for the two user-item hops (outer hop first); "
        "-1 = all neighbours",
    )
    knn_fanout: int = _opt(-1, "sampled neighbours in the item-item hop; -1 = all")

    def problems(self) -> list[str]:
        c = Checks(self, "graph")
        c.positive_int("knn_k", "knn_block_size")
        c.need(
            0.0 <= self.mm_image_weight <= 1.0,
            f"graph.mm_image_weight must lie in [0, 1], got {self.mm_image_weight!r}",
        )
        c.need(self.fanouts_ok(), f"graph.fanouts must be positive integers or -1, got {self.fanouts!r}")
        c.need(
            is_int(self.knn_fanout) and (self.knn_fanout > 0 or self.knn_fanout == -1),
            f"graph.knn_fanout must be a positive integer or -1, got {self.knn_fanout!r}",
        )
        if self.modality_weights:
            w = self.modality_weights
            numeric = all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                for x in w
            )
            if not numeric or any(x < 0 for x in w):
                c.problems.append(f"graph.modality_weights must be non-negative numbers, got {w!r}")
            elif not math.isclose(sum(w), 1.0, rel_tol=0.0, abs_tol=1e-6):
                c.problems.append(f"graph.modality_weights must sum to 1, got {w!r} (sum {sum(w)})")
        return c.problems

    def fanouts_ok(self) -> bool:
        return isinstance(self.fanouts, list) and all(is_int(f) and (f > 0 or f == -1) for f in self.fanouts)


@dataclass
class ModelConfig:
    embedding_dim: int = _opt(64, "k: width of each modality's GCN representation")
    n_mm_layers: int = _opt(1, "item-item propagation steps (L)")
    n_ui_layers: int = _opt(2, "user-item propagation steps (fixed at 2 in the reference)")
    temp: float = _opt(0.2, "Solosim (alignment) softmax temperature")
    alpha_contrast: float = _opt(0.012, "weight of the alignment (Solosim) loss")
    ureg: float = _opt(0.006, "weight of the separation (CLUB) loss")
    proj_hidden_dim: int = _opt(64, "hidden width of the alignment projection heads")
    proj_out_dim: int = _opt(32, "output width of the alignment projection heads")
    club_dim: int = _opt(32, "width of the CLUB transforms T1/T2")
    club_hidden: int = _opt(8, "inner width of the CLUB variational net Q")
    club_fit: str = _opt(
        "as_published",
        "pairs Q is fitted on: as_published (across modalities, as the authors' trainer does) "
        "or within_modality (the pairs the bound uses, one Q per modality)",
    )
    club_inner_steps: int = _opt(50, "Q fitting steps per training batch")
    align_max_items: int = _opt(
        0,
        "alignment (Solosim) loss over at most this many of a batch's items, a seeded subset "
        "(its cost is quadratic in them); 0 = all, as the reference. Catalog-size batches: 4096",
    )

    def problems(self) -> list[str]:
        c = Checks(self, "model")
        c.positive_int("embedding_dim", "n_ui_layers", "proj_hidden_dim", "proj_out_dim", "club_dim", "club_hidden")
        c.non_negative_int("n_mm_layers", "club_inner_steps")
        c.need(self.temp > 0, f"model.temp must be > 0, got {self.temp!r}")
        c.non_negative("alpha_contrast", "ureg")
        c.non_negative_int("align_max_items")
        c.need(
            self.club_fit in CLUB_FIT_CHOICES,
            f"model.club_fit must be one of {', '.join(CLUB_FIT_CHOICES)}, got {self.club_fit!r}",
        )
        return c.problems


@dataclass
class TrainConfig:
    full_graph: bool = _opt(
        False, "exact full-graph mode in one process (the fidelity reference, small data)"
    )
    num_workers: int = _opt(2, "Ray Train workers (sampled mode)")
    cpus_per_worker: int = _opt(1, "CPUs per worker; also the torch/DGL thread count")
    use_gpu: bool = _opt(False, "train on GPUs (NCCL); needs gpus_per_worker > 0")
    gpus_per_worker: float = _opt(
        0.0, "GPUs per worker; > 0 needs use_gpu=true (the --gpus-per-worker flag sets both)"
    )
    lr: float = _opt(1e-4, "Adam learning rate (dense parameters, user tables and Q)")
    batch_size: int = _opt(2048, "global batch of (user, pos, neg) triples, split over workers")
    lr_scaling: str = _opt(
        "linear",
        "large-batch recipe: scale lr with the global batch over lr_reference_batch, 'linear' "
        "(measured best at 16k-262k global batches, docs/scaling.md), 'sqrt', or 'none' (lr as "
        "given). Never scaled down: at the reference batch every choice is the reference lr",
    )
    lr_reference_batch: int = _opt(2048, "the global batch the configured lr was tuned at")
    warmup_steps: int = _opt(
        0, "linear lr warm-up over the first N optimizer steps of the run (0 = none)"
    )
    precision: str = _opt(
        "fp32",
        "fp32, or bf16: autocast the feature transforms and the propagation to bfloat16 "
        "(losses, optimizer state and parameters stay fp32); meant for GPUs",
    )
    epochs: int = _opt(
        20,
        "maximum epochs (the reference allows 1000 with early stopping; 20 keeps the "
        "quick start within minutes on 2 CPU cores)",
    )
    patience: int = _opt(
        20,
        "early stopping, MMRec's stopping_step: stop once more than this many consecutive "
        "epochs bring no validation metric (rounded to 4 decimals) above the best",
    )
    negative_items: str = _opt(
        "train_items",
        "items a BPR negative is drawn from: train_items (items that occur in the training "
        "split, MMRec's rule) or all_items (every item, cold ones included)",
    )
    seed: int = _opt(999, "random seed (MMRec's default)")
    checkpoint_every_epochs: int = _opt(1, "write a checkpoint every N epochs")
    progress_every_s: float = _opt(
        60.0,
        "rank 0 logs a progress line (step, s/step, ETA of the epoch, mean loss so far) every N "
        "seconds of an epoch's training (0 = off); a catalog epoch runs for tens of minutes",
    )
    checkpoint_every_steps: int = _opt(
        0,
        "also checkpoint every N training steps inside an epoch (0 = epoch ends only); "
        "bounds the work a worker failure loses",
    )
    max_failures: int = _opt(
        2,
        "Ray Train worker-group restarts after a worker dies (resuming from the latest "
        "checkpoint) before the run fails; data and configuration errors are never retried",
    )
    resume: bool = _opt(False, "continue the run named run_name from its latest checkpoint")
    run_name: str = _opt("", "Ray Train run name (checkpoints under storage_path/run_name)")
    storage_path: str = _opt(
        "", "where Ray Train keeps checkpoints (local path or s3://); empty = output_dir/ray"
    )
    max_steps_per_epoch: int = _opt(0, "cap on batches per epoch (0 = all); for smoke tests")
    warm_start: str = _opt(
        "",
        "start from a published model: an output dir (local or s3://) holding a MANIFEST.json, "
        "or 'latest' for the one published in output.output_dir; empty = from scratch",
    )
    partitioned: bool = _opt(
        False,
        "catalog-scale mode: run the prepare job if needed, each worker loads only its DGL "
        "partition and fetches feature rows from the Parquet shards (see docs/scaling.md)",
    )
    user_tables: str = _opt(
        "sharded",
        "partitioned mode: per-user tables 'sharded' by owning partition (memory ~ users/P) or "
        "'replicated' on every worker (small graphs, equivalence checks)",
    )
    prefetch_batches: int = _opt(
        2,
        "sampled and partitioned modes: steps whose inputs (sampled computation graph, feature "
        "rows) are prepared ahead on a background thread while the current step computes; "
        "0 = prepare each step inline. Same batches either way. Each step ahead holds one more "
        "batch's inputs in memory (2M-user tier: depth 2 peaked 1.2 GB per worker above depth 1; "
        "docs/scaling.md)",
    )
    feature_cache_rows: int = _opt(
        1_000_000, "partitioned mode: feature rows each worker keeps cached per modality"
    )
    share_club_fit: bool = _opt(
        False,
        "with several workers: CLUB's Q is fitted on the step's gathered rows with each worker "
        "taking 1/P of them and the workers summing Q's gradient at every inner step (one small "
        "all-reduce per inner step), instead of every worker fitting all rows. The same fitted Q "
        "either way, up to float rounding. Off by default: on 2 workers of one machine with the "
        "bundled dataset's ~1.2k rows per worker the 50 all-reduces cost more than the halved "
        "arithmetic saves (benchmarks/club_fit.py: 0.154 vs 0.103 s per fit); it pays when the "
        "rows per step are many",
    )
    club_kernel: str = _opt(
        "auto",
        "how each inner step of CLUB's Q fit is computed on a CPU: auto = a small C kernel ($CC, else cc) "
        "compiled on first use for this CPU and cached under $SEA_DIST_CACHE/native (about 2x "
        "faster than torch ops, benchmarks/club_fit.py), falling back to torch ops with a warning "
        "where no C compiler is found; native = the C kernel or an error; torch = torch ops only. "
        "Same fitted Q to float rounding; a GPU worker always uses torch ops",
    )
    share_weight_products: bool = _opt(
        False,
        "with several workers: each computes only its share of the folded feature-transform "
        "products (out x d x d per step, the same on every worker whatever its batch) and the "
        "shares are exchanged, instead of every worker computing all of them. Same numbers up "
        "to float rounding; products under 2^26 multiply-adds stay local. Off by default: at "
        "MMRec's widths (4096 + 384) on 2 workers of one machine it did not pay "
        "(benchmarks/vs_reference.py: 24.0 s per epoch with it, 21.0 s without)",
    )
    warm_start_optimizer: bool = _opt(
        False, "with warm_start, also restore the dense parameters' Adam moments (same mode only)"
    )

    def problems(self) -> list[str]:
        c = Checks(self, "train")
        c.positive_int("num_workers", "cpus_per_worker", "batch_size", "epochs", "checkpoint_every_epochs")
        # patience 0 is MMRec's stopping_step 0: stop at the first non-improving epoch
        c.non_negative_int("max_steps_per_epoch", "patience")
        c.need(self.lr > 0, f"train.lr must be > 0, got {self.lr!r}")
        c.non_negative("gpus_per_worker", "progress_every_s")
        if is_int(self.batch_size) and is_int(self.num_workers) and self.num_workers > 0:
            c.need(
                self.batch_size >= self.num_workers,
                f"train.batch_size ({self.batch_size}) must be >= train.num_workers "
                f"({self.num_workers}): the global batch is split over the workers",
            )
        if self.partitioned:
            c.need(not self.full_graph, "train.partitioned and train.full_graph exclude each other")
            c.need(not self.warm_start, "train.warm_start is not supported in partitioned mode yet")
        c.need(
            self.lr_scaling in ("none", "sqrt", "linear"),
            f"train.lr_scaling must be none, sqrt or linear, got {self.lr_scaling!r}",
        )
        c.need(self.precision in ("fp32", "bf16"), f"train.precision must be fp32 or bf16, got {self.precision!r}")
        c.need(
            self.club_kernel in CLUB_KERNEL_CHOICES,
            f"train.club_kernel must be one of {', '.join(CLUB_KERNEL_CHOICES)}, got {self.club_kernel!r}",
        )
        c.positive_int("lr_reference_batch")
        c.need(
            self.user_tables in ("sharded", "replicated"),
            f"train.user_tables must be 'sharded' or 'replicated', got {self.user_tables!r}",
        )
        c.non_negative_int("feature_cache_rows", "prefetch_batches", "warmup_steps")
        c.need(
            self.negative_items in ("train_items", "all_items"),
            f"train.negative_items must be train_items or all_items, got {self.negative_items!r}",
        )
        if self.gpus_per_worker > 0 and not self.use_gpu:
            c.problems.append(
                f"train.gpus_per_worker={self.gpus_per_worker} needs train.use_gpu=true "
                "(or pass --gpus-per-worker, which sets both)"
            )
        return c.problems


@dataclass
class EvalConfig:
    topk: list = _opt([10, 20], "cut-offs K for Recall/NDCG/Precision/MAP")
    valid_metric: str = _opt("recall@20", "validation metric for early stopping")
    mask_valid_at_test: bool = _opt(
        False,
        "also mask validation items when testing (MMRec masks only training items)",
    )
    user_batch_size: int = _opt(4096, "users scored per full-ranking batch")
    max_users: int = _opt(
        0,
        "partitioned mode: evaluate a seeded sample of about this many users (each worker "
        "its share); 0 = all. Full ranking costs users x items per epoch",
    )

    def problems(self) -> list[str]:
        c = Checks(self, "eval")
        c.positive_int("user_batch_size")
        c.non_negative_int("max_users")
        c.need(self.topk_ok(), f"eval.topk must be a non-empty list of positive integers, got {self.topk!r}")
        match = re.fullmatch(r"(recall|ndcg|precision|map)@(\d+)", str(self.valid_metric).lower())
        if not match:
            c.problems.append(
                f"eval.valid_metric must look like <{'|'.join(METRIC_CHOICES)}>@K, "
                f"got {self.valid_metric!r}"
            )
        elif self.topk_ok() and int(match.group(2)) not in self.topk:
            c.problems.append(
                f"eval.valid_metric {self.valid_metric!r} uses K={match.group(2)}, "
                f"which is not in eval.topk {self.topk!r}"
            )
        return c.problems

    def topk_ok(self) -> bool:
        return isinstance(self.topk, list) and len(self.topk) > 0 and all(is_int(k) and k > 0 for k in self.topk)


@dataclass
class OutputConfig:
    output_dir: str = _opt("runs/latest", "where summary.json, metrics.jsonl and embeddings go")
    write_embeddings: bool = _opt(True, "export final user and item embeddings as Parquet")
    republish: bool = _opt(
        False,
        "train and publish even when MANIFEST.json already holds a model for this dataset "
        "version and config (a rerun is otherwise a no-op), or a model of another dataset "
        "(which is otherwise refused)",
    )
    keep_runs: int = _opt(2, "published run prefixes kept under output_dir/runs (newest first)")

    def problems(self) -> list[str]:
        return []  # every value of this section is usable as given


@dataclass
class MetricsConfig:
    port: int = _opt(
        0,
        "Prometheus base port: the driver serves on port-1, worker with local rank r on "
        "port+r (no collisions on a shared node); 0 disables the endpoints",
    )
    host: str = _opt(
        "127.0.0.1", "address the metrics endpoints bind (0.0.0.0 inside a pod to be scraped)"
    )
    pushgateway_url: str = _opt(
        "", "Pushgateway for the run's final metrics (batch-job convention); empty = none"
    )
    push_job: str = _opt("sea_dist", "Pushgateway job name (one group per deployment)")

    def problems(self) -> list[str]:
        return []  # every value of this section is usable as given


@dataclass
class PrepareConfig:
    num_parts: int = _opt(
        0, "graph partitions written by prepare (one per training worker); 0 = train.num_workers"
    )
    part_method: str = _opt(
        "auto",
        "partitioner: metis (fewer cut edges, needs the graph in memory several times over), "
        "random (streaming-friendly), or auto = metis up to metis_max_edges, random above",
    )
    metis_max_edges: int = _opt(
        20_000_000,
        "auto picks METIS up to this many train interactions (DGL's METIS path peaked at about "
        "0.5 KB per interaction here), random above",
    )
    exact_knn_max_items: int = _opt(
        50_000, "blocked exact kNN up to this many items, the approximate IVF search above"
    )
    knn_nprobe: int = _opt(8, "approximate kNN: inverted lists probed per item (recall vs time)")
    work_dir: str = _opt(
        "", "local scratch for DGL's partition files before upload; empty = a temporary directory"
    )
    force: bool = _opt(False, "rebuild even when a complete prepared version already exists")

    def problems(self) -> list[str]:
        c = Checks(self, "prepare")
        c.need(
            self.part_method in ("auto", "metis", "random"),
            f"prepare.part_method must be auto, metis or random, got {self.part_method!r}",
        )
        c.non_negative_int("num_parts", "metis_max_edges", "exact_knn_max_items")
        c.positive_int("knn_nprobe")
        return c.problems


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def problems(self) -> list[str]:
        """Every section's problems, in section order, then those that span sections."""
        found = [p for f in fields(self) for p in getattr(self, f.name).problems()]
        g, m = self.graph, self.model
        if g.fanouts_ok() and is_int(m.n_ui_layers):
            if len(g.fanouts) != m.n_ui_layers:
                found.append(
                    f"graph.fanouts has {len(g.fanouts)} entries but model.n_ui_layers is "
                    f"{m.n_ui_layers}: give one fanout per user-item hop"
                )
        return found

    def validate(self) -> None:
        """Raise one :class:`ConfigError` listing every problem found (none: return)."""
        errors = self.problems()
        if errors:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))



def validate_config(cfg: Config) -> None:
    """Check a whole configuration: :meth:`Config.validate` (for callers holding a config)."""
    cfg.validate()
