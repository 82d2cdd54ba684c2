"""Token ids of prompts and completions, the same way in SFT, evaluation and DPO.

Why not the tokenizer's own special-token logic: tokenizers disagree on what they add (BERT wraps
text in ``[CLS] ... [SEP]``, Llama adds ``<s>``, Qwen adds nothing), and trl tokenizes
``prompt + completion`` jointly, where the last prompt token may merge with the first completion
token. Here the rule is explicit and shared:

* a prompt is framed as ``head + ids of the prompt text + tail`` (:func:`prompt_frame`):
  - a backbone with a chat template (SmolLM2, Qwen2.5, Llama instruct models): the prompt text is
    one user turn followed by the generation prompt, i.e. head = the template's text before the
    user content, tail = the text after it (``<|im_end|>\\n<|im_start|>assistant\\n``). The model
    answers as it was instruction-tuned to. The system turn is the one the *tokenizer* records
    (:func:`set_system_prompt`, written by :func:`align3gr_kit.model.backbone.build_tokenizer` from
    ``model.default_system`` and saved with the tokenizer, so SFT, DPO and decoding of one model
    share it): an explicit empty system message by default (SmolLM2: head
    ``<|im_start|>system\\n<|im_end|>\\n<|im_start|>user\\n``, 8 tokens, + tail 6), or, where the
    tokenizer records none, the template's own default (SmolLM2's "You are a helpful AI assistant
    named SmolLM, trained by Hugging Face" turn: head 24 tokens + tail 6). The 16 tokens saved come
    off every training and decoding sequence;
  - the from-scratch and encoder backbones (``tiny-llama``, ``minilm``; no template): head =
    ``[bos]`` (when the tokenizer has one), tail = nothing;
* completion ids = ids of the completion text + ``[eos]`` (SmolLM2's EOS is ``<|im_end|>``, which
  closes the assistant turn); responses (SCIDs, titles) are the same text for every backbone;
* a training sequence is prompt ids + completion ids, with the loss on the completion only;
* at inference the model continues exactly the prompt ids.

Too-long prompts lose their *oldest text* tokens (just after the head): the most recent history
matters most, and the frame (template head, assistant header) is always kept whole.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

# Stands in for the user's text while the chat template is rendered; the rendered string is split
# around it into the frame's head and tail.
_SLOT = "\uE000ALIGN3GR-PROMPT\uE000"
# tokenizer_config.json key holding the frame's system message (set_system_prompt)
SYSTEM_PROMPT_KEY = "align3gr_system_prompt"


def bos_ids(tokenizer) -> list[int]:
    """``[bos_token_id]`` or ``[]`` when the tokenizer has no BOS token."""
    return [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]


def uses_chat_template(tokenizer) -> bool:
    """Whether prompts are wrapped in the tokenizer's chat template (it has one)."""
    return bool(getattr(tokenizer, "chat_template", None))


def set_system_prompt(tokenizer, text: str | None) -> None:
    """Record the system message of every prompt's chat frame on ``tokenizer`` (saved with it by
    ``save_pretrained``): a string (``""``: an explicit empty system turn) or ``None`` (the chat
    template's own default turn, what an unmarked tokenizer gets)."""
    if text is None:
        tokenizer.init_kwargs.pop(SYSTEM_PROMPT_KEY, None)
    else:
        tokenizer.init_kwargs[SYSTEM_PROMPT_KEY] = str(text)


def system_prompt(tokenizer) -> str | None:
    """The system message :func:`set_system_prompt` recorded on ``tokenizer``; ``None``: the template's default."""
    return getattr(tokenizer, "init_kwargs", {}).get(SYSTEM_PROMPT_KEY)


