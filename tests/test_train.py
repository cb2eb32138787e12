"""The trainer: schedule, pluggable optimizer, determinism, learning, and exact resume after SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dslib import jobs
from dslib.data import sources
from dslib.data.loader import StreamLoader
from dslib.data.shards import build_shards
from dslib.data.tokenizer import get_tokenizer
from dslib.env import python_path
from dslib.model import TransformerXL, load_config
from dslib.train.__main__ import main as cli_main
from dslib.train import (TrainConfig, Trainer, latest_checkpoint, load_checkpoint, lr_at, validation_loss,
                         seed_everything, train)
from dslib.train.checkpoint import checkpoint_path, list_checkpoints

torch.set_num_threads(1)  # exact float equality across runs and processes needs a fixed thread count


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory):
    texts = sources.load("kjv", limit=1500)["text"]
    tok = get_tokenizer(texts, 512, cache=tmp_path_factory.mktemp("tok"))
    return build_shards(texts, tok, val_fraction=0.1, cache=tmp_path_factory.mktemp("shards"))


def tiny_model(vocab_size: int, seed: int = 0, **overrides) -> TransformerXL:
    seed_everything(seed)
    return TransformerXL(load_config("tiny", vocab_size=vocab_size, **overrides))


def stochastic_model(vocab_size: int, seed: int = 0) -> TransformerXL:
    """Dropout and the gate's Gumbel noise draw from the RNG every step: a resume or a rerun
    that restored or seeded the RNG wrongly gives different losses."""
    return tiny_model(vocab_size, seed, dropout=0.1, gate={"enabled": True, "penalty": 0.01})


def small_config(**overrides) -> TrainConfig:
    base = dict(steps=20, batch_size=4, seq_len=32, lr=3e-3, min_lr=3e-4, warmup_steps=4,
                eval_every=10, eval_batches=4, log_every=5, progress=False)
    return TrainConfig(**{**base, **overrides})


def untimed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The logged history without its timing fields, which legitimately differ between runs."""
    return [{k: v for k, v in entry.items() if k not in ("tokens_per_s", "elapsed_s")} for entry in history]


def test_lr_schedule_warmup_then_cosine() -> None:
    cfg = small_config(steps=100, warmup_steps=10)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(cfg.lr / 10) and lrs[9] == pytest.approx(cfg.lr)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # linear warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then monotone decay
    assert lrs[55] == pytest.approx((cfg.lr + cfg.min_lr) / 2)  # cosine: half-way at mid-decay
    assert lr_at(cfg.steps, cfg) == pytest.approx(cfg.min_lr)
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)


def test_optimizer_factory_gets_the_schedule(shards) -> None:
    """A custom optimizer (chapter 08 passes Lion) is stepped with lr_at(step) each step."""
    seen: list[float] = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    cfg = small_config(steps=12, eval_every=0)
    train(tiny_model(shards.vocab_size), cfg, shards.tokens("train"),
          make_optimizer=lambda groups: RecordingSGD(groups, lr=123.0), device="cpu")
    assert seen == pytest.approx([lr_at(s, cfg) for s in range(cfg.steps)])


