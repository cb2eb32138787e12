"""Chapter 09 tuning: checkpointing keeps gradients, sharing drops the right parameters,
PowerSGD's counted bytes follow (n + m) * r per compressed matrix."""
import torch

from dslib.model import TransformerXL, count_parameters, load_config
import pytest

from dslib.model.attention import RelativeAttention
from dslib.tune.checkpointing import (apply_checkpointing, apply_chunked_checkpointing, apply_recompute,
                                      apply_selective_recompute, modelled_activation_bytes,
                                      modelled_recompute_overhead, remove_checkpointing)
from dslib.tune.sharing import share_mlp, shared_parameter_count, unique_parameter_count


def _grads(model, idx, mems=None):
    model.zero_grad(set_to_none=True)
    out = model(idx, mems=mems, targets=idx)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


def test_checkpointed_and_plain_gradients_are_equal():
    torch.manual_seed(0)
    model = TransformerXL(load_config("tiny", num_layers=4, dropout=0.1))
    idx = torch.randint(0, 512, (2, 32))
    first = model(idx)  # memories from a first segment: the checkpointed blocks take them too
    torch.manual_seed(1)
    plain_out, plain = _grads(model, idx, first.mems)
    assert apply_checkpointing(model, every=2) == [0, 2]
    torch.manual_seed(1)  # same dropout masks: non-reentrant checkpoint replays the RNG state
    ckpt_out, ckpt = _grads(model, idx, first.mems)
    assert torch.equal(plain_out.loss, ckpt_out.loss)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    remove_checkpointing(model)
    assert all("forward" not in block.__dict__ for block in model.blocks)


def _backward_recomputes(model, idx, mems, monkeypatch):
    """Per block: attention-module forwards and attention-core (_attend_last) calls that run during
    backward, i.e. recomputed; plus the loss and gradients."""
    counts = {"attn": [0] * len(model.blocks), "core": [0] * len(model.blocks)}
    phase = {"backward": False}
    owner = {id(block.attn): i for i, block in enumerate(model.blocks)}
    real_core = RelativeAttention._attend_last

    def counted_core(self, *args):
        if phase["backward"]:
            counts["core"][owner[id(self)]] += 1
        return real_core(self, *args)

    monkeypatch.setattr(RelativeAttention, "_attend_last", counted_core)  # before apply_*: they bind it
    handles = [block.attn.register_forward_hook(
        lambda _m, _i, _o, i=i: counts["attn"].__setitem__(i, counts["attn"][i] + phase["backward"]))
        for i, block in enumerate(model.blocks)]
    return counts, phase, handles


@pytest.mark.parametrize("scheme, k, recomputed_blocks, recomputed_cores", [
    ("every_kth", 4, [0, 4], [0, 4]),
    ("chunks", 4, list(range(8)), list(range(8))),
    ("chunks", 3, list(range(8)), list(range(8))),
    ("selective", None, [], list(range(8))),
])
def test_recompute_schemes_recompute_what_they_say_and_keep_the_gradients(scheme, k, recomputed_blocks,
                                                                          recomputed_cores, monkeypatch):
    torch.manual_seed(0)
    model = TransformerXL(load_config("tiny", num_layers=8, dropout=0.1))
    idx = torch.randint(0, 512, (2, 32))
    first = model(idx)  # memories: each block of a chunk must get its own
    torch.manual_seed(1)
    plain_out, plain = _grads(model, idx, first.mems)
    counts, phase, handles = _backward_recomputes(model, idx, first.mems, monkeypatch)
    apply_recompute(model, scheme, k)
    torch.manual_seed(1)  # same dropout masks: the recompute replays the RNG state
    model.zero_grad(set_to_none=True)
    out = model(idx, mems=first.mems, targets=idx)
    phase["backward"] = True
    out.loss.backward()
    for h in handles:
        h.remove()
    assert [i for i, c in enumerate(counts["attn"]) if c] == recomputed_blocks
    assert [i for i, c in enumerate(counts["core"]) if c] == recomputed_cores
    assert torch.equal(plain_out.loss, out.loss)
    for a, b in zip(plain_out.mems, out.mems):  # the loop stores the true layer inputs as memories
        assert torch.equal(a, b)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], rtol=1e-5, atol=1e-7, msg=name)
    remove_checkpointing(model)
    assert "_chunk_mems_hook" not in model.__dict__ and not model._forward_pre_hooks
    assert all("_attend_last" not in b.attn.__dict__ and "forward" not in b.__dict__ for b in model.blocks)


def test_a_chunk_member_called_outside_its_chunk_is_refused():
    model = TransformerXL(load_config("tiny", num_layers=4))
    assert apply_chunked_checkpointing(model, 2) == [[0, 1], [2, 3]]
    model(torch.randint(0, 512, (1, 8)))
    with pytest.raises(RuntimeError, match="inside a checkpointed chunk"):
        model.blocks[1](torch.zeros(1, 8, model.config.hidden_size), None, None)


def test_modelled_readings_order_memory_and_recompute():
    config = load_config("small", num_layers=8)
    none, kth, chunks, full = (modelled_activation_bytes(config, 8, k, scheme=s) for s, k in
                               (("every_kth", None), ("every_kth", 4), ("chunks", 4), ("every_kth", 1)))
    selective = modelled_activation_bytes(config, 8, None, scheme="selective")
    assert full < chunks < kth < none and selective < none
    assert modelled_recompute_overhead(config, 4, "chunks") == modelled_recompute_overhead(config, 1)
    assert 0 < modelled_recompute_overhead(config, None, "selective") < modelled_recompute_overhead(config, 4)
    assert apply_selective_recompute(TransformerXL(load_config("tiny", num_layers=3))) == [0, 1, 2]


