"""dslib.plan: memory model against DeepSpeed's estimators, activation formula, comm volumes, FLOPs."""
from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from dslib.plan import comm, flops, memory
from dslib.studies import planning_claims as claims

ds_zero2 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")
ds_zero3 = pytest.importorskip("deepspeed.runtime.zero.stage3")

PARAMS = [125_000_000, 1_300_000_000, 10**10, 175 * 10**9]
LAYOUTS = [(1, 1), (8, 1), (4, 2), (8, 16)]  # (gpus_per_node, num_nodes)


@pytest.mark.parametrize("n_params,layout,offload", list(itertools.product(PARAMS, LAYOUTS, [False, True])))
def test_zero2_matches_deepspeed_estimator(n_params, layout, offload):
    gpus, nodes = layout
    ds_cpu, ds_gpu = ds_zero2.estimate_zero2_model_states_mem_needs(
        n_params, num_gpus_per_node=gpus, num_nodes=nodes, cpu_offload=offload)
    ours = memory.model_states(n_params, zero_stage=2, gpus_per_node=gpus, num_nodes=nodes,
                               offload_optimizer="cpu" if offload else "none")
    assert ours.device_total == pytest.approx(ds_gpu, abs=1)
    if nodes == 1 or not offload:  # DeepSpeed's stage-2 offload CPU term ignores the node count
        assert ours.cpu_per_node == pytest.approx(ds_cpu, abs=1)
    else:
        assert ours.cpu_per_node <= ds_cpu


ZERO3_OFFLOADS = [("none", "none"), ("cpu", "none"), ("cpu", "cpu")]


@pytest.mark.parametrize("n_params,layout,offloads,zero_init",
                         list(itertools.product(PARAMS, LAYOUTS, ZERO3_OFFLOADS, [True, False])))
def test_zero3_matches_deepspeed_estimator(n_params, layout, offloads, zero_init):
    gpus, nodes = layout
    largest = n_params // 50
    optimizer_offload, param_offload = offloads
    ds_cpu, ds_gpu, ds_largest = ds_zero3.estimate_zero3_model_states_mem_needs(
        n_params, largest, num_gpus_per_node=gpus, num_nodes=nodes, cpu_offload=optimizer_offload == "cpu",
        cpu_offload_params=param_offload == "cpu", zero_init=zero_init)
    fields = dict(zero_stage=3, gpus_per_node=gpus, num_nodes=nodes, largest_layer_params=largest,
                  offload_optimizer=optimizer_offload, offload_param=param_offload, zero_init=zero_init)
    as_deepspeed = memory.model_states(n_params, stage3_grad_partition=False, **fields)
    assert as_deepspeed.device_total == pytest.approx(ds_gpu, abs=1)
    assert as_deepspeed.device["working_layer"] == ds_largest
    assert as_deepspeed.cpu_per_node == pytest.approx(ds_cpu, abs=1)
    # the 16-bit gradient partition the engine allocates is the one named difference
    real = memory.model_states(n_params, **fields)
    extra = 2 * n_params / (gpus * nodes)
    if optimizer_offload == "none":
        assert real.device_total - as_deepspeed.device_total == pytest.approx(extra)
    else:
        assert real.offloaded["grads"] == pytest.approx(extra)


# the whole grid: 1e8-1e11 parameters, 1-512 GPUs as nodes x GPUs per node, a small and a large largest layer
GRID_PARAMS = [10**8, 3 * 10**8 + 7, 10**9, 10**10, 10**11]
GRID_LAYOUTS = [(g, n) for g in (1, 2, 4, 8, 16) for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if g * n <= 512]


