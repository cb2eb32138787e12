"""Chapter 09 tuning: checkpointing keeps gradients, sharing drops the right parameters,
PowerSGD's counted bytes follow (n + m) * r per compressed matrix."""
import torch

from dslib.model import TransformerXL, count_parameters, load_config
from dslib.tune.checkpointing import apply_checkpointing, modelled_activation_bytes, remove_checkpointing
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

    runs = launch("dslib.tune.powersgd:compare_compression", nprocs=2, timeout=240,
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
    from pydantic import ValidationError

    from dslib.dist.ds_config import load_ds_config

    with pytest.raises(ValidationError, match="contiguous_memory_optimization needs partition_activations"):
        load_ds_config("zero2", {"activation_checkpointing": {"contiguous_memory_optimization": True}})
    with pytest.raises(ValidationError, match="activation_checkpointing.partition_activation"):
        load_ds_config("zero2", {"activation_checkpointing": {"partition_activation": True}})  # typo


def test_deepspeed_checkpointing_under_zero2_on_two_ranks_gives_the_plain_gradients():
    from dslib.tune.ds_checkpointing import gradient_check

    # ds_partition: the 2 ranks act as one model-parallel group, each keeping half of every checkpoint
    diffs = gradient_check(["deepspeed", "ds_partition"], every=2, model_overrides={"num_layers": 4})
    n_params = len(list(TransformerXL(load_config("tiny", num_layers=4)).named_parameters()))
    for variant, per_param in diffs.items():
        assert len(per_param) == n_params
        assert max(per_param.values()) < 1e-5, (variant, max(per_param.items(), key=lambda kv: kv[1]))
