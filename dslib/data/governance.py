"""The configured data pipeline: a config's steps built in order, and a run over the user's files.

``run_files(paths, "default", out_dir)`` reads ``.jsonl``/``.parquet``/``.txt`` files (bad input
rejected with a reason), builds the steps of ``configs/data/default.yaml`` (cleaning, quality
rules, exact and near dedup, the domain filter) and runs them (dslib.data.pipeline).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dslib.data import clean, dedup, domain, quality
from dslib.data.config import PipelineConfig, load_pipeline_config
from dslib.data.files import read_files
from dslib.data.pipeline import PipelineResult, run_pipeline


def build_steps(config: PipelineConfig) -> list[Any]:
    """The step objects, in the configured order."""
    makers = {"clean": lambda c: clean.Clean(c.nfkc), "quality": quality.Quality,
              "exact_dedup": lambda c: dedup.ExactDedup(), "near_dedup": dedup.NearDedup,
              "domain": domain.DomainFilter.from_config}
    return [makers[c.kind](c) for c in config.steps]


def run_files(paths: list[str | Path], config: Any, out_dir: str | Path) -> PipelineResult:
    """Read the user's files and run the configured pipeline on them. ``config``: a
    ``PipelineConfig``, a path, or a name in configs/data. The config is validated and the
    steps are built before any file is read, so a bad config fails before any work."""
    config = config if isinstance(config, PipelineConfig) else load_pipeline_config(config)
    steps = build_steps(config)
    read = read_files(paths, config.text_field, config.max_doc_bytes)
    return run_pipeline(read.dataset(), steps, out_dir, config.num_proc, read.rejected)
