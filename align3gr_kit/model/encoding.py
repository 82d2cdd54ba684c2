"""Token ids of prompts and completions, the same way in SFT, evaluation and DPO.

Why not the tokenizer's own special-token logic: tokenizers disagree on what they add (BERT wraps
text in ``[CLS] ... [SEP]``, Llama adds ``<s>``, Qwen adds nothing), and trl tokenizes
``prompt + completion`` jointly, where the last prompt token may merge with the first completion
token. Here the rule is explicit and shared:

* prompt ids     = ``[bos]`` (when the tokenizer has a BOS token) + ids of the prompt text;
* completion ids = ids of the completion text + ``[eos]``;
* a training sequence is prompt ids + completion ids, with the loss on the completion only;
* at inference the model continues exactly the prompt ids.

Too-long prompts lose their *oldest* tokens (just after BOS): the most recent history matters most.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def bos_ids(tokenizer) -> list[int]:
    """``[bos_token_id]`` or ``[]`` when the tokenizer has no BOS token."""
    return [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]


def _fit_prompt(prompt_ids: list[int], n_bos: int, budget: int) -> list[int]:
    """Keep BOS and the most recent ``budget - n_bos`` prompt tokens."""
    if len(prompt_ids) <= budget:
        return prompt_ids
    keep = max(budget - n_bos, 1)
    return prompt_ids[:n_bos] + prompt_ids[len(prompt_ids) - keep:]


def encode_prompts(tokenizer, prompts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    """Prompt ids for each prompt (BOS + text ids), cut from the left to ``max_length`` tokens."""
    bos = bos_ids(tokenizer)
    texts = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    out = [bos + list(ids) for ids in texts]
    if max_length is not None:
        out = [_fit_prompt(ids, len(bos), max_length) for ids in out]
    return out


def prompt_encoder(tokenizer, max_length: int | None = None) -> Callable[[str], list[int]]:
    """``prompt -> ids`` with the rule above (for callers that encode one prompt at a time, e.g. DPO)."""
    return lambda prompt: encode_prompts(tokenizer, [prompt], max_length)[0]


def encode_sft_batch(tokenizer, prompts: Sequence[str], completions: Sequence[str], max_length: int) -> dict:
    """``input_ids`` and ``completion_mask`` (1 on completion tokens) for prompt/completion pairs.

    The completion (+ EOS) is kept whole, cut only if it alone exceeds ``max_length // 2``; the
    prompt then fills the rest, losing its oldest tokens.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token (the completion must end)")
    eos = int(tokenizer.eos_token_id)
    bos = bos_ids(tokenizer)
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    input_ids, masks = [], []
    for p, c in zip(p_ids, c_ids):
        c = list(c)[: max(max_length // 2 - 1, 1)] + [eos]
        p = _fit_prompt(bos + list(p), len(bos), max_length - len(c))
        input_ids.append(p + c)
        masks.append([0] * len(p) + [1] * len(c))
    return {"input_ids": input_ids, "completion_mask": masks}


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into ``input_ids`` ``[B, T]`` and ``attention_mask`` ``[B, T]`` (long)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, s in enumerate(sequences):
        if len(s):
            ids[r, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[r, width - len(s):] = 1
    return ids, mask
