"""Keywords and a short description per SCID token, written by an instruct LLM (TS-Rec's extractor).

TS-Rec asks a teacher LLM, shown the items of one SID token's cluster, for the keywords that
SA-Init averages and for the description TS-Align teaches. Here the teacher is the backbone itself
(SmolLM2-135M-Instruct by default, or any hub instruct model). For each token:

1. a sample of the rows carrying it (up to ``max_items`` lines, evenly spaced over the rows, each
   cut to ``max_words`` words: titles and categories come first in an item's text) goes into one
   user turn of the chat template (:func:`align3gr_kit.model.encoding.prompt_frame`);
2. the answer is prefilled with ``Description: These items are`` and the model ends the sentence; then the
   prompt plus that line is prefilled with ``Keywords:`` and it writes a comma-separated list.
   Prefilling the labels is what keeps a 135M model on the format; decoding is greedy (with
   ``no_repeat_ngram_size=2`` and a mild repetition penalty on the keyword list, which stop small
   models from repeating one word twenty times; both are deterministic); the description stops at
   the first newline, the keyword list at a blank line, both at EOS;
3. :func:`parse_keywords` turns the line into 10-20 clean keywords; a token whose answer yields
   none gets its TF-IDF keywords instead (``source = "tfidf"``, counted in :attr:`LLMKeywords.stats`).

Answers are cached per token in ``<cache_dir>/llm_keywords.json``, keyed by a hash of the model id,
the exact user message and the generation settings, so a re-run (or the next stage, handed the same
folder) asks the model only about tokens whose inputs changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from align3gr_kit.prompts.keywords import TfidfKeywords

CACHE_FILE = "llm_keywords.json"
# Part of every cache key: change it when the prompt or the parsing changes what an answer means.
PROMPT_VERSION = "v2"
MAX_KEYWORDS = 20

_LABEL = re.compile(r"^\s*[*_#\s]*(keywords?|key words|description)\s*[*_]*\s*:\s*[*_]*", re.IGNORECASE)
_SPLIT = re.compile(r"[,;\n|•·()\[\]{}]+|\s+-\s+|\s*(?:^|\s)\d+[.)]\s+")
_EDGE = re.compile(r"^[\W_]+|[\W_]+$")


@dataclass
class TokenAnnotation:
    """What the extractor says about one token.

    Attributes:
        description: one sentence about the rows carrying the token (``""`` when the LLM gave none).
        keywords: up to 20 keywords, most salient first.
        source: ``llm``, or ``tfidf`` when the answer had no usable keyword (the fallback).
    """

    description: str
    keywords: list[str]
    source: str


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return ENGLISH_STOP_WORDS


def parse_keywords(text: str, truncated: bool = False, limit: int = MAX_KEYWORDS) -> list[str]:
    """Keywords from an answer line: split on commas, semicolons, newlines, bullets and list numbers.

    Each piece is lower-cased and stripped of quotes and punctuation at its ends; kept when it has a
    letter, no colon (a label), at most 4 words and 40 characters, and a word that is not a stop word; duplicates are
    dropped (first kept). ``truncated``: the answer hit the token budget, so its last piece may be a
    cut word and is dropped.
    """
    text = _LABEL.sub("", text.strip())
    pieces = [p for p in _SPLIT.split(text) if p is not None]
    if truncated and pieces and not re.search(r"[,;\n]\s*$", text):
        pieces = pieces[:-1]
    stop = _stop_words()
    out: list[str] = []
    for piece in pieces:
        kw = " ".join(_EDGE.sub("", _LABEL.sub("", piece)).lower().split())
        words = kw.split()
        if (not kw or len(words) > 4 or len(kw) > 40 or ":" in kw or not re.search(r"[^\W\d_]", kw)
                or all(w in stop for w in words) or kw in out):
            continue
        out.append(kw)
        if len(out) == limit:
            break
    return out


def parse_description(text: str, max_words: int = 40) -> str:
    """The first line of an answer without a repeated ``Description:`` label or markdown; ``""`` when it
    has no letter."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _LABEL.sub("", line).strip().strip("*_\"' ")
    if not re.search(r"[^\W\d_]", line):
        return ""
    return " ".join(line.split()[:max_words])


def sample_lines(document: str, max_items: int, max_words: int) -> list[str]:
    """Up to ``max_items`` distinct non-empty lines, evenly spaced over the document, each cut to
    ``max_words`` words (deterministic: no random draw)."""
    lines = list(dict.fromkeys(ln.strip() for ln in document.splitlines() if ln.strip()))
    if len(lines) > max_items:
        lines = [lines[i] for i in np.linspace(0, len(lines) - 1, max_items).round().astype(int)]
    return [" ".join(ln.split()[:max_words]) for ln in lines]


def _noun(kind: str) -> str:
    return "users" if kind == "user" else "items"


