"""Greedy decoding with the KV cache, and self-speculative decoding with the MTP module's draft.

Speculative step (DeepSeek-V3 section 5.4.3's use of MTP, greedy, batch 1). The main model has
cached positions 0..n-1 and `pending` = t_n, not yet run; MTP depth 1 has drafted t_{n+1}:
  1. the main model runs [t_n, draft] at positions n, n+1 (one forward of two tokens)
  2. accepted if its prediction at n equals the draft: t_{n+1} = draft, and its prediction at
     n+1 is t_{n+2}, two tokens for one forward; rejected: t_{n+1} = its prediction at n and
     the cache forgets position n+1
  3. the MTP module runs the new positions (hidden h_i with the embedding of t_{i+1}) and its
     last prediction is the next draft
The tokens are exactly the greedy decode's (up to float ties): the draft only decides how many
come per main-model forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dslib.model.deepseek import DeepSeekModel


def _next_logits(model: DeepSeekModel, idx: torch.Tensor, caches) -> tuple[torch.Tensor, torch.Tensor]:
    hidden, _, _ = model.trunk(idx, caches)
    return hidden, model.logits(hidden)


@torch.no_grad()
def greedy_decode(model: DeepSeekModel, prompt: torch.Tensor, max_new_tokens: int,
                  absorb: bool = True) -> torch.Tensor:
    """prompt [B, P] -> [B, P + max_new_tokens], one cached forward per new token."""
    model.eval()
    model.set_absorb(absorb)
    caches = model.new_cache(prompt.size(0), prompt.size(1) + max_new_tokens)
    _, logits = _next_logits(model, prompt, caches)
    tokens = [prompt]
    for _ in range(max_new_tokens):
        tokens.append(logits[:, -1:].argmax(-1))
        if len(tokens) <= max_new_tokens:
            _, logits = _next_logits(model, tokens[-1], caches)
    return torch.cat(tokens, dim=1)


@dataclass
class SpeculativeResult:
    tokens: torch.Tensor  # [1, P + max_new_tokens]
    drafted: int  # draft tokens proposed by the MTP module
    accepted: int  # of them, confirmed by the main model
    main_forwards: int  # main-model forwards after the prompt (greedy needs max_new_tokens - 1)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@torch.no_grad()
def speculative_decode(model: DeepSeekModel, prompt: torch.Tensor, max_new_tokens: int,
                       absorb: bool = True) -> SpeculativeResult:
    """Greedy decode of one sequence, prompt [1, P], drafting with MTP depth 1 (see module doc)."""
    if not len(model.mtp):
        raise ValueError("speculative decoding needs an MTP module (config mtp.depth >= 1)")
    if prompt.size(0) != 1:
        raise ValueError(f"speculative decoding runs one sequence at a time, got batch {prompt.size(0)}")
    model.eval()
    model.set_absorb(absorb)
    P, L = prompt.size(1), model.config.num_layers
    caches = model.new_cache(1, P + max_new_tokens + 2)
    main_caches, mtp_module, mtp_cache = caches[:L], model.mtp[0], caches[L]

    def draft_after(hidden: torch.Tensor, next_tokens: torch.Tensor) -> torch.Tensor:
        """MTP over new positions: hidden [1, T, d] with the embeddings of the tokens after them."""
        positions = torch.arange(mtp_cache.length, mtp_cache.length + hidden.size(1), device=hidden.device)
        h, _, _ = mtp_module(hidden, model.embed(next_tokens), positions, mtp_cache)
        return model.head(mtp_module.norm(h[:, -1:])).argmax(-1)  # [1, 1]

    hidden, logits = _next_logits(model, prompt, main_caches)
    pending = logits[:, -1:].argmax(-1)  # t_P
    draft = draft_after(hidden, torch.cat([prompt[:, 1:], pending], dim=1))
    out, drafted, accepted, forwards = [prompt, pending], 0, 0, 0
    while sum(t.size(1) for t in out) < P + max_new_tokens:
        n = main_caches[0].length
        hidden, logits = _next_logits(model, torch.cat([pending, draft], dim=1), main_caches)
        predicted = logits.argmax(-1)  # [1, 2]: predictions for t_{n+1}, t_{n+2}
        forwards, drafted = forwards + 1, drafted + 1
        if bool((predicted[:, 0] == draft[:, 0]).all()):
            accepted += 1
            pending = predicted[:, 1:]
            out += [draft, pending]
            draft = draft_after(hidden, torch.cat([draft, pending], dim=1))
        else:
            for cache in main_caches:
                cache.truncate(n + 1)
            pending = predicted[:, :1]
            out.append(pending)
            draft = draft_after(hidden[:, :1], pending)
    return SpeculativeResult(torch.cat(out, dim=1)[:, :P + max_new_tokens], drafted, accepted, forwards)
