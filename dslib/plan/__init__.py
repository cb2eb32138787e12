"""Resource planning: memory, FLOP and communication cost models (chapter 02; used by 05 and 09).

    memory.model_states(n_params, zero_stage=3, gpus_per_node=8, ...)  model states per rank
    memory.activation_memory(seq_len=, micro_batch=, hidden=, heads=, layers=, ...)
    memory.buffer_bytes(n_params, zero_stage)   DDP / DeepSpeed bucket buffers
    flops.training_flops_per_token(n_params, layers, hidden, seq_len, memory_length)
    comm.step_volume / comm.step_comm_time / comm.overlapped_step   per-step communication
    scaling.compute_optimal_tokens(config)  training tokens by DeepSeek's fitted scaling law
    measure.matmul_peak()                       this machine's fp32 matmul FLOP/s (the MFU reference)
Chapter 02's measured loopback link and its claim evidence are in dslib.studies.
"""
from dslib.plan import comm, flops, memory, scaling
from dslib.plan.memory import ActivationShape, MemoryPlan, ModelStateMemory, activation_memory, model_states

__all__ = ["comm", "flops", "memory", "scaling", "ActivationShape", "MemoryPlan", "ModelStateMemory",
           "activation_memory", "model_states"]
