"""Multi-task SFT prompts (behaviour level): LC-Rec tasks plus Align3GR's user-aware additions.

Public API::

    build_sft_dataset(ds, split, item_scids, user_scids, cfg, seed) -> datasets.Dataset
    sequential_prompt(user_scid_str | None, history_item_scid_strs) -> str   (evaluation/DPO prompt)
    find_leaks(sft, split, item_scids) -> list[str]                          (empty = no leakage)
    task_counts(sft) -> DataFrame(task, examples, share)
    TEMPLATES, TASKS, KeywordExtractor, TfidfKeywords, token_keywords
    LLMKeywords(load, model_id, cache_dir).annotate(documents, kind) -> [TokenAnnotation]  (LLM extractor)
    token_annotations(extractor, table, texts) -> DataFrame(token, level, rows, source, description, keywords)
"""

from align3gr_kit.prompts.builder import build_sft_dataset, find_leaks, task_counts
from align3gr_kit.prompts.keywords import KeywordExtractor, TfidfKeywords, token_groups, token_keywords
from align3gr_kit.prompts.llm_keywords import LLMKeywords, TokenAnnotation, token_annotations
from align3gr_kit.prompts.tasks import TASKS, PromptContext
from align3gr_kit.prompts.templates import ALL_TASKS, SCID_TASKS, TEMPLATES, sequential_prompt, user_fields

__all__ = [
    "ALL_TASKS",
    "KeywordExtractor",
    "LLMKeywords",
    "PromptContext",
    "SCID_TASKS",
    "TASKS",
    "TEMPLATES",
    "TfidfKeywords",
    "TokenAnnotation",
    "build_sft_dataset",
    "find_leaks",
    "sequential_prompt",
    "task_counts",
    "token_annotations",
    "token_groups",
    "token_keywords",
    "user_fields",
]
