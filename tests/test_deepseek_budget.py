"""The V3 budget (dslib.plan.deepseek_budget) against numbers worked out by hand for a tiny
MLA + MoE config, and the dispatch-copy expectations against an exhaustive enumeration."""
from dataclasses import replace
from fractions import Fraction
from itertools import combinations

import pytest

from dslib.model.deepseek_config import DeepSeekConfig, load_deepseek_config
from dslib.plan import deepseek_budget as budget

# d=8, 2 layers (1 dense + 1 MoE), MLA with 2 heads, 4 routed experts (top-2) + 1 shared, MTP depth 1
TINY = DeepSeekConfig(
    vocab_size=10, hidden_size=8, num_layers=2, seq_len=8, intermediate_size=16, first_k_dense=1,
    attention={"kind": "mla", "num_heads": 2, "q_lora_rank": 4, "kv_lora_rank": 4,
               "qk_nope_head_dim": 2, "qk_rope_head_dim": 2, "v_head_dim": 2},
    moe={"n_routed_experts": 4, "n_shared_experts": 1, "top_k": 2, "moe_intermediate_size": 4},
    mtp={"depth": 1})
# 8 GPUs, 2 per node; pp=2 x ep=2: non-expert data parallel 4, expert data parallel 2
LAYOUT = budget.Layout(world=8, gpus_per_node=2, pp=2, ep=2, micro_batch_tokens=8)


def test_parameters_split_into_routed_experts_and_the_rest():
    # attention: query 8*4 + 4 + 4*(2*(2+2)) = 68, kv 8*(4+2) + 4 + 4*2*(2+2) = 84, out 2*2*8 = 32 -> 184
    # dense block 184 + 16 norms + 3*8*16 = 584; MoE block 184 + 16 + shared 96 + router 32 + 4*96 = 712
    # main 584 + 712 + embedding 80 + head 80 + final norm 8 = 1464; MTP 712 + 2*8 + 2*64 + 8 = 864
    routed = 2 * 4 * 3 * 8 * 4  # (1 MoE layer + 1 MTP block) x 4 experts x 3 d f
    assert budget.split_parameters(TINY) == {"routed": routed, "other": 1464 + 864 - routed}


def test_model_states_per_gpu_under_dualpipe_and_zero1():
    # a stage holds 1560/2 = 780 other and 768/2/2 = 192 routed parameters; DualPipe holds 2 stages
    states = budget.model_state_bytes(TINY, LAYOUT)
    assert states["weights"] == 2 * 2 * (780 + 192)      # BF16, two copies
    assert states["gradients"] == 4 * 2 * (780 + 192)    # FP32, two copies
    assert states["optimizer"] == 8 * (780 / 4 + 192 / 2)  # FP32 master + 2 BF16 moments, / dp
    assert set(states) == {"weights", "gradients", "optimizer"}


def test_zero3_and_tensor_parallel_change_what_is_sharded():
    zero3 = budget.model_state_bytes(TINY, replace(LAYOUT, zero_stage=3))
    assert zero3 == {"weights": 2 * (195 + 96), "gradients": 4 * (195 + 96), "optimizer": 8 * (195 + 96),
                     "gathered block": 2 * 972 * 2 / 3}  # one of 3 blocks' local weights (x pp stages)
    tp2 = budget.model_state_bytes(TINY, replace(LAYOUT, tp=2))
    # TP halves the non-expert share (390) and the non-expert data parallel (2): optimizer unchanged
    assert tp2 == {"weights": 2 * 2 * (390 + 192), "gradients": 4 * 2 * (390 + 192),
                   "optimizer": 8 * (390 / 2 + 96)}


def test_activation_bytes_per_token_and_per_gpu():
    fp8 = 1 + 4 / 128
    attention = 2 * 8 + 8 * fp8 + 2 * 4 + 2 * 4 + 2 * 2 + 1.5 * 2 * 2 + 4 * 2  # 58.25
    moe = attention + 2 * 8 + 8 * fp8 + 4 * 4 + 2 * 8 * fp8 + (2 + 1) * 2 * 4 * fp8
    dense = attention + 2 * 8 + 8 * fp8 + 2 * 16 * fp8
    per_token = budget.activation_bytes_per_token(TINY, LAYOUT)
    assert per_token["moe_layer"] == pytest.approx(139.75)
    assert per_token == pytest.approx({"dense_layer": dense, "moe_layer": moe,
                                       "model": dense + moe + moe + 2 * 8 * fp8})
    acts = budget.activation_memory_per_gpu(TINY, LAYOUT)
    assert acts["per_micro_batch"] == pytest.approx(411.5 * 8 / 2)
    assert acts["in_flight"] == pytest.approx(411.5 * 8 / 2 * 3)  # DualPipe: PP + 1 chunks
    bf16 = budget.activation_bytes_per_token(TINY, replace(LAYOUT, fp8_activations=False))
    assert bf16["moe_layer"] - moe == pytest.approx((2 - fp8) * (8 + 8 + 16 + 24) + 0.5 * 4)


