"""Robustness: seeded text perturbations and a gradient-guided (HotFlip) token attack.

Text perturbations act on a chosen share of the words (or letters, for case), picked by
a seeded RNG, so the same (text, rate, seed) always gives the same output:
- `typo`: one character edit per chosen word (swap two differing neighbours, delete,
  insert or substitute a letter), so each chosen word really changes;
- `word_swap`: chosen words trade places with their right neighbour;
- `word_delete`: chosen words are removed;
- `case`: chosen letters flip case (the lowercased text is unchanged).
`hotflip` (Ebrahimi et al., 2018) attacks the model itself: the gradient of the loss with
respect to the input embeddings gives, for every position i and token v, the first-order
loss change of the swap, (E[v] - E[x_i]) . dL/de_i; it flips the best (position, token)
pair, recomputes the gradient, and repeats, never touching a position twice.
"""
from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dslib.eval.lm import DslibLM, LM
from dslib.eval.prompts import MultipleChoice, accuracy_from_loglikelihoods, choice_priors

Perturbation = Callable[[str, float, int], str]


def _chosen(n: int, rate: float, rng: random.Random) -> list[int]:
    """round(rate * n) distinct indices out of n, seeded."""
    return sorted(rng.sample(range(n), round(min(max(rate, 0.0), 1.0) * n)))


def _typo_word(word: str, rng: random.Random) -> str:
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    if not letters:
        return word + rng.choice(string.ascii_lowercase)
    i = rng.choice(letters)
    op = rng.choice(("swap", "delete", "insert", "substitute"))
    if op == "swap" and i + 1 < len(word) and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == "delete" and len(word) > 1:
        return word[:i] + word[i + 1:]
    if op == "insert":
        return word[:i] + rng.choice(string.ascii_lowercase) + word[i:]
    replacement = rng.choice([c for c in string.ascii_lowercase if c != word[i].lower()])
    return word[:i] + (replacement.upper() if word[i].isupper() else replacement) + word[i + 1:]


def typo(text: str, rate: float, seed: int = 0) -> str:
    parts = re.split(r"(\s+)", text)  # words and the whitespace between them, kept as is
    words = [i for i, part in enumerate(parts) if part and not part.isspace()]
    rng = random.Random(seed)
    for j in _chosen(len(words), rate, rng):
        parts[words[j]] = _typo_word(parts[words[j]], rng)
    return "".join(parts)


def word_swap(text: str, rate: float, seed: int = 0) -> str:
    words = text.split()
    rng = random.Random(seed)
    for i in _chosen(len(words) - 1, rate, rng) if len(words) > 1 else []:
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def word_delete(text: str, rate: float, seed: int = 0) -> str:
    words = text.split()
    dropped = set(_chosen(len(words), rate, random.Random(seed)))
    return " ".join(w for i, w in enumerate(words) if i not in dropped)


def case_change(text: str, rate: float, seed: int = 0) -> str:
    chars = list(text)
    letters = [i for i, ch in enumerate(chars) if ch.isalpha() and ch.swapcase() != ch]
    for j in _chosen(len(letters), rate, random.Random(seed)):
        chars[letters[j]] = chars[letters[j]].swapcase()
    return "".join(chars)


PERTURBATIONS: dict[str, Perturbation] = {
    "typo": typo, "word_swap": word_swap, "word_delete": word_delete, "case": case_change,
}


def hotflip(lm: DslibLM, pairs: Sequence[tuple[list[int], list[int]]], max_rate: float,
            protect: int = 1) -> list[list[list[int]]]:
    """Greedy HotFlip on each (context ids, target ids): raises the target's NLL by flipping
    up to round(max_rate * attackable context tokens), the first `protect` (the leading
    end-of-text) kept. Returns, per pair, the context after 0, 1, 2, ... flips. Pairs are
    attacked together in right-padded batches, one forward and backward per flip."""
    model, weights = lm.model, lm.embedding.weight.detach()
    was_training = model.training
    model.eval()
    histories: list[list[list[int]]] = []
    for first in range(0, len(pairs), lm.batch_size):
        batch = [(list(c), list(x)) for c, x in pairs[first:first + lm.batch_size]]
        budgets = [round(max_rate * (len(c) - protect)) for c, _ in batch]
        contexts = [c for c, _ in batch]
        history = [[list(c)] for c in contexts]
        touched = [set(range(protect)) for _ in batch]
        for step in range(max(budgets, default=0)):
            grads = _context_gradients(lm, contexts, [x for _, x in batch])
            for row, ctx in enumerate(contexts):
                if step >= budgets[row]:
                    continue
                g = grads[row, :len(ctx)]
                gain = g @ weights.T - (g * weights[ctx]).sum(-1, keepdim=True)  # [L, V]
                gain[sorted(touched[row])] = -torch.inf
                gain[:, lm.tokenizer.eos_id] = -torch.inf
                gain[range(len(ctx)), ctx] = -torch.inf
                pos, token = divmod(int(gain.argmax()), gain.size(1))
                ctx[pos] = token
                touched[row].add(pos)
                history[row].append(list(ctx))
        histories += history
    model.train(was_training)
    return histories