def test_checkpointing_under_bf16_autocast_recomputes_like_the_forward():
    """Chapter 07's autocast upcasts softmax/LayerNorm through a torch function mode, which
    torch's checkpoint does not replay in backward by itself: the recompute must run under it too."""
    from dslib.train import precision

    torch.manual_seed(0)
    model = TransformerXL(load_config("tiny", num_layers=2))
    idx = torch.randint(0, 512, (2, 32))

    def grads():
        model.zero_grad(set_to_none=True)
        with precision.autocast(torch.device("cpu"), "bf16"):
            loss = model(idx, targets=idx).loss
        loss.backward()  # outside autocast, as in the Trainer: where the recompute runs
        return loss, {name: p.grad.clone() for name, p in model.named_parameters()}

    plain_loss, plain = grads()
    apply_checkpointing(model, every=1)
    ckpt_loss, ckpt = grads()  # raised CheckpointError (bf16 recompute vs FP32 saved) before the fix
    remove_checkpointing(model)
    assert torch.equal(plain_loss, ckpt_loss)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], msg=name)


def test_checkpointing_lowers_the_modelled_activations():
    config = load_config("small", num_layers=8)
    sizes = [modelled_activation_bytes(config, 8, k) for k in (1, 2, 4, 8, None)]
    assert sizes == sorted(sizes)


def test_shared_mlp_model_has_the_expected_parameter_count():
    config = load_config("tiny", num_layers=6)
    model = TransformerXL(config)
    assert unique_parameter_count(model) == count_parameters(config)
    assert share_mlp(model, group_size=4) == 2
    assert model.blocks[3].mlp is model.blocks[0].mlp and model.blocks[4].mlp is not model.blocks[0].mlp
    d, ff = config.hidden_size, config.intermediate_size
    assert unique_parameter_count(model) == shared_parameter_count(config, 4) == count_parameters(config) - 4 * 2 * d * ff
    out = model(torch.randint(0, 512, (2, 16)), targets=torch.randint(0, 512, (2, 16)))
    out.loss.backward()  # the shared weights collect the gradient of all layers of the group
    assert model.blocks[1].mlp.fc_in.weight.grad is model.blocks[0].mlp.fc_in.weight.grad


def test_powersgd_counted_bytes_match_the_matrix_shape_formula():
    from dslib.dist.launch import launch
    from dslib.tune.powersgd import compressed_elements, step_bytes

    runs = launch("dslib.studies.compression:compare_compression", nprocs=2, timeout=240,
                  kwargs={"ranks": [2], "steps": 4, "start_iter": 2, "batch_size": 2})
    plain, compressed = runs
    shapes = plain["shapes"]
    assert plain["bytes_per_step"] == [4 * sum(torch.Size(s).numel() for s in shapes)] * 4
    # warm-up steps are plain all-reduces, then (n + m) * r per compressed [n, m] matrix
    assert compressed["bytes_per_step"] == [step_bytes(shapes, None)] * 2 + [step_bytes(shapes, 2)] * 2
    assert compressed_elements((512, 64), 2) == (512 + 64) * 2 and compressed_elements((64,), 2) == 64
    assert step_bytes(shapes, None) / step_bytes(shapes, 2) > 10


def test_rank_for_one_sixteenth_follows_the_shapes():
    from dslib.tune.powersgd import rank_for_ratio, step_bytes

    shapes = [(512, 64), (64, 64), (256, 64), (64, 256), (64,)]
    r = rank_for_ratio(shapes, 16.0)
    assert step_bytes(shapes, None) / step_bytes(shapes, r) >= 16 > step_bytes(shapes, None) / step_bytes(shapes, r + 1)


def test_deepspeed_checkpoint_wraps_the_chosen_blocks_and_keeps_gradients(monkeypatch):
    import deepspeed

    calls = []
    real = deepspeed.checkpointing.checkpoint
    monkeypatch.setattr(deepspeed.checkpointing, "checkpoint", lambda fn, *args: calls.append(1) or real(fn, *args))
    torch.manual_seed(0)
    model = TransformerXL(load_config("tiny", num_layers=4))
    idx = torch.randint(0, 512, (2, 32))
    first = model(idx)
    plain_out, plain = _grads(model, idx, first.mems)
    assert apply_checkpointing(model, every=2, impl="deepspeed") == [0, 2]
    ckpt_out, ckpt = _grads(model, idx, first.mems)
    assert len(calls) == 2 and torch.equal(plain_out.loss, ckpt_out.loss)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_activation_checkpointing_section_is_validated_before_launch():
    import pytest

    from dslib.configs import ConfigError
    from dslib.dist.ds_config import load_ds_config

    with pytest.raises(ConfigError, match="contiguous_memory_optimization needs partition_activations"):
        load_ds_config("zero2", {"activation_checkpointing": {"contiguous_memory_optimization": True}})
    with pytest.raises(ConfigError, match="activation_checkpointing.partition_activation"):
        load_ds_config("zero2", {"activation_checkpointing": {"partition_activation": True}})  # typo


def test_deepspeed_checkpointing_under_zero2_on_two_ranks_gives_the_plain_gradients():
    from dslib.studies.ds_checkpointing import gradient_check

    # ds_partition: the 2 ranks act as one model-parallel group, each keeping half of every checkpoint
    diffs = gradient_check(["deepspeed", "ds_partition"], every=2, model_overrides={"num_layers": 4})
    n_params = len(list(TransformerXL(load_config("tiny", num_layers=4)).named_parameters()))
    for variant, per_param in diffs.items():
        assert len(per_param) == n_params
        assert max(per_param.values()) < 1e-5, (variant, max(per_param.items(), key=lambda kv: kv[1]))
