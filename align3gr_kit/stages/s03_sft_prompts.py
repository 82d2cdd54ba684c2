"""Stage 03: the multi-task SFT dataset (LC-Rec tasks + user alignment) and the backbone's tokenizer."""

from __future__ import annotations

import time
from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.model.backbone import build_tokenizer
from align3gr_kit.model.sa_init import keyword_extractor
from align3gr_kit.prompts import build_sft_dataset, find_leaks, task_counts
from align3gr_kit.prompts.artifacts import SFTData
from align3gr_kit.stages.contract import StageRun
from align3gr_kit.train.sft import scid_vocabulary, tokenizer_corpus

KEYWORDS = "keywords"  # the LLM keyword cache (llm_keywords.json), read again by stage 04


def run(cfg: RunConfig, stage: StageRun, progress: bool = True) -> dict[str, Any]:
    """Build the SFT rows of ``cfg.prompts`` from the training split, check that no row leaks a
    validation/test event, build the tokenizer with every SCID token (``tiny-llama``: a BPE trained on
    the run's text) and save :class:`SFTData`. Returns the example counts per task."""
    data, tok = stage.input("00_data"), stage.input("01_tokenize")
    ds, split = data.dataset, data.split
    t0 = time.time()
    # model.sa_init_extractor: llm -> the backbone describes each SCID token for TS-Align (cached here for stage 04).
    extractor = keyword_extractor(cfg.model, stage.dir / KEYWORDS)
    sft = build_sft_dataset(ds, split, tok.items, tok.users, cfg.prompts, cfg.seed, keyword_extractor=extractor,
                            progress=progress)
    leaks = find_leaks(sft, split, tok.items)
    if leaks:
        raise RuntimeError("SFT data leaks validation/test events:\n" + "\n".join(leaks))
    tokenizer = build_tokenizer(cfg.model, tokenizer_corpus(ds, sft, cfg.seed), scid_vocabulary(tok.items, tok.users))
    SFTData(sft, tokenizer).save(stage.dir)
    counts = task_counts(sft)
    llm = {f"keywords_{k}": v for k, v in extractor.stats.items()} if extractor is not None else {}
    return {"examples": len(sft), "leaks": 0, "vocab": len(tokenizer), "seconds": round(time.time() - t0, 2), **llm,
            **{f"examples_{t}": int(n) for t, n in zip(counts.task, counts.examples)}}
