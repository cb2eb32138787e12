"""Every gate granularity is causal: changing a future token moves no earlier logit, the gate's
decisions included, in training-style masking and in eval-time skipping, with and without memory."""
import pytest
import torch

from dslib.model import TransformerXL, load_config


def _mixed_gates(granularity: str) -> TransformerXL:
    config = load_config("tiny", gate={"enabled": True, "granularity": granularity})
    model = TransformerXL(config).eval()
    for block in model.blocks:  # decisions that depend on the input: about half kept
        torch.nn.init.zeros_(block.gate.fc_out.bias)
        torch.nn.init.normal_(block.gate.fc_out.weight, std=2.0)
    return model


@pytest.mark.parametrize("skip_compute", [True, False])
@pytest.mark.parametrize("with_memory", [False, True])
@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_future_token_changes_no_earlier_logit(granularity, with_memory, skip_compute):
    torch.manual_seed(0)
    model = _mixed_gates(granularity)
    model.set_skip_compute(skip_compute)
    mems = model(torch.randint(0, 512, (8, 16))).mems if with_memory else None
    idx = torch.randint(0, 512, (8, 16))
    cut = 5
    changed = idx.clone()
    changed[:, cut:] = torch.randint(0, 512, (8, 16 - cut))
    a, b = model(idx, mems), model(changed, mems)
    torch.testing.assert_close(a.logits[:, :cut], b.logits[:, :cut])
    assert not torch.allclose(a.logits[:, cut:], b.logits[:, cut:])
    assert 0.05 < float(a.stats["gate_skip_fraction"]) < 0.95  # the gates really decided


def test_sequence_gate_decision_reads_memory_and_first_token_only():
    torch.manual_seed(0)
    gate = _mixed_gates("sequence").blocks[0].gate
    x, mem = torch.randn(4, 16, 64), torch.randn(4, 8, 64)
    later = x.clone()
    later[:, 1:] = torch.randn(4, 15, 64)
    torch.testing.assert_close(gate(x, mem), gate(later, mem))
    first = x.clone()
    first[:, 0] = torch.randn(4, 64)
    assert not torch.allclose(gate(x, mem), gate(first, mem))
    assert not torch.allclose(gate(x, mem), gate(x, torch.randn(4, 8, 64)))
