"""The whole book in one run (notebook 11): data pipeline -> tokenizer -> packed shards ->
training with the chapters' choices -> evaluation -> model card.

One config, configs/end_to_end.yaml (dslib.studies.end_to_end_config: validated before any work,
flat names override it).
Every stage is the chapter's own code:
  data       dslib.data.sources -> dslib.data.pipeline (configs/data/<pipeline>.yaml; every
             document kept or dropped with a reason) -> tokenizer -> dslib.data.shards
  train      zero_stage 0: dslib.train.Trainer in this process; 1-3: dslib.parallel.zero
             on DeepSpeed ranks. Both: precision autocast (ch. 07), AdamW or Lion (ch. 08),
             activation checkpointing of every k-th block (ch. 09)
  evaluate   dslib.eval (ch. 10): perplexity per source with and without memory, the unigram
             baseline on the same tokens, domain prompt accuracy, one robustness point
  card       dslib.jobs.model_card, with the claims ledger of the latest chapter runs
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from dslib.data import config as pipeline_config
from dslib.data.governance import build_steps
from dslib.data.pipeline import column, run_pipeline
from dslib.data.shards import build_shards, split_documents
from dslib.data.sources import load
from dslib.data.tokenizer import get_tokenizer
from dslib.env import device, outputs_dir
from dslib.eval.corpus import chunk_words as cut, held_out
from dslib.eval.lm import DslibLM
from dslib.eval.perplexity import perplexity, unigram_perplexity
from dslib.eval.prompts import build_suites, evaluate_suites
from dslib.eval.robustness import robustness_curves
from dslib.jobs.model_card import ModelCard
from dslib.jobs.report import latest_records
from dslib.model import TransformerXL
from dslib.optim.lion import Lion
from dslib.parallel.zero import train_zero
from dslib.studies.end_to_end_config import EndToEndConfig, SECTIONS, load_end_to_end_config, parameter_names
from dslib.train import Trainer, seed_everything
from dslib.tune.checkpointing import apply_checkpointing, checkpointed_layers, remove_checkpointing

__all__ = ["SECTIONS", "Corpus", "EndToEndConfig", "Evaluation", "Trained", "check_beats_unigram", "evaluate_trained",
           "load_end_to_end_config", "model_card", "parameter_names", "prepare_data", "train_model"]


# ---- data ---------------------------------------------------------------------------------
@dataclass
class Corpus:
    funnel: Any  # dslib.data.pipeline.Funnel
    texts: list[str]  # kept documents, in order
    labels: list[str]  # the source of each
    tokenizer: Any
    shards: Any  # dslib.data.shards.Shards
    held_out: dict[str, list[str]]  # source -> its validation documents

    def train_token_counts(self) -> np.ndarray:
        return np.bincount(np.asarray(self.shards.tokens("train")), minlength=self.tokenizer.vocab_size)


def source_documents(name: str, limit: int | None, chunk_words: int) -> datasets.Dataset:
    """One corpus (columns id, text, source); documents longer than chunk_words are cut."""

    ds = load(name, limit)
    rows = [(f"{doc_id}#{k}", piece) for doc_id, text in zip(column(ds, "id"), column(ds, "text"))
            for k, piece in enumerate(cut(text, chunk_words))]
    return datasets.Dataset.from_dict({"id": [r[0] for r in rows], "text": [r[1] for r in rows],
                                       "source": [name] * len(rows)})


def prepare_data(cfg: EndToEndConfig, out_dir: str | Path) -> Corpus:
    """Sources -> pipeline (funnel and rejected documents under out_dir/data) -> tokenizer ->
    shards. The tokenizer learns from the training documents only."""

    d = cfg.data
    docs = datasets.concatenate_datasets([source_documents(n, limit, d.chunk_words) for n, limit in d.sources.items()])
    pipeline = pipeline_config.load_pipeline_config(d.pipeline)
    kept = run_pipeline(docs, build_steps(pipeline), Path(out_dir) / "data", pipeline.num_proc)
    texts, labels = column(kept.kept, "text"), column(kept.kept, "source")
    is_val = split_documents(len(texts), d.val_fraction, cfg.seed)
    tokenizer = get_tokenizer([t for t, val in zip(texts, is_val) if not val], d.vocab_size)
    shards = build_shards(texts, tokenizer, val_fraction=d.val_fraction, seed=cfg.seed)
    return Corpus(kept.funnel, texts, labels, tokenizer, shards, held_out(texts, labels, d.val_fraction, cfg.seed))


# ---- training -----------------------------------------------------------------------------
@dataclass
class Trained:
    model: Any  # TransformerXL, eval mode, plain forward
    result: Any  # dslib.train.TrainResult
    wall_s: float
    checkpointed_layers: list[int]
    parameters: int


def lion_factory(weight_decay: float) -> Any:

    return lambda groups: Lion(groups, betas=(0.9, 0.99), weight_decay=weight_decay)


def train_model(cfg: EndToEndConfig, corpus: Corpus, run: Any = None) -> Trained:
    """Train with the configured chapter choices; the returned model is on this process."""

    t, model_cfg, train_cfg = cfg.train, cfg.architecture_config(corpus.tokenizer.vocab_size), cfg.recipe()
    start = time.perf_counter()
    seed_everything(cfg.seed)
    model = TransformerXL(model_cfg)
    if t.zero_stage == 0:
        apply_checkpointing(model, t.checkpoint_every)
        factory = lion_factory(train_cfg.weight_decay) if t.optimizer == "lion" else None
        result = Trainer(model, train_cfg, corpus.shards.tokens("train"), make_optimizer=factory, run=run).fit()
        remove_checkpointing(model)
    else:
        result, state = train_zero(model_cfg, train_cfg, corpus.shards.folder, t.zero_stage, t.optimizer,
                                   t.checkpoint_every, t.nprocs, t.launch_timeout_s)
        model.load_state_dict(state)
        model.to(device())  # evaluated where the single-process run would have left it
    return Trained(model.eval(), result, time.perf_counter() - start,
                   checkpointed_layers(model_cfg.num_layers, t.checkpoint_every),
                   sum(p.numel() for p in model.parameters()))


# ---- evaluation ---------------------------------------------------------------------------
@dataclass
class Evaluation:
    perplexity: list[dict[str, Any]]  # per source: model with/without memory, unigram
    prompts: list[dict[str, Any]]  # per source: acc, acc_norm, acc_pmi, n, chance
    robustness: list[dict[str, Any]]  # one attack at one rate


def evaluate_trained(cfg: EndToEndConfig, corpus: Corpus, model: Any) -> Evaluation:
    """Chapter 10's measures on the held-out documents of every source."""

    e, seq_len, tok = cfg.eval, cfg.model.seq_len, corpus.tokenizer
    counts = corpus.train_token_counts()
    rows = []
    for source, docs in corpus.held_out.items():
        docs = docs[:e.ppl_docs]
        if not docs:
            continue
        memory, blind = (perplexity(model, tok, docs, seq_len, mode=m) for m in ("memory", "segments"))
        unigram = unigram_perplexity(counts, tok, docs)
        rows.append({"source": source, "documents": len(docs), "tokens": memory["num_tokens"],
                     "model_memory": memory["perplexity"], "model_no_memory": blind["perplexity"],
                     "unigram": unigram["perplexity"], "model_bits_per_byte": memory["bits_per_byte"],
                     "unigram_bits_per_byte": unigram["bits_per_byte"]})
    lm = DslibLM(model, tok, max_length=seq_len)
    usable = {s: d for s, d in corpus.held_out.items() if any(len(t.split()) >= 22 for t in d)}  # 16 + 6 words
    suites = build_suites(usable, e.prompt_items, seed=cfg.seed, distractors="other")
    attacked = [it for items in suites.values() for it in items[:e.robust_items]]
    robustness = robustness_curves(lm, attacked, [e.robust_rate], attacks=[e.robust_attack], seed=cfg.seed) \
        if attacked else []
    return Evaluation(rows, evaluate_suites(lm, suites), robustness)


