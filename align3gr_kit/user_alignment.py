"""User alignment (task B2) measured on held-out users: does the model relate a profile it never saw
paired with a user SCID to that SCID, and the SCID back to the profile's attributes?

``prompts.b2_holdout`` leaves the B2 rows of a seeded share of users out of SFT
(:func:`b2_heldout_users`). Their user SCIDs still appear in the other tasks' prompts, and the SCIDs
themselves were built from the users' text and behaviour (stage 01), so what the model gets right on
them comes from what it generalised, not from a memorised pair. Two directions:

* **profile -> user SCID**: the B2 prompt with the profile, a beam search constrained to the user
  SCIDs (:class:`align3gr_kit.decoding.ItemTrie` over the user table); ``exact@1`` = the top SCID is
  the user's own, ``hit@10`` = it is among the top 10. Chance: ``1 / n_users`` and ``10 / n_users``.
* **user SCID -> profile**: the B2 prompt with the SCID, greedy decoding; ``attribute_match`` = the
  share of the user's attributes (``RecDataset.users.attributes``) found as whole words in the
  generated text, counting only attributes whose value appears in the user's own profile text (so a
  value the profile never states, e.g. ml-100k's zip code, is not asked for). The control
  ``attribute_match_other`` scores the same texts against another held-out user's attributes: the
  share a text matches by saying common values, whoever it describes.

Why hand-written: no library evaluates this task; decoding reuses the kit's own beam search and
``transformers``' ``generate``.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import torch

from align3gr_kit.data.schema import RecDataset
from align3gr_kit.scid import ScidTable

#: The B2 templates used for the measurement (the first of each direction, as in SFT).
PROFILE_TO_SCID, SCID_TO_PROFILE = "B2:profile->scid", "B2:scid->profile"


def b2_heldout_users(n_users: int, fraction: float, seed: int) -> np.ndarray:
    """The sorted ids of the ``round(fraction * n_users)`` users whose B2 rows SFT leaves out: a
    permutation seeded by ``seed`` alone, so the prompt builder and the evaluation agree."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"prompts.b2_holdout must be in [0, 1), got {fraction}")
    k = int(round(fraction * n_users))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.random.default_rng([seed, 0xB2]).permutation(n_users)[:k]).astype(np.int64)


def attribute_values(attributes: Any) -> list[str]:
    """The attribute values of one user as strings (lists flattened, empty values dropped)."""
    if not isinstance(attributes, dict):
        return []
    out = []
    for v in attributes.values():
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            s = str(x).strip()
            if s:
                out.append(s)
    return out


def _says(text: str, value: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(value.lower())}(?!\w)", text.lower()) is not None


def stated_attributes(attributes: Any, profile: str) -> list[str]:
    """The attribute values the profile text states (whole-word, case-insensitive)."""
    return [v for v in attribute_values(attributes) if _says(profile, v)]


def attribute_match(text: str, values: list[str]) -> float:
    """Share of ``values`` found as whole words in ``text`` (NaN when there are none)."""
    return float(np.mean([_says(text, v) for v in values])) if values else float("nan")


def _b2_prompt(key: str, **fields: str) -> str:
    from align3gr_kit.prompts.templates import TEMPLATES

    return TEMPLATES[key][0].format(**fields)


@torch.inference_mode()
def evaluate_user_alignment(
    model,
    tokenizer,
    ds: RecDataset,
    user_scids: ScidTable,
    users: np.ndarray,
    max_length: int = 256,
    max_text_words: int = 40,
    beam_width: int = 10,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    precision: str = "auto",
    examples: int = 3,
) -> dict[str, Any]:
    """Both B2 directions on ``users`` (see the module docstring).

    Returns:
        ``{"users", "exact@1", "hit@10", "chance_exact@1", "chance_hit@10", "attribute_match",
        "attribute_match_other", "attributes_per_user", "seconds", "examples": [...]}``.
    """
    from align3gr_kit.decoding import ItemTrie, constrained_beam_search
    from align3gr_kit.evaluate import item_token_ids
    from align3gr_kit.model.encoding import encode_prompts, left_pad
    from align3gr_kit.model.precision import autocast
    from align3gr_kit.prompts.text import cut_words

    t0 = time.time()
    users = np.asarray(users, dtype=np.int64)
    if len(users) < 2:
        raise ValueError("user alignment needs at least 2 held-out users (raise prompts.b2_holdout)")
    profiles = [cut_words(str(ds.users.profile.iloc[u] or ""), max_text_words) for u in users]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    model.eval()

    # profile -> user SCID: beam search over the user SCID trie
    budget = max_length - user_scids.levels - 1
    ids = encode_prompts(tokenizer, [_b2_prompt(PROFILE_TO_SCID, profile=p) for p in profiles], budget)
    trie = ItemTrie(item_token_ids(tokenizer, user_scids))
    width = min(beam_width, user_scids.n)
    ranked = np.full((len(users), width), -1, dtype=np.int64)
    for start in range(0, len(users), batch_size):
        input_ids, mask = left_pad(ids[start:start + batch_size], pad)
        res = constrained_beam_search(model, input_ids, mask, trie, beam_width=width, topk=width, precision=precision)
        got = res.items.cpu().numpy()
        ranked[start:start + len(got), : got.shape[1]] = got
    exact = ranked[:, 0] == users
    hit = (ranked == users[:, None]).any(1)

    # user SCID -> profile: greedy text
    ids = encode_prompts(tokenizer, [_b2_prompt(SCID_TO_PROFILE, user=user_scids.string(int(u))) for u in users],
                         max_length - max_new_tokens)
    texts: list[str] = []
    for start in range(0, len(users), batch_size):
        input_ids, mask = left_pad(ids[start:start + batch_size], pad)
        with autocast(precision, device):
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        texts += tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
    attrs = [stated_attributes(ds.users.attributes.iloc[u] if "attributes" in ds.users else None, p)
             for u, p in zip(users, profiles)]
    own = [attribute_match(t, a) for t, a in zip(texts, attrs)]
    other = [attribute_match(t, a) for t, a in zip(texts, attrs[-1:] + attrs[:-1])]  # the previous user's
    n = user_scids.n
    return {
        "users": int(len(users)),
        "exact@1": float(exact.mean()),
        "hit@10": float(hit.mean()),
        "chance_exact@1": 1.0 / n,
        "chance_hit@10": min(10, n) / n,
        "attribute_match": float(np.nanmean(own)) if not np.all(np.isnan(own)) else float("nan"),
        "attribute_match_other": float(np.nanmean(other)) if not np.all(np.isnan(other)) else float("nan"),
        "attributes_per_user": float(np.mean([len(a) for a in attrs])),
        "seconds": round(time.time() - t0, 2),
        "examples": [{"user": int(u), "profile": p, "generated": t.strip(), "top_scid": user_scids.string(int(r[0]))
                      if r[0] >= 0 else "", "own_scid": user_scids.string(int(u))}
                     for u, p, t, r in list(zip(users, profiles, texts, ranked))[:examples]],
    }
