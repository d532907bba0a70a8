"""Ground-truth head scores for the known LMs, from Hugging Face attentions only.

Independent of mechcausal and TransformerLens: a model's own ``output_attentions``
(load it with ``attn_implementation="eager"``) averaged over the positions each
pattern names. Conventions: position 0 is BOS.

* previous_token: attention from q to q - 1, mean over q >= 2.
* prefix_matching (induction): on BOS + r + r (r: k distinct tokens), attention from
  each q in the second copy to q - k + 1 (the token after q's earlier occurrence).
* duplicate_token: same sequences, attention from q to q - k.

For the chain task (BOS + x_0..x_9 + query): :func:`chain_head_scores`.
"""

from __future__ import annotations

import torch

BOS_ID = 1


def repeated_tokens(n: int, k: int, seed: int, low: int = 4, high: int = 64,
                    bos_token_id: int = BOS_ID) -> torch.Tensor:
    """[n, 1 + 2k] long: BOS, then k distinct random tokens in [low, high), repeated once."""
    if high - low < k:
        raise ValueError(f"need k <= high - low distinct tokens, got k={k}, range {high - low}")
    gen = torch.Generator().manual_seed(seed)
    r = torch.stack([torch.randperm(high - low, generator=gen)[:k] for _ in range(n)]) + low
    bos = torch.full((n, 1), bos_token_id, dtype=torch.long)
    return torch.cat([bos, r, r], dim=1)


@torch.no_grad()
def attentions(hf_model, tokens: torch.Tensor) -> torch.Tensor:
    """[n_layers, n, n_heads, L, L] attention probabilities of ``hf_model`` on ``tokens``."""
    hf_model.eval()
    out = hf_model(tokens, output_attentions=True)
    if not out.attentions or any(a is None for a in out.attentions):
        raise RuntimeError("the model returned no attentions; load it with "
                           "attn_implementation='eager'")
    return torch.stack([a.float() for a in out.attentions])


def _mean_at(att: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """att [layers, n, heads, L, L]; mean over samples and the (query, key) pairs -> [layers, heads]."""
    return att[:, :, :, queries, keys].mean(dim=(1, 3))


def hf_head_scores(hf_model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per (layer, head) scores [n_layers, n_heads] on ``tokens`` = BOS + r + r.

    Returns ``previous_token``, ``prefix_matching`` and ``duplicate_token``."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    L = tokens.shape[1]
    if L < 3 or (L - 1) % 2:
        raise ValueError(f"tokens must be BOS + r + r (odd length >= 3), got length {L}")
    k = (L - 1) // 2
    if not torch.equal(tokens[:, 1:1 + k], tokens[:, 1 + k:]):
        raise ValueError("tokens must be BOS + r + r (the two copies differ)")
    att = attentions(hf_model, tokens)
    q_prev = torch.arange(2, L)
    second = torch.arange(1 + k, L)
    return {
        "previous_token": _mean_at(att, q_prev, q_prev - 1),
        "prefix_matching": _mean_at(att, second, second - k + 1),
        "duplicate_token": _mean_at(att, second, second - k),
    }


def chain_head_scores(hf_model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per (layer, head) scores [n_layers, n_heads] on chain-task tokens
    [n, 1 + T + 1] = BOS + x_0..x_{T-1} + query (graph position i at model position i+1;
    parent of model position j >= 2 is j - 1).

    * ``previous_token``: attention from j to j - 1, mean over context positions
      j = 2..T (the ones with a parent).
    * ``parent_match``: attention from the query (last position) summed over the
      context positions j = 2..T whose parent's token equals the query token, mean over
      samples with at least one such position (the paper's induction head).
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    L = tokens.shape[1]
    T = L - 2
    att = attentions(hf_model, tokens)
    ctx = torch.arange(2, T + 1)
    prev = _mean_at(att, ctx, ctx - 1)
    query = tokens[:, -1]
    match = (tokens[:, ctx - 1] == query[:, None]).float()  # [n, T-1]
    from_query = att[:, :, :, -1, 2:T + 1]  # [layers, n, heads, T-1]
    mass = (from_query * match[None, :, None, :]).sum(-1)  # [layers, n, heads]
    has = match.sum(-1) > 0
    parent_match = mass[:, has].mean(1)
    return {"previous_token": prev, "parent_match": parent_match}


def top_heads(scores: torch.Tensor, n: int = 3) -> list[dict]:
    """The ``n`` highest-scoring heads of a [layers, heads] table."""
    flat = scores.flatten()
    idx = flat.argsort(descending=True)[:n]
    H = scores.shape[1]
    return [{"layer": int(i) // H, "head": int(i) % H, "score": round(float(flat[i]), 4)}
            for i in idx]
