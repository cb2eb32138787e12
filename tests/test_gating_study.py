"""Chapter 04's gate study: the argmax gate gets no gradient, the straight-through one does;
a high penalty makes the fine-tuned gate skip; the measured losses are those of the models."""
import numpy as np
import pytest
import torch

from dslib.data.loader import StreamLoader
from dslib.model import TransformerXL, load_config
from dslib.studies.gating import gate_gradient_norms, gated_copy, measure_inference, train_gated
from dslib.train import TrainConfig


def test_argmax_gate_has_no_gradient_straight_through_has():
    norms = gate_gradient_norms()
    assert norms["argmax (article)"] is None
    assert norms["straight-through (dslib)"] > 0


def test_gated_copy_keeps_base_weights_and_outputs_before_training():
    torch.manual_seed(0)
    base = TransformerXL(load_config("tiny", num_layers=1, seq_len=16, memory_length=0)).eval()
    gated = gated_copy(base, penalty=0.1, granularity="sequence", init_keep_logit=5.0).eval()
    idx = torch.randint(0, 512, (2, 16))
    assert torch.allclose(base(idx).logits, gated(idx).logits)


def _stream_loss(model, loader, batches):
    """Mean loss over the loader's first segments, memory carried: written apart from measure_inference."""
    loader.rewind()
    total, mems = 0.0, None
    with torch.no_grad():
        for _ in range(batches):
            idx, targets = loader.next_batch()
            out = model(idx, mems=mems, targets=targets)
            total, mems = total + float(out.loss), out.mems
    return total / batches


def test_high_penalty_skips_and_the_losses_are_the_models():
    torch.manual_seed(0)
    tokens = np.random.default_rng(0).integers(0, 64, 20_000).astype(np.uint16)
    base = TransformerXL(load_config("tiny", vocab_size=64, num_layers=2, seq_len=16, memory_length=16))
    cfg = TrainConfig(steps=40, batch_size=4, seq_len=16, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_every=0,
                      progress=False)
    reference, _ = train_gated(base, None, cfg, tokens)
    gated, _ = train_gated(base, 10.0, cfg, tokens)
    loader = StreamLoader(tokens, 4, 16)
    row = measure_inference(gated, reference, loader, batches=4, repeats=1)
    assert row["skip_fraction"] > 0.3
    assert row["ungated_val_loss"] == pytest.approx(_stream_loss(reference, loader, 4), rel=1e-5)
    gated.set_skip_compute(True)
    assert row["val_loss"] == pytest.approx(_stream_loss(gated, loader, 4), rel=1e-5)
    assert min(row["us_per_token_skipping"], row["us_per_token_masked"], row["us_per_token_ungated"]) > 0
    # a gate that keeps every layer costs nothing and skips nothing
    keeping = gated_copy(reference, penalty=0.0, granularity="sequence", init_keep_logit=20.0)
    row = measure_inference(keeping, reference, loader, batches=4, repeats=1)
    assert row["skip_fraction"] == 0 and abs(row["loss_cost"]) < 1e-5