def check_beats_unigram(cfg: EndToEndConfig, evaluation: Evaluation) -> list[str]:
    """Raise AssertionError unless unigram / model perplexity >= min_gain_vs_unigram on every
    source; returns one line per source saying by how much it won."""
    if not evaluation.perplexity:
        raise AssertionError("no held-out documents were evaluated: raise the sources' sizes or val_fraction")
    lines, failed = [], []
    for row in evaluation.perplexity:
        gain = row["unigram"] / row["model_memory"]
        line = f"{row['source']}: model {row['model_memory']:.1f} vs unigram {row['unigram']:.1f} (x{gain:.2f})"
        (failed if gain < cfg.eval.min_gain_vs_unigram else lines).append(line)
    if failed:
        raise AssertionError(f"the model is not clearly better than unigram (needs x{cfg.eval.min_gain_vs_unigram}) "
                             f"on: {'; '.join(failed)}")
    return lines


# ---- model card ---------------------------------------------------------------------------
def model_card(cfg: EndToEndConfig, corpus: Corpus, trained: Trained, evaluation: Evaluation,
               run_dir: str | Path | None = None) -> Any:
    """The run's ModelCard; its claims ledger reads the latest chapter runs under outputs/
    (not ``run_dir``, this run's own record)."""

    t, m, result = cfg.train, cfg.model, trained.result
    tail = result.losses[-max(1, len(result.losses) // 10):]
    details = {
        "architecture": f"Transformer-XL ({m.architecture}): {m.num_layers} layers, d={m.hidden_size}, "
                        f"segment {m.seq_len}, memory {m.memory_length}",
        "parameters": f"{trained.parameters:,}",
        "parallelism": "single process (plain Trainer)" if t.zero_stage == 0 else
                       f"DeepSpeed ZeRO stage {t.zero_stage} on {t.nprocs} ranks",
        "precision": t.precision + (" autocast, FP32 master weights" if t.precision != "fp32" else ""),
        "optimizer": f"{t.optimizer}, peak lr {cfg.recipe().lr:g}, warmup + cosine",
        "activation checkpointing": f"blocks {trained.checkpointed_layers}" if trained.checkpointed_layers else "none",
        "steps x batch x segment": f"{t.steps} x {t.batch_size} x {m.seq_len} "
                                   f"= {t.steps * t.batch_size * m.seq_len:,} tokens",
        "final training loss": f"{sum(tail) / len(tail):.3f} nats/token (mean of the last {len(tail)} steps)",
        "throughput": f"{result.tokens_per_s:,.0f} tokens/s; training took {trained.wall_s:.0f} s",
        "seed": cfg.seed,
    }
    shards = corpus.shards
    data = {"sources (documents requested)": ", ".join(f"{k}: {v if v is not None else 'all'}"
                                                       for k, v in cfg.data.sources.items()),
            "pipeline": f"configs/data/{cfg.data.pipeline}.yaml",
            "tokenizer": f"byte BPE, {corpus.tokenizer.vocab_size} tokens, trained on the training documents",
            "train / held-out documents": f"{shards.num_documents('train'):,} / {shards.num_documents('val'):,}",
            "train / held-out tokens": f"{shards.num_tokens('train'):,} / {shards.num_tokens('val'):,}",
            "epochs over the training tokens": f"{t.steps * t.batch_size * m.seq_len / shards.num_tokens('train'):.2f}"}
    limitations = [f"A demonstration-size model: {trained.parameters:,} parameters that saw "
                   f"{t.steps * t.batch_size * m.seq_len:,} training tokens."]
    if evaluation.perplexity:
        worst = min(evaluation.perplexity, key=lambda r: r["unigram"] / r["model_memory"])
        limitations[0] += (f" Its weakest source ({worst['source']}) reaches perplexity {worst['model_memory']:.1f} "
                           f"against unigram {worst['unigram']:.1f}.")
    limitations += [
        "Prompt items are continuations cut from held-out documents of the same sources: they measure "
        "in-domain fit, not general ability.",
        "Near-duplicate removal runs within this corpus only; held-out documents may still resemble "
        "training documents of the same source (e.g. parallel Bible translations).",
    ]
    exclude = Path(run_dir) if run_dir is not None else None
    return ModelCard(f"dslib Transformer-XL, {m.architecture} ({trained.parameters / 1e6:.2f}M)", details,
                     corpus.funnel, data, evaluation.perplexity, evaluation.prompts, evaluation.robustness,
                     latest_records(outputs_dir(), exclude=exclude), limitations)