def deepspeed_grid():
    """(DeepSpeed's (cpu, gpu) called directly, the same case's model_states fields) over the grid."""
    for n_params, (gpus, nodes) in itertools.product(GRID_PARAMS, GRID_LAYOUTS):
        layout, ds_layout = dict(gpus_per_node=gpus, num_nodes=nodes), dict(num_gpus_per_node=gpus, num_nodes=nodes)
        for offload in (False, True):
            yield (ds_zero2.estimate_zero2_model_states_mem_needs(n_params, cpu_offload=offload, **ds_layout),
                   dict(n_params=n_params, zero_stage=2, offload_optimizer="cpu" if offload else "none", **layout))
        for largest, (optimizer, param), zero_init in itertools.product(
                (n_params // 10_000, n_params // 50), ZERO3_OFFLOADS, (True, False)):
            ds_cpu, ds_gpu, _ = ds_zero3.estimate_zero3_model_states_mem_needs(
                n_params, largest, cpu_offload=optimizer == "cpu", cpu_offload_params=param == "cpu",
                zero_init=zero_init, **ds_layout)
            yield (ds_cpu, ds_gpu), dict(n_params=n_params, zero_stage=3, largest_layer_params=largest,
                                         offload_optimizer=optimizer, offload_param=param, zero_init=zero_init, **layout)


def test_peak_as_deepspeed_reproduces_its_estimators_on_the_whole_grid():
    """To the byte (DeepSpeed truncates to int) on every case, CPU per node included."""
    cases, wrong = 0, []
    for (ds_cpu, ds_gpu), fields in deepspeed_grid():
        ours = memory.model_states(**fields, **memory.AS_DEEPSPEED)
        cases += 1
        if abs(ours.device_total - ds_gpu) >= 1 or abs(ours.cpu_per_node - ds_cpu) >= 1:
            wrong.append((fields, (ours.cpu_per_node, ds_cpu), (ours.device_total, ds_gpu)))
    assert cases == 5 * len(GRID_LAYOUTS) * 14 and not wrong, f"{len(wrong)} of {cases}: {wrong[:3]}"


@pytest.mark.parametrize("layout", [(8, 8), (8, 64), (16, 32), (1, 512)])
def test_compare_with_deepspeed_agrees_at_many_nodes(layout):
    """64 and 512 GPUs: where the stage-2 offload and stage-3 zero_init CPU formulas part."""
    gpus, nodes = layout
    for n_params in (10**8, 10**11):
        for row in memory.compare_with_deepspeed(n_params, n_params // 50, gpus_per_node=gpus, num_nodes=nodes):
            assert row["ours_as_deepspeed_cpu"] == pytest.approx(row["deepspeed_cpu"], abs=1), row
            assert row["ours_as_deepspeed_gpu"] == pytest.approx(row["deepspeed_gpu"], abs=1), row


def test_where_deepspeed_cpu_estimates_part_from_the_model():
    """ZeRO-2 + offload: DeepSpeed's max(4 x all GPUs, 16) B/param per node grows with the node
    count; the states split over nodes. ZeRO-3 + offload under zero_init: it leaves out the
    init load of the largest layer that its own no-offload branch counts."""
    zero2 = dict(zero_stage=2, offload_optimizer="cpu", gpus_per_node=8)
    per_node = [memory.model_states(10**9, num_nodes=n, **zero2).cpu_per_node for n in (1, 8, 64)]
    assert per_node == pytest.approx([4 * 8 * 10**9 * 1.5] * 3)  # the node's own 8 init loads
    as_ds = [memory.model_states(10**9, num_nodes=n, **zero2, **memory.AS_DEEPSPEED).cpu_per_node for n in (1, 8, 64)]
    assert as_ds == pytest.approx([max(4 * 8 * n, 16) * 10**9 * 1.5 for n in (1, 8, 64)])
    zero3 = dict(zero_stage=3, offload_optimizer="cpu", gpus_per_node=8, num_nodes=64, largest_layer_params=2 * 10**7)
    assert memory.model_states(10**9, **zero3).cpu_per_node == pytest.approx(4 * 2e7 * 8 * 1.5)  # init load
    assert memory.model_states(10**9, **zero3, **memory.AS_DEEPSPEED).cpu_per_node == pytest.approx(16e9 / 64 * 1.5)


def test_zero_paper_bytes_per_param():
    """ZeRO paper fig. 1: 16 B/param for mixed-precision Adam under DP; stage 3 divides it all."""
    psi, n = 7.5e9, 64
    dp = memory.model_states(int(psi), stage3_grad_partition=False, zero_stage=3, gpus_per_node=1)
    # 2 + 2 + 12 (paper) + DeepSpeed's 4-byte fp32 gradient copy - the 16-bit gradient partition
    assert dp.device_total == pytest.approx(18 * psi)
    paper = memory.state_bytes_per_param("adamw", "mixed")
    assert paper["params"] + paper["grads"] + paper["master"] + paper["optimizer"] == 16
    s3 = memory.model_states(int(psi), zero_stage=3, gpus_per_node=n)
    assert s3.device_total == pytest.approx(20 * psi / n)
    # the paper's own accounting reproduces its figure 1 (7.5B params, 64 devices): 120, 31.4, 16.6, 1.9 GB
    figure1 = [row["paper"] / 1e9 for row in memory.accounting_rows(int(psi), gpus_per_node=n)]
    assert figure1 == pytest.approx([120, 31.4, 16.6, 1.9], abs=0.05)


@pytest.mark.parametrize("precision", ["mixed", "fp32"])
@pytest.mark.parametrize("offload", ["none", "cpu"])
def test_before_step_stage1_holds_what_stage2_holds(precision, offload):
    """DeepSpeed reduces ZeRO-1's gradients into its partition before the step, like ZeRO-2; the
    fp32 gradient copy appears only inside step() (persistent only as the offloaded CPU partition)."""
    fields = dict(precision=precision, gpus_per_node=8, offload_optimizer=offload, accounting="before_step")
    s1, s2 = (memory.model_states(10**9, zero_stage=s, **fields) for s in (1, 2))
    assert (s1.device, s1.offloaded) == (s2.device, s2.offloaded)
    assert ("grads_fp32" in s1.offloaded) == (offload == "cpu") and "grads_fp32" not in s1.device
    peak = memory.model_states(10**9, zero_stage=1, **dict(fields, accounting="peak"))
    full_grads = (2 if precision == "mixed" else 4) * 10**9
    assert peak.device["grads"] == full_grads  # stage 1 at the end of backward: every gradient
    s3 = memory.model_states(10**9, zero_stage=3, largest_layer_params=10**7, **fields)
    assert "working_layer" not in s3.device  # released after backward


def test_peak_bounds_the_other_accountings():
    for row in memory.accounting_rows(10**9, gpus_per_node=8, largest_layer_params=10**7):
        assert max(row["paper"], row["before_step"]) <= row["peak"]


@pytest.mark.parametrize("offload", ["none", "cpu"])
def test_zero_stages_never_increase_device_memory(offload):
    for n_params, gpus in itertools.product(PARAMS, [2, 8, 64]):
        totals = []
        for stage in (1, 2, 3):
            totals.append(memory.model_states(n_params, zero_stage=stage, gpus_per_node=gpus,
                                              offload_optimizer=offload).device_total)
        base = memory.model_states(n_params, zero_stage=0, gpus_per_node=gpus).device_total
        assert base >= totals[0] >= totals[1] >= totals[2]
        assert totals[2] < totals[0]


def test_optimizer_and_precision_bytes():
    fp32 = memory.state_bytes_per_param("adamw", "fp32")
    assert sum(fp32.values()) == 16
    assert sum(memory.state_bytes_per_param("lion", "fp32").values()) == 12
    assert sum(memory.state_bytes_per_param("sgd", "fp32").values()) == 8
    assert sum(memory.state_bytes_per_param("adamw", "mixed").values()) == 20
    # DeepSpeed's ZeRO-1/2 optimizer clones an fp32 master partition even of fp32 weights
    assert sum(memory.state_bytes_per_param("adamw", "fp32", zero_stage=2).values()) == 24
    # and so does stage 3 (fp32_partitioned_groups_flat is its own storage, measured in chapter 05)
    assert memory.state_bytes_per_param("adamw", "fp32", zero_stage=3)["master"] == 4
    assert memory.state_bytes_per_param("adamw", "fp32", zero_stage=3, accounting="paper")["master"] == 0
    fp32_z3 = memory.model_states(8 * 10**6, precision="fp32", zero_stage=3, gpus_per_node=2)
    assert fp32_z3.device_total == pytest.approx((4 + 4 + 4 + 4 + 8) * 4 * 10**6)
    held = memory.model_states(8 * 10**6, precision="fp32", zero_stage=3, gpus_per_node=2, accounting="before_step")
    assert held.device_total == pytest.approx((4 + 4 + 4 + 8) * 4 * 10**6)  # no fp32 gradient copy yet


def test_offload_moves_states_off_the_device():
    on = memory.model_states(10**9, zero_stage=3, gpus_per_node=8)
    off = memory.model_states(10**9, zero_stage=3, gpus_per_node=8, offload_optimizer="nvme",
                              offload_param="nvme")
    assert set(off.device) == {"working_layer"}
    assert off.nvme_per_node == pytest.approx(sum(on.device.values()) * 8)


@pytest.mark.parametrize("bad,name", [
    (dict(n_params=-5), "n_params"),
    (dict(optimizer="adagrad"), "optimizer"),
    (dict(zero_stage=4), "zero_stage"),
    (dict(precision="fp8"), "precision"),
    (dict(gpus_per_node=0), "gpus_per_node"),
    (dict(offload_param="cpu", zero_stage=2), "offload_param"),
    (dict(offload_optimizer="cpu", zero_stage=0), "offload_optimizer"),
    (dict(offload_optimizer="nvme", zero_stage=2), "offload_optimizer"),
])
def test_bad_plan_names_the_field(bad, name):
    fields = dict(n_params=10**6) | bad
    with pytest.raises(ValidationError, match=name):
        memory.model_states(**fields)


def test_bad_activation_shape_names_the_field():
    with pytest.raises(ValidationError, match="micro_batch"):
        memory.activation_memory(seq_len=128, micro_batch=-1, hidden=64, heads=4, layers=2)


def test_activation_formula_is_korthikanti():
    s, b, h, a, layers = 2048, 4, 4096, 32, 2
    acts = memory.activation_memory(seq_len=s, micro_batch=b, hidden=h, heads=a, layers=layers)
    assert acts["layers"] == layers * (34 * s * b * h + 5 * a * s * s * b)


def test_checkpointing_keeps_only_layer_inputs():
    shape = dict(seq_len=512, micro_batch=8, hidden=1024, heads=16, layers=24)
    full = memory.activation_memory(**shape)
    ckpt = memory.activation_memory(**shape, checkpointing=True)
    assert ckpt["layer_inputs"] == 2 * 512 * 8 * 1024 * 24  # one 16-bit s*b*h input per layer
    assert ckpt["recompute_layer"] == full["layers"] / 24
    assert sum(ckpt.values()) < sum(full.values()) / 5


def test_memory_length_grows_attention_over_s_plus_mem():
    shape = dict(seq_len=512, micro_batch=2, hidden=1024, heads=16, layers=1, dropout=True)
    base = memory.layer_activation_bytes(memory.ActivationShape(**shape))
    with_mem = memory.layer_activation_bytes(memory.ActivationShape(**shape, memory_length=512))
    s, b, h, a, m = 512, 2, 1024, 16, 512
    assert with_mem - base == 6 * m * b * h + 5 * a * s * m * b


def test_fp32_activations_cost_about_twice():
    shape = dict(seq_len=1024, micro_batch=4, hidden=2048, heads=16, layers=4)
    half = sum(memory.activation_memory(**shape).values())
    full = sum(memory.activation_memory(**shape, element_bytes=4).values())
    assert 1.8 < full / half < 2.0  # dropout masks stay 1 byte


def test_buffers_follow_deepspeed_defaults():
    assert memory.buffer_bytes(1000, 0) == {"ddp_buckets": 2000.0}
    assert memory.buffer_bytes(1000, 2) == {"reduce_bucket": 1e9}  # 5e8 elements, whatever the model
    assert memory.buffer_bytes(1000, 2, overlap_comm=True) == {"reduce_bucket": 2e9}
    assert memory.buffer_bytes(1000, 3) == {"reduce_bucket": 2e9, "prefetch_bucket": 2000.0}
    with pytest.raises(ValueError, match="zero_stage"):
        memory.buffer_bytes(1000, 4)


def test_ring_allreduce_volume():
    # 2(n-1)/n of the buffer per rank, in 2(n-1) steps
    assert comm.ring_bytes_per_rank("all_reduce", 1000, 4) == 1500
    assert comm.ring_bytes_per_rank("all_gather", 1000, 4) == 750
    assert comm.ring_steps("all_reduce", 8) == 14
    assert comm.ring_bytes_per_rank("all_reduce", 1000, 1) == 0
    with pytest.raises(ValueError, match="broadcast"):
        comm.ring_steps("broadcast", 4)


def test_zero_stage_volumes_follow_the_paper():
    psi, n = 1e9, 8
    dp = comm.step_volume(psi, 0, n)
    assert dp == pytest.approx(2 * (n - 1) / n * 2 * psi)  # 2 Psi elements of 2 bytes
    assert comm.step_volume(psi, 1, n) == pytest.approx(dp)
    assert comm.step_volume(psi, 2, n) == pytest.approx(dp)
    assert comm.step_volume(psi, 3, n) == pytest.approx(1.5 * dp)
    with pytest.raises(ValueError, match="zero_stage"):
        comm.step_volume(psi, 4, n)


def test_alpha_beta_time_and_overlap():
    link = comm.Link("test", bandwidth=1e9, latency=1e-5)
    t = comm.collective_time("all_reduce", 4e9, 2, link)
    assert t == pytest.approx(2 * 1e-5 + 4e9 / 1e9)
    hidden = comm.overlapped_step(compute_s=3.0, comm_s=1.0, overlap=comm.BACKWARD_SHARE)
    assert hidden["exposed_comm_s"] == 0 and hidden["overhead_fraction"] == 0
    exposed = comm.overlapped_step(compute_s=3.0, comm_s=1.0, overlap=0.0)
    assert exposed["overhead_fraction"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="overlap"):
        comm.overlapped_step(1.0, 1.0, overlap=1.5)


def test_fit_alpha_beta_recovers_the_link():
    truth = comm.Link("truth", bandwidth=3e9, latency=2e-5)
    sizes = [2**k for k in range(10, 26, 3)]
    seconds = [comm.collective_time("all_reduce", s, 2, truth) for s in sizes]
    fitted = comm.fit_alpha_beta(sizes, seconds, "all_reduce", 2)
    assert fitted.bandwidth == pytest.approx(3e9, rel=1e-6)
    assert fitted.latency == pytest.approx(2e-5, rel=1e-6)


def test_training_flops_and_time():
    n, layers, h, s = 1e9, 24, 2048, 2048
    per_token = flops.training_flops_per_token(n, layers, h, s)
    assert per_token == 6 * n + 12 * layers * h * s
    assert flops.training_flops_per_token(n, layers, h, s, memory_length=s) == 6 * n + 12 * layers * h * 2 * s
    assert flops.training_flops_per_token(n, layers, h, s, recompute=True) == pytest.approx(per_token * 4 / 3)
    seconds = flops.train_time(1e12, per_token, 8, 312e12, 0.5)
    assert seconds == pytest.approx(1e12 * per_token / (8 * 312e12 * 0.5))
    assert flops.model_flops_utilisation(1e12 / seconds, per_token, 8, 312e12) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="layers"):
        flops.training_flops_per_token(n, -1, h, s)


def test_mixed_precision_saving_needs_activations():
    shape = dict(seq_len=512, hidden=1024, heads=16, layers=18, memory_length=512, vocab_size=32000)
    rows = claims.mixed_precision_rows(250_000_000, shape, [1, 8, 64])
    savings = [r["mixed_saving"] for r in rows]
    assert savings == sorted(savings) and max(savings) < 0.49  # only activations shrink
    states_only = claims.mixed_precision_rows(10**10, dict(shape, layers=1, vocab_size=0), [1])[0]
    assert states_only["mixed_saving"] < 0  # 20 B/param against fp32's 16


def _decide(check):
    """The engine's verdict on a check's rows, as if a full run had recorded them."""
    from dataclasses import replace

    from dslib import claims as engine

    rows = [replace(engine.make_evidence(check.claim_id, **e), origin="full") for e in check.evidence]
    return engine.decide(engine.load_claims()[check.claim_id], rows), rows


def test_comm_overhead_rows_follow_the_ring_model_by_hand():
    setting = comm.CommSetting()
    check = claims.comm_overhead_evidence(setting)
    row = next(r for r in check.rows if (r["tokens_per_gpu"], r["zero_stage"], r["overlap"]) == (2048, 2, 0.35))
    # by hand: reduce-scatter of the bf16 gradients + all-gather of the bf16 weights over an 8-GPU ring
    n, psi, link = 8, 10e9, comm.LINKS["NVLink3 (A100)"]
    comm_s = 2 * ((n - 1) * link.latency + (n - 1) / n * 2 * psi / link.bandwidth)
    flops_per_token = 6 * psi + 12 * 48 * 4096 * 2048
    compute_s = 2048 * flops_per_token / (312e12 * 0.5)
    exposed = max(0.0, comm_s - 0.35 * compute_s)
    assert row["before"] == pytest.approx(comm_s / (compute_s + comm_s))
    assert row["after"] == pytest.approx(exposed / (compute_s + exposed))
    assert len(check.evidence) == len(claims.COMM_TOKENS) * 2 * len(claims.COMM_OVERLAPS)


def test_comm_35_to_18_needs_less_than_one_sequence_per_gpu():
    check = claims.comm_overhead_evidence(comm.CommSetting(mfu=0.4))
    # from one 2048-token sequence per GPU on, no setting starts anywhere near 35%
    assert max(r["before"] for r in check.rows if r["tokens_per_gpu"] >= 2048) < 0.2
    decision, _ = _decide(check)
    assert decision.verdict == "holds only when" and "tokens_per_gpu = 512" in decision.when, decision


def test_zero3_1_2tb_and_320gb_need_two_different_readings():
    check = claims.zero3_evidence(100e9, (8, 32))
    readings = claims.zero3_readings()
    assert readings["fp32 master + Adam (ZeRO paper K=12)"] * 100e9 == pytest.approx(1.2e12)
    paper5 = next(e for e in check.evidence if e["conditions"] == {
        "before": "ZeRO paper 2+2+12", "after": "ZeRO paper 2+2+12 / devices", "devices": 5})
    assert paper5["value"]["after_GB"] == pytest.approx(320)
    decision, rows = _decide(check)
    met = [r.conditions for r, status in zip(rows, decision.status) if status == "meets"]
    assert met and all(c["before"].startswith("fp32 master") and not c["after"].startswith("fp32 master") for c in met)
    assert decision.verdict == "holds only when" and all(c["devices"] in (5, 6) for c in met)


def test_compare_with_deepspeed_rows_agree():
    for row in memory.compare_with_deepspeed(10**10, 10**8, gpus_per_node=8):
        assert row["ours_as_deepspeed_gpu"] == pytest.approx(row["deepspeed_gpu"], abs=1)
        assert row["ours_as_deepspeed_cpu"] == pytest.approx(row["deepspeed_cpu"], abs=1)


def test_loopback_measurement_fits_a_link():
    from dslib.studies.resource_planning import measure_loopback_link

    link, timings = measure_loopback_link([4096, 1 << 24], repeats=5)
    assert set(timings) == {4096, 1 << 24} and all(t > 0 for t in timings.values())
    assert link.bandwidth > 0 and link.latency >= 0 and "loopback" in link.name


def test_hierarchical_collectives_reduce_to_flat_rings():
    nvlink, ib = comm.LINKS["NVLink3 (A100)"], comm.LINKS["InfiniBand HDR 200G"]
    for kind in comm.COLLECTIVES:
        one_node = comm.hierarchical_collective_time(kind, 1e9, 8, 1, nvlink, ib)
        one_gpu = comm.hierarchical_collective_time(kind, 1e9, 1, 8, nvlink, ib)
        assert one_node == pytest.approx(comm.collective_time(kind, 1e9, 8, nvlink))
        assert one_gpu == pytest.approx(comm.collective_time(kind, 1e9, 8, ib))
    # 4 nodes of 8: the slow link carries only 1/8 of the buffer per GPU
    hier = comm.hierarchical_step_comm_time(1e9, 0, 8, 4, nvlink, ib)
    assert comm.step_comm_time(1e9, 0, 32, nvlink) < hier < comm.step_comm_time(1e9, 0, 32, ib)


def test_unknown_link_is_named():
    with pytest.raises(ValueError, match="Token Ring"):
        comm.get_link("Token Ring")


def test_zero_partition_bytes_divide_what_each_stage_partitions():
    from dslib.studies.planning_plots import zero_partition_bytes

    per_rank, full = zero_partition_bytes(10**8, 4)
    assert full == {"params": 2e8, "grads": 2e8, "master": 4e8, "optimizer": 8e8}
    shares = {stage: {c: ranks[0][c] / full[c] for c in full} for stage, ranks in per_rank.items()}
    assert list(shares) == ["DP (stage 0)", "ZeRO-1", "ZeRO-2", "ZeRO-3"]
    assert shares["DP (stage 0)"] == {c: 1.0 for c in full}
    assert shares["ZeRO-1"] == {"params": 1.0, "grads": 1.0, "master": 0.25, "optimizer": 0.25}
    assert shares["ZeRO-2"]["grads"] == 0.25 and shares["ZeRO-2"]["params"] == 1.0
    assert shares["ZeRO-3"] == {c: 0.25 for c in full}