def user_message(lines: Sequence[str], kind: str) -> str:
    """The user turn that shows a token's sample rows and asks for a description and keywords."""
    noun = _noun(kind)
    body = "\n".join(f"- {ln}" for ln in lines)
    return (f"These {noun} belong to one group:\n{body}\n\n"
            "Write a one-sentence description of the group, then 10 to 20 keywords for it, separated by commas.")


@dataclass
class LLMKeywords:
    """A :class:`~align3gr_kit.prompts.keywords.KeywordExtractor` that asks an instruct LLM (module docstring).

    Attributes:
        load: returns ``(model, tokenizer)``; called once, on the first token not in the cache.
        model_id: names the model in cache keys (e.g. ``smollm2-135m@<sha256 of the GGUF>``).
        cache_dir: folder of ``llm_keywords.json``; ``None`` = no cache.
        max_items: rows shown per token.
        max_words: words kept per row.
        max_description_tokens: budget of the description line.
        max_keyword_tokens: budget of the keyword line.
        batch_size: prompts per ``generate`` call (left-padded).
        precision: ``model.dtype`` name for autocast (:mod:`align3gr_kit.model.precision`).
        device: where generation runs; ``None`` = ``cuda`` when a GPU is present, else the CPU. The
            model is moved there for the tokens not in the cache and back to where it was loaded
            afterwards (its GPU memory freed for the training that follows).
        stats: ``llm`` (tokens answered by the model), ``fallback`` (tokens given TF-IDF keywords),
            ``cached`` (answers read from the cache), ``generated`` (answers generated), summed over calls.
    """

    load: Callable[[], tuple[Any, Any]]
    model_id: str
    cache_dir: str | Path | None = None
    max_items: int = 10
    max_words: int = 16
    max_description_tokens: int = 32
    max_keyword_tokens: int = 48
    batch_size: int = 16
    precision: str = "auto"
    device: str | None = None
    stats: dict[str, int] = field(default_factory=lambda: {"llm": 0, "fallback": 0, "cached": 0, "generated": 0})
    _loaded: tuple[Any, Any] | None = field(default=None, init=False, repr=False)
    _line_stops: list[int] = field(default_factory=list, init=False, repr=False)
    _list_stops: list[int] = field(default_factory=list, init=False, repr=False)

    # ------------------------------------------------------------------ public
    def extract(self, documents: Sequence[str], k: int, kind: str = "item") -> list[list[str]]:
        """Up to ``k`` keywords per document (a token's rows, one per line); see :meth:`annotate`."""
        return [a.keywords[:k] for a in self.annotate(documents, kind)]

    def annotate(self, documents: Sequence[str], kind: str = "item") -> list[TokenAnnotation]:
        """One :class:`TokenAnnotation` per document; ``[]`` keywords only where TF-IDF has none either."""
        messages = [user_message(sample_lines(d, self.max_items, self.max_words), kind) if d.strip() else ""
                    for d in documents]
        answers = self._answers(messages, kind)
        tfidf: list[list[str]] | None = None
        out = []
        for doc, ans in zip(documents, answers):
            if ans["keywords"]:
                out.append(TokenAnnotation(ans["description"], list(ans["keywords"]), "llm"))
                self.stats["llm"] += 1
                continue
            if tfidf is None:  # TF-IDF weighs a token's words against every other token's: all documents
                tfidf = TfidfKeywords().extract(documents, MAX_KEYWORDS)
            out.append(TokenAnnotation(ans["description"], tfidf[len(out)], "tfidf"))
            self.stats["fallback"] += 1
        return out

    def cache_key(self, message: str) -> str:
        """sha256 of the model id, the prompt version, the user message and the generation settings."""
        payload = [PROMPT_VERSION, self.model_id, message, self.max_description_tokens, self.max_keyword_tokens]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    # ------------------------------------------------------------------ generation
    def _answers(self, messages: Sequence[str], kind: str = "item") -> list[dict]:
        cache = self._read_cache()
        keys = [self.cache_key(m) for m in messages]
        todo = [i for i, (m, key) in enumerate(zip(messages, keys)) if m and key not in cache]
        self.stats["cached"] += sum(1 for m, key in zip(messages, keys) if m and key in cache)
        if todo:
            with self._on_device():
                for start in range(0, len(todo), self.batch_size):
                    batch = todo[start:start + self.batch_size]
                    for i, ans in zip(batch, self._generate([messages[i] for i in batch], kind)):
                        cache[keys[i]] = ans
                    self.stats["generated"] += len(batch)
                    self._write_cache(cache)  # after every batch: an interrupted run keeps what it paid for
        empty = {"description": "", "keywords": [], "answer": ""}
        return [cache[key] if m else empty for m, key in zip(messages, keys)]

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            model, tokenizer = self.load()
            self._loaded = (model.eval(), tokenizer)
            eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
            self._line_stops = _ids_decoding_to(tokenizer, "\n") + eos
            self._list_stops = _ids_decoding_to(tokenizer, "\n\n") + eos
        return self._loaded

    @contextlib.contextmanager
    def _on_device(self):
        """The loaded model on :attr:`device` for the duration, then back where it was."""
        import torch

        model, _ = self._model()
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        home = model.device
        model.to(device)
        try:
            yield
        finally:
            model.to(home)
            if device.type == "cuda" and home.type != "cuda":
                torch.cuda.empty_cache()

    def _generate(self, messages: Sequence[str], kind: str) -> list[dict]:
        model, tok = self._model()
        prompts = self._prompt_ids(tok, messages)
        # The sentence is started for the model: small models otherwise echo the instruction.
        start = f"These {_noun(kind)} are"
        desc_pre = tok(f"Description: {start}", add_special_tokens=False)["input_ids"]
        descs, _ = self._complete(model, tok, [p + desc_pre for p in prompts], self.max_description_tokens,
                                  self._line_stops, {})
        descs = [parse_description(start + d) if parse_description(d) else "" for d in descs]
        kw_pre = tok("Keywords:", add_special_tokens=False)["input_ids"]
        with_desc = [p + tok(f"Description: {d}\n" if d else "", add_special_tokens=False)["input_ids"] + kw_pre
                     for p, d in zip(prompts, descs)]
        # The keyword answer may be a list over several lines: it ends at a blank line or EOS.
        lines, truncated = self._complete(model, tok, with_desc, self.max_keyword_tokens, self._list_stops,
                                          {"no_repeat_ngram_size": 2, "repetition_penalty": 1.2})
        return [{"description": d, "keywords": parse_keywords(line, cut), "answer": line}
                for d, line, cut in zip(descs, lines, truncated)]

    @staticmethod
    def _prompt_ids(tok, messages: Sequence[str]) -> list[list[int]]:
        from align3gr_kit.model.encoding import prompt_frame

        head, tail = prompt_frame(tok)
        return [head + tok(m, add_special_tokens=False)["input_ids"] + tail for m in messages]

    def _complete(self, model, tok, prompts: list[list[int]], max_new: int, stops: list[int],
                  extra: dict) -> tuple[list[str], list[bool]]:
        """Greedy continuation of each prompt up to the first id in ``stops``: ``(texts, hit the budget)``."""
        import torch

        from align3gr_kit.model.encoding import left_pad
        from align3gr_kit.model.precision import autocast

        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids, mask = left_pad(prompts, pad)
        device = model.device
        with torch.no_grad(), autocast(self.precision, device):
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 num_beams=1, max_new_tokens=max_new, eos_token_id=stops, pad_token_id=pad,
                                 temperature=None, top_p=None, top_k=None, **extra)
        new = out[:, ids.shape[1]:].cpu()
        stop_set = set(stops)
        texts, truncated = [], []
        for row in new.tolist():
            ended = next((j for j, t in enumerate(row) if t in stop_set), None)
            texts.append(tok.decode(row if ended is None else row[:ended], skip_special_tokens=True))
            truncated.append(ended is None)
        return texts, truncated

    # ------------------------------------------------------------------ cache
    def _cache_path(self) -> Path | None:
        return None if self.cache_dir is None else Path(self.cache_dir) / CACHE_FILE

    def _read_cache(self) -> dict[str, dict]:
        path = self._cache_path()
        if path is None or not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); delete the file to rebuild the keyword cache") from err

    def _write_cache(self, cache: dict[str, dict]) -> None:
        path = self._cache_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(tmp, path)


