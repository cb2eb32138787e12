"""Communication per training step: ring collectives, volumes per ZeRO stage, alpha-beta time, overlap.

Ring algorithms (Patarasuk & Yuan 2009; NCCL): over n ranks, a reduce-scatter or an all-gather of
an M-byte buffer sends (n-1)/n * M bytes per rank in n-1 steps; an all-reduce is one of each,
2(n-1)/n * M in 2(n-1) steps. Alpha-beta model (Hockney): time = steps * alpha + bytes / beta.
Per step (ZeRO paper, Rajbhandari et al. 2020, sec. 7): data parallel all-reduces the gradients
(2 Psi per rank); stages 1 and 2 reduce-scatter gradients and all-gather the updated weights
(also 2 Psi); stage 3 all-gathers the weights in forward and again in backward and
reduce-scatters the gradients (3 Psi, 1.5x).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from dslib.plan import flops

# The share of a step's compute that is the backward pass (2 of 6N): gradient traffic can hide there.
BACKWARD_SHARE = 2 / 3


@dataclass(frozen=True)
class Link:
    """An interconnect: achievable per-rank bandwidth (bytes/s, one direction) and per-step latency."""

    name: str
    bandwidth: float
    latency: float
    note: str = ""


# Achievable bandwidth ~75-90% of nominal, as NCCL's bus bandwidth reports it; latency per ring step.
LINKS: dict[str, Link] = {link.name: link for link in [
    Link("NVLink4 (H100)", 360e9, 3e-6, "nominal 450 GB/s per direction (18 links x 25 GB/s)"),
    Link("NVLink3 (A100)", 230e9, 3e-6, "nominal 300 GB/s per direction (12 links x 25 GB/s)"),
    Link("PCIe 4.0 x16", 20e9, 5e-6, "nominal 32 GB/s; peer traffic through the host bridge"),
    Link("InfiniBand NDR 400G", 45e9, 5e-6, "one 400 Gb/s NIC per GPU (50 GB/s nominal)"),
    Link("InfiniBand HDR 200G", 22e9, 5e-6, "one 200 Gb/s NIC per GPU (25 GB/s nominal)"),
    Link("Ethernet 100G RoCE", 11e9, 10e-6, "100 Gb/s (12.5 GB/s nominal), RDMA"),
    Link("Ethernet 10G TCP", 1.1e9, 50e-6, "10 Gb/s (1.25 GB/s nominal), kernel TCP"),
    Link("NVLink (H800)", 160e9, 3e-6, "400 GB/s bidirectional nominal (H800's cut NVLink); "
         "160 GB/s achievable as the DeepSeek-V3 report states (sec. 3.2.2)"),
]}

COLLECTIVES = ("all_reduce", "reduce_scatter", "all_gather")


def get_link(name: str) -> Link:
    """A link of the table by name; an unknown name is an error listing the known ones."""
    if name not in LINKS:
        raise ValueError(f"unknown link {name!r}; known: {', '.join(LINKS)}")
    return LINKS[name]


def _check(n_ranks: int, message_bytes: float) -> None:
    if n_ranks < 1:
        raise ValueError(f"n_ranks must be >= 1, got {n_ranks}")
    if message_bytes < 0:
        raise ValueError(f"message_bytes must be >= 0, got {message_bytes}")


def ring_steps(collective: str, n_ranks: int) -> int:
    """Sequential send/receive steps of a ring collective."""
    if collective not in COLLECTIVES:
        raise ValueError(f"unknown collective {collective!r}; known: {', '.join(COLLECTIVES)}")
    return (2 if collective == "all_reduce" else 1) * (n_ranks - 1)


def ring_bytes_per_rank(collective: str, message_bytes: float, n_ranks: int) -> float:
    """Bytes each rank sends (and receives) in a ring collective over an M-byte buffer."""
    _check(n_ranks, message_bytes)
    return ring_steps(collective, n_ranks) * message_bytes / n_ranks


def collective_time(collective: str, message_bytes: float, n_ranks: int, link: Link,
                    messages: int = 1) -> float:
    """Alpha-beta time of one ring collective, the buffer split into ``messages`` calls (buckets)."""
    volume = ring_bytes_per_rank(collective, message_bytes, n_ranks)
    return messages * ring_steps(collective, n_ranks) * link.latency + volume / link.bandwidth


def step_collectives(n_params: float, zero_stage: int, grad_bytes: int = 2,
                     param_bytes: int = 2) -> list[tuple[str, str, float]]:
    """(what, collective, buffer bytes) of one optimizer step under data parallel or a ZeRO stage."""
    if n_params <= 0:
        raise ValueError(f"n_params must be positive, got {n_params}")
    grads, weights = n_params * grad_bytes, n_params * param_bytes
    if zero_stage == 0:
        return [("gradients", "all_reduce", grads)]
    if zero_stage in (1, 2):
        return [("gradients", "reduce_scatter", grads), ("updated weights", "all_gather", weights)]
    if zero_stage == 3:
        return [("forward weights", "all_gather", weights), ("backward weights", "all_gather", weights),
                ("gradients", "reduce_scatter", grads)]
    raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")


def step_volume(n_params: float, zero_stage: int, n_ranks: int, grad_bytes: int = 2,
                param_bytes: int = 2) -> float:
    """Bytes each rank sends per step: 2(n-1)/n Psi for DP and stages 1-2, 3(n-1)/n Psi for stage 3."""
    return sum(ring_bytes_per_rank(kind, size, n_ranks)
               for _, kind, size in step_collectives(n_params, zero_stage, grad_bytes, param_bytes))


def step_comm_time(n_params: float, zero_stage: int, n_ranks: int, link: Link,
                   grad_bytes: int = 2, param_bytes: int = 2, messages: int = 1) -> float:
    """Seconds of communication per step, nothing overlapped, one ring over ``link``."""
    return sum(collective_time(kind, size, n_ranks, link, messages)
               for _, kind, size in step_collectives(n_params, zero_stage, grad_bytes, param_bytes))


def hierarchical_collective_time(collective: str, message_bytes: float, gpus_per_node: int,
                                 num_nodes: int, intra: Link, inter: Link) -> float:
    """A collective over nodes of several GPUs, as NCCL runs it across a fabric with one NIC per GPU.

    All-reduce: reduce-scatter inside the node (intra link), all-reduce of each GPU's 1/g shard
    between nodes (inter link, the g rails in parallel), all-gather inside the node. A
    reduce-scatter or all-gather is the matching half of that.
    """
    shard = message_bytes / gpus_per_node
    intra_rs = collective_time("reduce_scatter", message_bytes, gpus_per_node, intra)
    intra_ag = collective_time("all_gather", message_bytes, gpus_per_node, intra)
    inter_time = collective_time(collective, shard, num_nodes, inter)
    if collective == "all_reduce":
        return intra_rs + inter_time + intra_ag
    return inter_time + (intra_rs if collective == "reduce_scatter" else intra_ag)


def hierarchical_step_comm_time(n_params: float, zero_stage: int, gpus_per_node: int, num_nodes: int,
                                intra: Link, inter: Link, grad_bytes: int = 2, param_bytes: int = 2) -> float:
    """Seconds of communication per step on a multi-node cluster (NVLink inside, a NIC per GPU between)."""
    return sum(hierarchical_collective_time(kind, size, gpus_per_node, num_nodes, intra, inter)
               for _, kind, size in step_collectives(n_params, zero_stage, grad_bytes, param_bytes))


def overlapped_step(compute_s: float, comm_s: float, overlap: float = 0.0) -> dict[str, float]:
    """Step time when communication can run during ``overlap`` x compute (0: none, 2/3: backward).

    Exposed communication is what does not fit under the overlappable compute; the overhead
    fraction is exposed / step, the share of the step spent waiting on the network.
    """
    if not 0 <= overlap <= 1:
        raise ValueError(f"overlap must be in [0, 1], got {overlap}")
    exposed = max(0.0, comm_s - overlap * compute_s)
    step = compute_s + exposed
    return {"compute_s": compute_s, "comm_s": comm_s, "exposed_comm_s": exposed,
            "step_s": step, "overhead_fraction": exposed / step}


@dataclass(frozen=True)
class CommSetting:
    """A data-parallel training step on identical devices; defaults: the article's 10B on 8x A100."""

    n_params: float = 10e9
    layers: int = 48
    hidden: int = 4096
    seq_len: int = 2048
    n_devices: int = 8
    link: Link = LINKS["NVLink3 (A100)"]
    peak_flops: float = flops.PEAK_FLOPS["A100 bf16"]
    mfu: float = 0.5

    @property
    def flops_per_token(self) -> float:
        return flops.training_flops_per_token(self.n_params, self.layers, self.hidden, self.seq_len)

    def comm_s(self, zero_stage: int) -> float:
        return step_comm_time(self.n_params, zero_stage, self.n_devices, self.link)

    def compute_s(self, tokens_per_device: float) -> float:
        return flops.step_compute_time(tokens_per_device, self.flops_per_token, self.peak_flops, self.mfu)

    def overhead(self, tokens_per_device: float, zero_stage: int, overlap: float) -> float:
        step = overlapped_step(self.compute_s(tokens_per_device), self.comm_s(zero_stage), overlap)
        return step["overhead_fraction"]

    def tokens_for_overhead(self, target: float, zero_stage: int, overlap: float = 0.0) -> float:
        """Tokens per device and step at which exposed communication is ``target`` of the step.

        From f = (C - oT) / (T + C - oT): T = C (1 - f) / (f + o (1 - f)).
        """
        compute = self.comm_s(zero_stage) * (1 - target) / (target + overlap * (1 - target))
        return compute * self.peak_flops * self.mfu / self.flops_per_token

    def with_link(self, link: Link) -> "CommSetting":
        return replace(self, link=link)


def fit_alpha_beta(sizes: list[float], seconds: list[float], collective: str,
                   n_ranks: int) -> Link:
    """Least-squares alpha (per ring step) and beta (bytes/s) from timed collectives of several sizes."""
    import numpy as np

    steps = ring_steps(collective, n_ranks)
    volume = np.array([ring_bytes_per_rank(collective, s, n_ranks) for s in sizes])
    times = np.asarray(seconds, dtype=float)
    # relative residuals: small messages (latency) weigh as much as large ones (bandwidth)
    design = np.stack([np.full_like(volume, steps), volume], axis=1) / times[:, None]
    (alpha, inv_beta), *_ = np.linalg.lstsq(design, np.ones_like(times), rcond=None)
    if inv_beta <= 0:
        raise ValueError("timings do not grow with size: cannot fit a bandwidth")
    return Link("measured loopback (gloo)", float(1 / inv_beta), float(max(alpha, 0.0)),
                f"fit over {len(sizes)} sizes, {n_ranks} ranks")