def test_flops_split_and_implied_mfu():
    # attention 6*T*H*(4+2) = 576 per layer x 2 + MTP 576 * (7/8)^2; heads 6*V*d*(1 + 7/8); routers 6*E*d*(1 + 7/8)
    assert budget.bf16_flops_per_token(TINY) == pytest.approx(1152 + 441 + 900 + 360)
    assert budget.implied_mfu(1e9, 1.8e12, 1e3, 1e15) == pytest.approx(0.5)
    assert budget.blended_peak(3.0, 1.0, 2.0, 1.0) == pytest.approx(4 / 2.5)
    # forward of the MoE block: 2 x (184 - 8 latent norms + 96 shared + 32 router + 2 x 96) + 2*8*2*6
    assert budget.moe_layer_forward_flops(TINY) == 2 * 496 + 192
    with pytest.raises(ValueError):
        budget.implied_mfu(1e9, 1e12, 0, 1e15)


def _enumerate(n_experts, top_k, n_nodes, gpus_per_node, max_nodes=None):
    """Exact expected IB and NVLink copies of the per-node scheme, every routing equally likely."""
    per_gpu, per_node = n_experts // (n_nodes * gpus_per_node), n_experts // n_nodes
    node_sets = list(combinations(range(n_nodes), max_nodes or n_nodes))
    ib = nvlink = Fraction(0)
    for nodes in node_sets:
        pool = [e for e in range(n_experts) if e // per_node in nodes]
        picks = list(combinations(pool, top_k))
        for pick in picks:
            weight = Fraction(1, len(node_sets) * len(picks))
            touched_nodes = {e // per_node for e in pick}
            gpus = {e // per_gpu for e in pick}
            ib += weight * len(touched_nodes - {0})  # the sender is GPU 0 of node 0
            entry = {node * gpus_per_node for node in touched_nodes}  # the same local index as the sender
            nvlink += weight * len(gpus - entry)
    return float(ib), float(nvlink)


@pytest.mark.parametrize("max_nodes", [None, 1])
def test_dispatch_copies_by_hand_and_by_enumeration(max_nodes):
    copies = budget.dispatch_copies(8, 2, 2, 2, max_nodes=max_nodes)
    # pool of 8: P(remote node hit) = 1 - C(4,2)/C(8,2) = 11/14; GPUs hit 4 (1 - C(6,2)/C(8,2)) = 13/7, half forwarded
    # node-limited to 1: the remote node is picked half the time and then always hit; GPUs hit 4 * 1/2 * 5/6
    expected = {None: (11 / 14, 13 / 14, 1.0), 1: (0.5, 5 / 6, 1.0)}[max_nodes]
    assert (copies["ib"], copies["nvlink"], copies["ib_worst"]) == pytest.approx(expected)
    assert (copies["ib"], copies["nvlink"]) == pytest.approx(_enumerate(8, 2, 2, 2, max_nodes))
    assert _enumerate(16, 3, 4, 2, 2) == pytest.approx(tuple(budget.dispatch_copies(16, 3, 4, 2, 2)[k]
                                                             for k in ("ib", "nvlink")))


def test_plain_all_to_all_and_bytes():
    plain = budget.dispatch_copies(8, 2, 2, 2, per_node=False)
    assert plain == {"ib": 1.0, "nvlink": 0.5, "ib_worst": 2.0}  # one copy per expert: 2 x 1/2 remote, 2 x 1/4
    sent = budget.all_to_all_bytes(plain, 128)
    assert sent == {"ib": 128 * (1 + 4 / 128 + 2), "nvlink": 0.5 * 388, "ib_dispatch": 132, "nvlink_dispatch": 66}
    with pytest.raises(ValueError, match="max_nodes needs"):
        budget.dispatch_copies(8, 2, 2, 2, max_nodes=1, per_node=False)
    with pytest.raises(ValueError, match="do not spread"):
        budget.dispatch_copies(6, 2, 2, 2)


def test_layout_is_checked_and_v3_counts_add_up():
    with pytest.raises(ValueError, match="does not divide"):
        budget.Layout(world=100)
    v3 = load_deepseek_config("deepseek_v3")
    split = budget.split_parameters(v3)
    assert split["routed"] == (58 + 1) * 256 * 3 * 7168 * 2048
    # weights per GPU: 2 copies x 2 B x (other / 16 + routed / (16 x 64))
    weights = budget.model_state_bytes(v3)["weights"]
    assert weights == pytest.approx(4 * (split["other"] / 16 + split["routed"] / 1024))
