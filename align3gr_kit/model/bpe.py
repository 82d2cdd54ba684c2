"""A byte-level BPE tokenizer trained locally (``tokenizers``) for the ``tiny-llama`` backbone.

No tokenizer can be downloaded here, so ``tiny-llama`` learns one from the run's own text: item
titles/descriptions, user profiles and the SFT prompts. SCID token strings are removed from the
training text first (they become whole added tokens afterwards, so merges for ``<a_``, ``_12>``
would only waste vocabulary).
"""

from __future__ import annotations

import re
from typing import Iterable

from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"unk_token": "<unk>", "pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
_SCID_RE = re.compile(r"<u?[a-h]_\d+>")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it for transformers.

    Args:
        texts: training text (SCID token strings inside are ignored).
        vocab_size: target vocabulary size, special tokens and the 256 byte symbols included.
        min_frequency: a pair must occur this often to be merged.
    Returns:
        ``PreTrainedTokenizerFast`` with ``<unk> <pad> <s> </s>`` (ids 0-3), no automatic special
        tokens (the SFT encoder adds BOS/EOS itself, :mod:`align3gr_kit.model.encoding`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((_SCID_RE.sub(" ", t) for t in texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
