"""Chapter 04's gate study: the argmax gate gets no gradient, the straight-through one does;
a high penalty makes the fine-tuned gate skip; measurements and the verdict follow the numbers."""
import numpy as np
import torch

from dslib.data.loader import StreamLoader
from dslib.model import TransformerXL, load_config
from dslib.studies.gating import claim_verdict, gate_gradient_norms, gated_copy, measure_inference, train_gated
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


def test_high_penalty_skips_and_measurements_are_consistent():
    torch.manual_seed(0)
    tokens = np.random.default_rng(0).integers(0, 64, 20_000).astype(np.uint16)
    base = TransformerXL(load_config("tiny", vocab_size=64, num_layers=2, seq_len=16, memory_length=16))
    cfg = TrainConfig(steps=40, batch_size=4, seq_len=16, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_every=0,
                      progress=False)
    reference, _ = train_gated(base, None, cfg, tokens)
    gated, _ = train_gated(base, 10.0, cfg, tokens)
    row = measure_inference(gated, reference, StreamLoader(tokens, 4, 16), batches=4, repeats=1)
    assert row["skip_fraction"] > 0.3
    assert row["loss_cost"] == row["val_loss"] - row["ungated_val_loss"]
    assert min(row["us_per_token_skipping"], row["us_per_token_masked"], row["us_per_token_ungated"]) > 0


def test_verdicts_follow_the_numbers():
    row = {"penalty": 0.1, "time_ratio_vs_ungated": 0.8}
    assert claim_verdict([{**row, "skip_fraction": 0.1, "loss_cost": 0.0}])[0] == "does not hold"
    assert claim_verdict([{**row, "skip_fraction": 0.4, "loss_cost": 0.01}])[0] == "holds"
    verdict, _, note = claim_verdict([{**row, "skip_fraction": 0.4, "loss_cost": 0.2}])
    assert verdict == "holds only when" and "0.200" in note
