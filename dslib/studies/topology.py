"""Topology-aware mapping, MODELLED (not measured: this machine has one CPU node, no GPUs).

Tensor parallelism (Megatron, Shoeybi et al. 2019) all-reduces the activations of each
layer twice in forward and twice in backward: 4 * L all-reduces of b*s*h 16-bit values per
micro-batch, on the critical path (not hidden behind compute). Data parallelism all-reduces
the gradients once per step and can overlap it with backward. So the fast intra-node link
should carry the tensor-parallel groups, and only the data-parallel traffic should cross
nodes. ``placement_rows`` prices both mappings with dslib.plan.comm's alpha-beta ring model.
"""
from __future__ import annotations

from typing import Any

from dslib.plan import comm

# The NCCL environment variables that decide how collectives map onto the hardware.
NCCL_SETTINGS: dict[str, str] = {
    "NCCL_ALGO": "collective algorithm: Ring (bandwidth), Tree (latency, across nodes), NVLS/CollNet "
                 "(switch offload); default: NCCL's tuner picks per size",
    "NCCL_PROTO": "wire protocol: LL / LL128 (low latency, small messages) or Simple (large messages)",
    "NCCL_TOPO_FILE": "XML topology (GPUs, NICs, PCIe switches, NUMA) to use instead of probing, "
                      "e.g. in VMs where probing sees a flat PCIe tree",
    "NCCL_IB_HCA": "which InfiniBand adapters (and ports) to use, e.g. mlx5_0:1,mlx5_1:1: one NIC per GPU rail",
    "NCCL_SOCKET_IFNAME": "network interface for bootstrap and TCP sockets (e.g. eth0, ^docker): "
                          "a wrong guess hangs the first collective",
    "NCCL_P2P_LEVEL": "how far apart two GPUs may be for direct peer-to-peer (NVL, PIX, PXB, PHB, SYS)",
    "NCCL_NET_GDR_LEVEL": "GPUDirect RDMA: how close NIC and GPU must be for the NIC to read GPU memory",
    "NCCL_CROSS_NIC": "whether rings may leave through a different NIC than they entered (rail alignment)",
    "NCCL_DEBUG": "INFO prints the chosen rings/trees, transports and topology: check the mapping here",
}


def placement_rows(layers: int = 48, hidden: int = 4096, seq_len: int = 2048, micro_batch: int = 1,
                   micro_batches: int = 8, n_params: float = 10e9, tp: int = 8, dp: int = 2,
                   intra: str = "NVLink3 (A100)", inter: str = "InfiniBand HDR 200G") -> list[dict[str, Any]]:
    """Communication seconds per step for TP inside a node vs TP spanning nodes (dp nodes of tp GPUs).

    TP across nodes: each TP ring crosses the inter-node link (a ring runs at its slowest
    hop), while the DP group then lies inside a node. Gradients are 16-bit, split by TP.
    """
    fast, slow = comm.get_link(intra), comm.get_link(inter)
    activation_bytes = 2 * micro_batch * seq_len * hidden
    tp_calls = 4 * layers * micro_batches
    grad_bytes = 2 * n_params / tp
    rows = []
    for name, tp_link, dp_link in (("TP inside a node, DP across nodes", fast, slow),
                                   ("TP across nodes, DP inside a node", slow, fast)):
        tp_s = tp_calls * comm.collective_time("all_reduce", activation_bytes, tp, tp_link)
        dp_s = comm.collective_time("all_reduce", grad_bytes, dp, dp_link)
        rows.append({"placement": name, "tp_link": tp_link.name, "tp_comm_s": tp_s,
                     "dp_link": dp_link.name, "dp_comm_s": dp_s, "total_comm_s": tp_s + dp_s})
    return rows
