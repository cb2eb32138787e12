"""Chapter 03's inspections of a trained Transformer-XL: the four terms of its score on a real
batch, the memory's stop-gradient, and how far back one token reaches (the effective context)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from dslib.model import TransformerXL
from dslib.model.attention import ScoreTerms, attend_with_scores, score_terms


@contextmanager
def _capture(model: TransformerXL, inputs: bool = True) -> Iterator[list[Any]]:
    """Per block, in order: the attention's (query_in, context, pos_emb) and its output
    (inputs=True), or the block's (input x, output) (inputs=False)."""
    seen: list[Any] = []
    if inputs:
        hooks = [b.attn.register_forward_hook(lambda m, args, out: seen.append((*args[:3], out)))
                 for b in model.blocks]
    else:
        hooks = [b.register_forward_hook(lambda m, args, out: seen.append((args[0], out[0])))
                 for b in model.blocks]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def score_terms_on_batch(model: TransformerXL, tokens: torch.Tensor) -> tuple[list[ScoreTerms], list[dict[str, Any]]]:
    """Split every layer's score into its four terms on segment 2 of ``tokens`` [B, 2*T] (segment 1
    fills the memory), and check them against the model: the sum must equal the score the model
    computes (`RelativeAttention.scores`) and its softmax must give the attention's real output.

    Returns the terms per layer and one row per layer and term: mean |term| over the visible
    (query, key) pairs and the spread over keys (std per query, averaged), which is what moves
    the softmax (a per-query constant does not).
    """
    was_training = model.training
    model.eval()
    T, tokens = model.config.seq_len, tokens.to(model.embed.weight.device)
    mems = model(tokens[:, :T]).mems
    with _capture(model) as seen:
        model(tokens[:, T:2 * T], mems=mems)
    all_terms, rows = [], []
    for layer, (query_in, context, pos_emb, output) in enumerate(seen):
        attn = model.blocks[layer].attn
        terms = score_terms(attn, query_in, context, pos_emb)
        total, vis = terms.total(), terms.visible
        sum_error = (total - attn.scores(query_in, context, pos_emb))[..., vis].abs().max().item()
        output_error = (attend_with_scores(attn, total, context) - output).abs().max().item()
        n_visible = vis.sum(-1).clamp(min=1)
        for name, term in terms.named().items():
            mean = term.sum(-1, keepdim=True) / n_visible[:, None]
            spread = (((term - mean) ** 2 * vis).sum(-1) / n_visible).sqrt()
            rows.append({"layer": layer, "term": name, "mean_abs": term[..., vis].abs().mean().item(),
                         "std_over_keys": spread.mean().item(), "sum_vs_model_score": sum_error,
                         "output_vs_model": output_error, "memory_length": context.size(1) - query_in.size(1)})
        all_terms.append(terms)
    model.train(was_training)
    return all_terms, rows


def memory_gradient_rows(model: TransformerXL, tokens: torch.Tensor) -> list[dict[str, Any]]:
    """The memory is a stop-gradient: per layer, the gradient of segment 2's loss with respect to
    segment 1's hidden states that became the memory, as the model carries them (detached) and
    with the detach removed (the same states passed with their graph)."""
    T, M = model.config.seq_len, model.memory_length
    tokens = tokens.to(model.embed.weight.device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    with _capture(model, inputs=False) as seen:
        first = model(inputs[:, :T])
    states = [x for x, _ in seen]  # each block's input in segment 1: what its memory caches
    rows = []
    for carried, mems in (("detached, as the model carries it", first.mems),
                          ("attached: the detach removed", [x[:, -M:] for x in states])):
        loss = model(inputs[:, T:2 * T], mems=mems, targets=targets[:, T:2 * T]).loss
        grads = torch.autograd.grad(loss, states, allow_unused=True, retain_graph=True)
        for layer, (mem, grad) in enumerate(zip(mems, grads)):
            rows.append({"memory": carried, "layer": layer, "memory_requires_grad": mem.requires_grad,
                         "grad_is_none": grad is None, "grad_norm": 0.0 if grad is None else grad.norm().item()})
    return rows


@torch.no_grad()
def influence_map(model: TransformerXL, tokens: torch.Tensor, position: int) -> np.ndarray:
    """Change one token and read, segment after segment with memory, how much every layer's
    output moves: max |difference| over batch and width, [num_layers + 1, positions] (row 0:
    the embedding, row l: block l's output; the logits change exactly where the last row does)."""
    was_training = model.training
    model.eval()
    tokens = tokens.to(model.embed.weight.device)
    changed = tokens.clone()
    changed[:, position] = (changed[:, position] + 1) % model.config.vocab_size
    runs = []
    for stream in (tokens, changed):
        layers, mems = [], None
        for start in range(0, stream.size(1), model.config.seq_len):
            segment = stream[:, start:start + model.config.seq_len]
            with _capture(model, inputs=False) as seen:
                out = model(segment, mems=mems)
            mems = out.mems
            layers.append(torch.stack([seen[0][0]] + [y for _, y in seen]))  # [L+1, B, T, d]
        runs.append(torch.cat(layers, dim=2))
    model.train(was_training)
    return (runs[1] - runs[0]).abs().amax(dim=(1, 3)).double().cpu().numpy()


def reach_bound(num_layers: int, seq_len: int, memory_length: int, position: int) -> int:
    """Last position whose output can depend on the token at ``position``: a query at g sees the
    keys from (g // T) * T - M to g, so one layer carries position p up to the end of the last
    segment whose memory still holds p, and the L layers compose that."""
    reach = position
    for _ in range(num_layers):
        reach = ((reach + memory_length) // seq_len + 1) * seq_len - 1
    return reach


def reach_rows(model: TransformerXL, tokens: torch.Tensor, memory_lengths: list[int],
               positions: list[int]) -> list[dict[str, Any]]:
    """Measured reach (last position whose logits change) per memory length and perturbed
    position, against the structural bound and the rule of thumb layers x memory length."""
    L, T = model.config.num_layers, model.config.seq_len
    needed = max(reach_bound(L, T, m, p) for m in memory_lengths for p in positions) + 1
    if tokens.size(1) < needed:  # a shorter stream would cut the measured reach short
        raise ValueError(f"reach_rows needs a stream of {needed} tokens, got {tokens.size(1)}")
    tokens = tokens[:, :-(-needed // T) * T]
    trained, rows = model.memory_length, []
    try:
        for memory_length in memory_lengths:
            model.memory_length = memory_length
            for position in positions:
                moved = np.nonzero(influence_map(model, tokens, position)[-1] > 0)[0]
                last = int(moved.max()) if moved.size else position
                rows.append({"memory_length": memory_length, "position": position,
                             "measured_reach": last - position,
                             "bound_reach": reach_bound(L, T, memory_length, position) - position,
                             "layers_x_memory": L * memory_length,
                             "segments_reached": last // T - position // T})
    finally:
        model.memory_length = trained
    return rows


def lanes(tokens: np.ndarray, batch_size: int, length: int) -> torch.Tensor:
    """The first ``batch_size`` x ``length`` tokens of a stream as [batch_size, length] rows of
    running text (each row continues where the one above ends)."""
    if len(tokens) < batch_size * length:
        raise ValueError(f"{batch_size} x {length} tokens asked of a stream of {len(tokens)}")
    return torch.as_tensor(np.asarray(tokens[:batch_size * length], dtype=np.int64)).view(batch_size, length)