def test_same_seed_same_losses(shards) -> None:
    cfg = small_config(steps=12, eval_every=0)
    runs = [train(stochastic_model(shards.vocab_size, seed), cfg.model_copy(update={"seed": seed}),
                  shards.tokens("train"), device="cpu").losses for seed in (0, 0, 1)]
    assert len(runs[0]) == cfg.steps
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_eval_loss_decreases(shards, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSLIB_RUN_DIR", str(tmp_path))
    model = tiny_model(shards.vocab_size)
    cfg = small_config(steps=40, eval_every=20, name="tiny")
    val = StreamLoader(shards.tokens("val"), cfg.batch_size, cfg.seq_len)
    before = validation_loss(model, val, cfg.eval_batches)
    result = train(model, cfg, shards.tokens("train"), shards.tokens("val"), run=jobs.start("03_test"),
                   device="cpu")
    assert [e["step"] for e in result.evals] == [20, 40]
    assert result.evals[0]["val_loss"] < before - 0.3
    assert result.final_val_loss < result.evals[0]["val_loss"]
    assert [h["step"] for h in result.history] == list(range(5, 41, 5))
    assert all(h["tokens_per_s"] > 0 and h["lr"] > 0 for h in result.history)
    record = jobs.read_record(tmp_path)
    assert record["tables"]["tiny_history"] == result.history
    assert record["metrics"]["tiny_final_val_loss"]["value"] == result.final_val_loss


def test_resume_in_process_is_exact(shards, tmp_path: Path) -> None:
    cfg = small_config(steps=16, checkpoint_every=6, keep_checkpoints=5, out_dir=tmp_path)
    full = Trainer(stochastic_model(shards.vocab_size), cfg, shards.tokens("train"), shards.tokens("val"),
                   device="cpu")
    reference = full.fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step_00000006.pt", "step_00000012.pt", "step_00000016.pt"]
    for step in (12, 16):
        checkpoint_path(tmp_path, step).unlink()
    # a differently initialised model: everything must come from the step-6 checkpoint
    resumed = Trainer(stochastic_model(shards.vocab_size, seed=7), cfg, shards.tokens("train"),
                      shards.tokens("val"), device="cpu")
    result = resumed.fit(resume=True)
    assert result.resumed_from == 6
    assert result.losses == reference.losses
    assert result.evals == reference.evals
    # resumed inside the log window 5..10: its means still cover every step of the window
    assert untimed(result.history) == untimed(reference.history)
    assert {"loss", "lr", "grad_norm", "gate_skip_fraction"} <= set(result.history[0])
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_partial_checkpoint_files_are_never_loaded(shards, tmp_path: Path) -> None:
    cfg = small_config(steps=4, eval_every=0, out_dir=tmp_path)
    Trainer(tiny_model(shards.vocab_size), cfg, shards.tokens("train"), device="cpu").fit()
    good = latest_checkpoint(tmp_path)
    assert good == checkpoint_path(tmp_path, 4)
    # what a writer killed mid-save leaves: a hidden temp file, here truncated
    partial = tmp_path / ".step_00000008.pt.x1y2.tmp"
    partial.write_bytes(good.read_bytes()[:1000])
    (tmp_path / "step_00000009.pt.tmp").write_bytes(b"garbage")  # a name that only looks close
    assert latest_checkpoint(tmp_path) == good
    trainer = Trainer(tiny_model(shards.vocab_size), cfg.model_copy(update={"steps": 6}), shards.tokens("train"),
                      device="cpu")
    assert trainer.resume() == 4
    assert not partial.exists()  # the stale temp file is cleaned up on resume


def _cli_args(out: Path, steps: int, *extra: str) -> list[str]:
    return ["--config", "tiny", "--steps", str(steps), "--out", str(out), "--corpus", "kjv", "--limit", "1500",
            "--batch-size", "4", "--seq-len", "32", "--checkpoint-every", "5", "--eval-every", "10",
            "--eval-batches", "2", "--log-every", "12", "--threads", "1", "--no-progress", *extra]


@pytest.mark.timeout(600)
def test_sigkill_then_resume_gives_the_same_losses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSLIB_CACHE", str(tmp_path / "cache"))
    env = {**os.environ, "PYTHONPATH": python_path()}
    cli = [sys.executable, "-m", "dslib.train"]
    steps = 60
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    proc = subprocess.Popen(cli + _cli_args(killed, steps), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    while not checkpoint_path(killed, 10).exists():  # a hang is caught by the test's timeout
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "result.json").exists(), "the run finished before it was killed"
    killed_at = int(latest_checkpoint(killed).stem.split("_")[1])
    assert killed_at < steps

    subprocess.run(cli + _cli_args(killed, steps, "--resume"), env=env, check=True, capture_output=True)
    cli_main(_cli_args(reference, steps))  # the uninterrupted run, in this process (same code, 1 thread)
    expected = json.loads((reference / "result.json").read_text())
    resumed = json.loads((killed / "result.json").read_text())
    assert resumed["resumed_from"] == killed_at
    assert resumed["losses"] == expected["losses"]  # exact float equality, every step
    assert resumed["evals"] == expected["evals"]
    assert killed_at % 12  # checkpoints every 5, logs every 12: the kill is always inside a log window
    assert untimed(resumed["history"]) == untimed(expected["history"])  # and so every curve drawn from it
    final = [torch.load(checkpoint_path(d, steps), weights_only=True)["model"] for d in (reference, killed)]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


class Probe(torch.nn.Module):
    """The real model, recording whether each training call got memories, and its logits' dtype."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.got_memory, self.logits_dtypes = model, [], []

    def forward(self, idx, mems=None, targets=None):
        out = self.model(idx, mems=mems, targets=targets)
        if self.training:
            self.got_memory.append(mems is not None)
            self.logits_dtypes.append(out.logits.dtype)
        return out


@pytest.mark.parametrize("use_memory", [True, False])
def test_memory_is_carried_within_an_epoch_and_dropped_at_wrap(shards, use_memory: bool) -> None:
    cfg = small_config(steps=7, batch_size=2, seq_len=16, eval_every=0, use_memory=use_memory)
    tokens = shards.tokens("train")[: 2 * (3 * 16 + 1)]  # three segments per epoch
    probe = Probe(tiny_model(shards.vocab_size))
    train(probe, cfg, tokens, device="cpu")
    expected = [False, True, True] * 2 + [False] if use_memory else [False] * 7
    assert probe.got_memory == expected


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_runs_under_autocast(shards, tmp_path: Path, precision: str, dtype: torch.dtype) -> None:
    cfg = small_config(steps=3, warmup_steps=1, eval_every=0, precision=precision, out_dir=tmp_path)
    probe = Probe(tiny_model(shards.vocab_size))
    result = train(probe, cfg, shards.tokens("train"), device="cpu")
    assert probe.logits_dtypes == [dtype] * 3
    assert all(torch.isfinite(torch.tensor(result.losses)))
    scaler = load_checkpoint(latest_checkpoint(tmp_path))["scaler"]
    assert (scaler["scale"] > 0) if precision == "fp16" else scaler == {}


def test_eval_before_the_first_log_with_a_progress_bar(shards) -> None:
    """An evaluation due before any history entry exists must not break the progress bar."""
    cfg = small_config(steps=6, eval_every=3, log_every=10, progress=True, warmup_steps=2)
    result = train(tiny_model(shards.vocab_size), cfg, shards.tokens("train"), shards.tokens("val"))
    assert [e["step"] for e in result.evals] == [3, 6]