def _ids_decoding_to(tok, text: str) -> list[int]:
    """Ids of vocabulary entries whose decoded text holds ``text`` (a newline ends the description line,
    a blank line the keyword list)."""
    return [i for i in range(len(tok)) if text in tok.decode([i])]


def token_annotations(extractor, table, texts: Sequence[str], k: int = MAX_KEYWORDS):
    """What an extractor says about every token of ``table`` (``texts[i]`` describes row ``i``), as a
    ``pandas.DataFrame`` with columns ``token``, ``level`` (1-based), ``rows``, ``source``, ``description``
    and ``keywords`` (first ``k``, comma-joined), for notebooks.

    ``extractor``: an :class:`LLMKeywords` (after stage 03 its cache answers at once) or ``None``/any
    other extractor (TF-IDF keywords, no description).
    """
    import pandas as pd

    from align3gr_kit.prompts.keywords import token_groups

    groups = token_groups(table)
    docs = groups.documents(texts)
    if hasattr(extractor, "annotate"):
        notes = extractor.annotate(docs, kind=table.kind)
    else:
        kws = (extractor or TfidfKeywords()).extract(docs, k, kind=table.kind)
        notes = [TokenAnnotation("", kw, "tfidf") for kw in kws]
    return pd.DataFrame({"token": groups.tokens, "level": [lv + 1 for lv in groups.levels],
                         "rows": [len(r) for r in groups.rows], "source": [n.source for n in notes],
                         "description": [n.description for n in notes],
                         "keywords": [", ".join(n.keywords[:k]) for n in notes]})