def prompt_frame(tokenizer) -> tuple[list[int], list[int]]:
    """``(head ids, tail ids)`` around every prompt's text ids (module docstring).

    The chat template is rendered with ``add_generation_prompt=True`` around a placeholder user
    message, after the system message the tokenizer records (:func:`system_prompt`; none: the
    template's default); head and tail are tokenized without the tokenizer's automatic special
    tokens (the template writes its own).
    """
    if not uses_chat_template(tokenizer):
        return bos_ids(tokenizer), []
    system = system_prompt(tokenizer)
    messages = [{"role": "user", "content": _SLOT}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja2's TemplateError: some templates (Gemma) refuse a system role
        if system is None:
            raise
        raise ValueError(f"the tokenizer's chat_template refuses a system message ({e}); set "
                         "model.default_system: true to keep the template's own frame") from e
    if text.count(_SLOT) != 1:
        raise ValueError("the tokenizer's chat_template does not render the user message once; "
                         "set tokenizer.chat_template = None to use the plain prompt format")
    head, tail = text.split(_SLOT)
    ids = tokenizer([head, tail], add_special_tokens=False)["input_ids"]
    return list(ids[0]), list(ids[1])


def fit_prompt(prompt_ids: list[int], n_head: int, n_tail: int, budget: int) -> list[int]:
    """Keep the frame's ``n_head`` first and ``n_tail`` last ids and the most recent text ids, at most
    ``budget`` ids in all (at least one text id is kept even when the frame alone fills the budget)."""
    if len(prompt_ids) <= budget:
        return prompt_ids
    n_text = len(prompt_ids) - n_head - n_tail
    keep = min(max(budget - n_head - n_tail, 1), n_text)
    end = len(prompt_ids) - n_tail
    return prompt_ids[:n_head] + prompt_ids[end - keep:end] + prompt_ids[end:]


def _frame_texts(tokenizer, prompts: Sequence[str],
                 frame: tuple[list[int], list[int]] | None = None) -> tuple[list[list[int]], int, int]:
    head, tail = frame if frame is not None else prompt_frame(tokenizer)
    texts = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    return [head + list(ids) + tail for ids in texts], len(head), len(tail)


def encode_prompts(tokenizer, prompts: Sequence[str], max_length: int | None = None,
                   frame: tuple[list[int], list[int]] | None = None) -> list[list[int]]:
    """Prompt ids for each prompt (head + text ids + tail), cut to ``max_length`` tokens (oldest text first).

    ``frame``: :func:`prompt_frame`'s ``(head, tail)`` when the caller rendered it already."""
    out, n_head, n_tail = _frame_texts(tokenizer, prompts, frame)
    if max_length is not None:
        out = [fit_prompt(ids, n_head, n_tail, max_length) for ids in out]
    return out


def prompt_encoder(tokenizer, max_length: int | None = None) -> Callable[[str], list[int]]:
    """``prompt -> ids`` with the rule above (for callers that encode one prompt at a time, e.g. DPO);
    the same ids as :func:`encode_prompts`.

    The frame is rendered once, here, not per prompt (rendering the chat template costs more than
    tokenizing a prompt): change ``tokenizer.chat_template`` before making the encoder, not after.
    """
    frame = prompt_frame(tokenizer)

    def encode(prompt: str) -> list[int]:
        return encode_prompts(tokenizer, [prompt], max_length, frame)[0]

    return encode


def encode_sft_batch(tokenizer, prompts: Sequence[str], completions: Sequence[str], max_length: int) -> dict:
    """``input_ids`` and ``completion_mask`` (1 on completion tokens) for prompt/completion pairs.

    The completion (+ EOS) is kept whole, cut only if it alone exceeds ``max_length // 2``; the
    prompt then fills the rest, losing its oldest text tokens.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token (the completion must end)")
    eos = int(tokenizer.eos_token_id)
    p_ids, n_head, n_tail = _frame_texts(tokenizer, prompts)
    c_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    input_ids, masks = [], []
    for p, c in zip(p_ids, c_ids):
        c = list(c)[: max(max_length // 2 - 1, 1)] + [eos]
        p = fit_prompt(p, n_head, n_tail, max_length - len(c))
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
