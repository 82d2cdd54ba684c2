"""Tables and plotly figures of stage 03 (SFT prompts): one example per task, the task mix, and
token lengths per task under the backbone's tokenizer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px

from align3gr_kit.model.encoding import encode_prompts
from align3gr_kit.prompts.builder import task_counts
from align3gr_kit.prompts.tasks import TASKS

TASK_NAMES = {
    "A": "A · sequential item prediction",
    "B1": "B1 · item alignment",
    "B2": "B2 · user alignment",
    "C1-1": "C1-1 · SCID history → title",
    "C1-2": "C1-2 · title history → SCID",
    "C2": "C2 · intention → item",
    "C3": "C3 · preference inference",
    "TS-Align": "TS-Align · token ↔ meaning",
}


def task_examples(sft, per_variant: bool = True) -> pd.DataFrame:
    """The first row of every task (of every task variant when ``per_variant``), in task order.

    Returns ``task, variant, prompt, completion``.
    """
    df = sft.select_columns(["task", "variant", "prompt", "completion"]).to_pandas()
    keys = ["task", "variant"] if per_variant else ["task"]
    first = df.groupby(keys, sort=False).head(1)
    order = {t: k for k, t in enumerate(TASKS)}
    return first.sort_values("task", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def format_examples(examples: pd.DataFrame) -> str:
    """Examples as readable blocks: a header, the prompt, then ``→ completion``."""
    blocks = []
    for r in examples.itertuples():
        blocks.append(f"[{TASK_NAMES.get(r.task, r.task)} | {r.variant}]\n{r.prompt.rstrip()}\n→ {r.completion}")
    return "\n\n".join(blocks)


def token_lengths(sft, tokenizer, sample: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Prompt and completion token counts (SFT encoding: BOS + prompt; completion + EOS) on a seeded sample.

    Returns ``task, prompt_tokens, completion_tokens, total_tokens`` (one row per sampled example).
    """
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(sft), size=min(sample, len(sft)), replace=False))
    sub = sft.select(idx)
    prompts = encode_prompts(tokenizer, list(sub["prompt"]))
    comps = tokenizer(list(sub["completion"]), add_special_tokens=False)["input_ids"]
    out = pd.DataFrame({"task": list(sub["task"]), "prompt_tokens": [len(p) for p in prompts],
                        "completion_tokens": [len(c) + 1 for c in comps]})
    out["total_tokens"] = out.prompt_tokens + out.completion_tokens
    return out


def length_table(lengths: pd.DataFrame, max_length: int | None = None) -> pd.DataFrame:
    """Per task: mean and 95th percentile of prompt/total tokens, the maximum, and the share over ``max_length``."""
    g = lengths.groupby("task", sort=False)
    out = pd.DataFrame({
        "prompt_mean": g.prompt_tokens.mean(),
        "completion_mean": g.completion_tokens.mean(),
        "total_p95": g.total_tokens.quantile(0.95),
        "total_max": g.total_tokens.max().astype(float),
    })
    if max_length:
        out["over_max_length"] = g.total_tokens.apply(lambda s: float((s > max_length).mean()))
    order = [t for t in TASKS if t in out.index]
    return out.loc[order].reset_index()


def length_histogram(lengths: pd.DataFrame, max_length: int | None = None):
    """Histogram of total tokens per example, one colour per task."""
    fig = px.histogram(lengths, x="total_tokens", color="task", barmode="overlay", nbins=60, opacity=0.6,
                       title="Tokens per SFT example (prompt + completion), by task",
                       labels={"total_tokens": "tokens", "task": "task"},
                       category_orders={"task": [t for t in TASKS if t in set(lengths.task)]})
    if max_length:
        fig.add_vline(x=max_length, line_dash="dash", annotation_text="sft.max_length")
    return fig


def task_mix_figure(sft):
    """Bar chart of examples per task (the task mix after caps and weights)."""
    counts = task_counts(sft)
    counts["label"] = counts.task.map(lambda t: TASK_NAMES.get(t, t))
    fig = px.bar(counts, x="label", y="examples", text="examples", title="Task mix of the SFT dataset",
                 labels={"label": "task", "examples": "examples"})
    fig.update_traces(textposition="outside")
    return fig
