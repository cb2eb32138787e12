"""A narrow language-model interface (lm-evaluation-harness style) and dslib's adapter.

Every test in this chapter talks to a model only through `LM`: the log-likelihood of a
continuation given a context, and greedy generation (`DslibLM.generate_until` also
samples: temperature and nucleus / top-p, Holtzman et al. 2020). Any causal LM that implements the
two abstract methods is evaluated the same way; `DslibLM` wraps a dslib TransformerXL
(or anything with its forward: `model(idx, mems=None)` -> `.logits`, `.mems`) and a
dslib tokenizer.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def nucleus_probs(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Sampling distribution over the last dim: softmax(logits / temperature) restricted to the
    smallest set of most likely tokens whose probability reaches top_p, renormalised."""
    if temperature <= 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    probs = F.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # the top token always stays
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)


class LM(abc.ABC):
    """What an evaluated model must offer."""

    @abc.abstractmethod
    def loglikelihoods(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        """For each (context, continuation): sum of log p(continuation tokens | context)."""

    @abc.abstractmethod
    def greedy_until(self, context: str, until: Sequence[str], max_tokens: int) -> str:
        """Greedy continuation of context, cut before the first stop string in `until`."""

    def loglikelihood(self, context: str, continuation: str) -> float:
        return self.loglikelihoods([(context, continuation)])[0]


class DslibLM(LM):
    """A dslib model + tokenizer behind the `LM` interface.

    Contexts start with the end-of-text id, as documents do in the training stream. A
    request longer than `max_length` keeps its last `max_length` tokens (the continuation
    always fits). Scoring batches requests, right-padded: causal attention and causal
    gates (gate.py) make a position's logits independent of the padding after it.
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int, batch_size: int = 32) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.device = next(model.parameters()).device

    @property
    def embedding(self) -> nn.Embedding:
        """The input embedding (the gradient-guided attack needs it)."""
        return self.model.embed

    def encode_context(self, context: str) -> list[int]:
        return [self.tokenizer.eos_id] + self.tokenizer.encode(context)

    def loglikelihoods(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        pairs = [(self.encode_context(c), self.tokenizer.encode(x)) for c, x in requests]
        return self.loglikelihood_tokens(pairs)

    @torch.no_grad()
    def loglikelihood_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """Token-level scoring: (context ids, continuation ids) -> summed log-probability."""
        was_training = self.model.training
        self.model.eval()
        scores: list[float] = []
        for first in range(0, len(pairs), self.batch_size):
            chunk = pairs[first:first + self.batch_size]
            seqs = [(list(c) + list(x))[-(self.max_length + 1):] for c, x in chunk]
            if any(len(x) == 0 or len(x) >= len(s) for s, (_, x) in zip(seqs, chunk)):
                raise ValueError("every request needs a non-empty continuation shorter than max_length")
            width = max(len(s) for s in seqs) - 1
            idx = torch.full((len(seqs), width), self.tokenizer.eos_id, dtype=torch.long)
            for row, s in enumerate(seqs):
                idx[row, :len(s) - 1] = torch.tensor(s[:-1])
            logprobs = F.log_softmax(self.model(idx.to(self.device)).logits.float(), dim=-1).cpu()
            for row, (s, (_, x)) in enumerate(zip(seqs, chunk)):
                positions = torch.arange(len(s) - 1 - len(x), len(s) - 1)
                scores.append(float(logprobs[row, positions, torch.tensor(x)].sum()))
        self.model.train(was_training)
        return scores

    def greedy_until(self, context: str, until: Sequence[str], max_tokens: int) -> str:
        return self.generate_until(context, until, max_tokens)

    @torch.no_grad()
    def generate_until(self, context: str, until: Sequence[str], max_tokens: int, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int = 0) -> str:
        """Greedy (temperature 0) or sampled (`nucleus_probs`, a generator seeded by `seed`:
        the same seed, the same text) continuation. Feeds the context once, then one token at
        a time with the memories (Transformer-XL's cached states): exact incremental decoding
        while memory_length covers the text so far."""
        was_training = self.model.training
        self.model.eval()
        generator = torch.Generator().manual_seed(seed)
        ids = self.encode_context(context)[-self.max_length:]
        out = self.model(torch.tensor([ids], device=self.device))
        use_memory = getattr(self.model, "memory_length", 0) > 0 and out.mems is not None
        generated: list[int] = []
        while len(generated) < max_tokens:
            last = out.logits[0, -1].cpu()
            if temperature == 0:
                token = int(last.argmax())
            else:
                token = int(torch.multinomial(nucleus_probs(last, temperature, top_p), 1, generator=generator))
            if token == self.tokenizer.eos_id:
                break
            generated.append(token)
            text = self.tokenizer.decode(generated)
            if any(stop in text for stop in until):
                break
            if use_memory:
                out = self.model(torch.tensor([[token]], device=self.device), mems=out.mems)
            else:
                window = (ids + generated)[-self.max_length:]
                out = self.model(torch.tensor([window], device=self.device))
        self.model.train(was_training)
        text = self.tokenizer.decode(generated)
        cut = min([text.index(s) for s in until if s in text], default=len(text))
        return text[:cut]
