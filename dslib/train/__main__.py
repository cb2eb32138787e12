"""Train a Transformer-XL from the command line.

    python -m dslib.train --config tiny --steps 200 --out outputs/train/tiny
    python -m dslib.train --config tiny --steps 200 --out outputs/train/tiny --resume

The corpus is tokenized (cached byte BPE) into cached shards; checkpoints, and at the end
``result.json`` (every step's loss, the log history, the evaluations), go to ``--out``.
"""
from __future__ import annotations

import argparse
import json

import torch

from dslib.data import sources
from dslib.data.shards import build_shards
from dslib.data.tokenizer import get_tokenizer
from dslib.train import TrainConfig, Trainer, seed_everything


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dslib.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tiny", help="model config: configs/model/<name>.yaml or a path")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True, help="folder for checkpoints and result.json")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--corpus", default="kjv", choices=sources.available())
    p.add_argument("--limit", type=int, default=None, help="first N documents of the corpus")
    p.add_argument("--vocab-size", type=int, default=None, help="default: the model config's")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=None, help="default: the model config's")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of --steps")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="forward autocast dtype")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-memory", action="store_true", help="train segments without memory")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from dslib.model import TransformerXL, load_config  # the model package is only needed here

    if args.threads:
        torch.set_num_threads(args.threads)
    model_cfg = load_config(args.config)
    texts = sources.load(args.corpus, args.limit)["text"]
    tokenizer = get_tokenizer(texts, args.vocab_size or model_cfg.vocab_size)
    shards = build_shards(texts, tokenizer, val_fraction=args.val_fraction, seed=args.seed)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len or model_cfg.seq_len,
                      lr=args.lr, min_lr=args.min_lr,
                      warmup_steps=args.warmup_steps if args.warmup_steps is not None else args.steps // 10,
                      eval_every=args.eval_every, eval_batches=args.eval_batches,
                      checkpoint_every=args.checkpoint_every, log_every=args.log_every, seed=args.seed,
                      precision=args.precision,
                      use_memory=not args.no_memory, progress=not args.no_progress, out_dir=args.out,
                      name=f"{args.config}_{args.corpus}")
    seed_everything(cfg.seed)  # the same initial weights for the same seed
    model = TransformerXL(load_config(args.config, vocab_size=tokenizer.vocab_size, seq_len=cfg.seq_len))
    trainer = Trainer(model, cfg, shards.tokens("train"), shards.tokens("val"))
    result = trainer.fit(resume=args.resume)
    summary = {"steps": cfg.steps, "resumed_from": result.resumed_from, "final_train_loss": result.losses[-1],
               "final_val_loss": result.final_val_loss, "tokens_per_s": round(result.tokens_per_s, 1),
               "train_tokens": shards.num_tokens("train"), "out": str(cfg.out_dir)}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