def _context_gradients(lm: DslibLM, contexts: list[list[int]], targets: list[list[int]]) -> torch.Tensor:
    """dL/de at every input position, L = summed NLL of each row's target tokens."""
    seqs = [c + x for c, x in zip(contexts, targets)]
    width = max(len(s) for s in seqs) - 1
    idx = torch.full((len(seqs), width), lm.tokenizer.eos_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    labels = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, (s, x) in enumerate(zip(seqs, targets)):
        idx[row, :len(s) - 1] = torch.tensor(s[:-1])
        labels[row, :len(s) - 1] = torch.tensor(s[1:])
        mask[row, len(s) - 1 - len(x):len(s) - 1] = True
    captured: dict[str, torch.Tensor] = {}

    def keep_output(module, inputs, output):
        captured["embeddings"] = output

    handle = lm.embedding.register_forward_hook(keep_output)
    try:
        with torch.enable_grad():
            logits = lm.model(idx.to(lm.device)).logits.float()
            nll = F.cross_entropy(logits.flatten(0, 1), labels.to(lm.device).flatten(), reduction="none")
            loss = (nll * mask.to(lm.device).flatten()).sum()
            (grad,) = torch.autograd.grad(loss, captured["embeddings"])
    finally:
        handle.remove()
    return grad.detach()


def _row(kind: str, rate: float, items: Sequence[MultipleChoice], lls: Sequence[float],
         priors: Sequence[float]) -> dict:
    """Accuracy, and the byte perplexity of the true continuations (clean) given the contexts."""
    true_ll, true_bytes, pos = 0.0, 0, 0
    for it in items:
        true_ll += lls[pos + it.answer]
        true_bytes += len(it.choices[it.answer].encode("utf-8"))
        pos += len(it.choices)
    return {"attack": kind, "rate": rate, **accuracy_from_loglikelihoods(items, lls, priors),
            "byte_perplexity": float(np.exp(-true_ll / true_bytes))}


def robustness_curves(lm: LM, items: Sequence[MultipleChoice], rates: Sequence[float],
                      attacks: Sequence[str] = (*PERTURBATIONS, "hotflip"), seed: int = 0) -> list[dict]:
    """One row per (attack, rate): acc, acc_norm, acc_pmi and the byte perplexity of the true
    continuation, with the contexts attacked and the continuations clean; `acc_retained`,
    `acc_pmi_retained` and `perplexity_ratio` compare with the clean contexts. Text attacks perturb a `rate` share
    of the context's words (letters for case); hotflip flips a `rate` share of its tokens
    and needs a `DslibLM` (gradients)."""
    priors = choice_priors(lm, items)  # the contexts change, the continuations do not
    clean = _row("none", 0.0, items, lm.loglikelihoods([(it.context, c) for it in items for c in it.choices]),
                 priors)
    rows = []
    for attack in attacks:
        if attack == "hotflip":
            rows += _hotflip_rows(lm, items, rates, priors)
            continue
        perturb = PERTURBATIONS[attack]
        for rate in rates:
            contexts = [perturb(it.context, rate, seed + i) for i, it in enumerate(items)]
            lls = lm.loglikelihoods([(ctx, c) for ctx, it in zip(contexts, items) for c in it.choices])
            rows.append(_row(attack, rate, items, lls, priors))
    for row in rows:
        row["acc_retained"] = row["acc"] / clean["acc"] if clean["acc"] else float("nan")
        row["acc_pmi_retained"] = row["acc_pmi"] / clean["acc_pmi"] if clean["acc_pmi"] else float("nan")
        row["perplexity_ratio"] = row["byte_perplexity"] / clean["byte_perplexity"]
    return rows


def _hotflip_rows(lm: DslibLM, items: Sequence[MultipleChoice], rates: Sequence[float],
                  priors: Sequence[float]) -> list[dict]:
    encoded = [(lm.encode_context(it.context), [lm.tokenizer.encode(c) for c in it.choices]) for it in items]
    histories = hotflip(lm, [(ctx, choices[it.answer]) for (ctx, choices), it in zip(encoded, items)], max(rates))
    rows = []
    for rate in rates:
        pairs = []
        for (ctx, choices), history in zip(encoded, histories):
            attacked = history[min(round(rate * (len(ctx) - 1)), len(history) - 1)]
            pairs += [(attacked, c) for c in choices]
        rows.append(_row("hotflip", rate, items, lm.loglikelihood_tokens(pairs), priors))
    return rows
