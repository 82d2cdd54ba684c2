"""The curriculum explorer: what SFT, every SP-DPO and every RF-DPO sub-stage did to a user's
recommendations, drawn from a finished run (no training, no beam search).

For a few users (the "DPO users": users with preference pairs, :func:`pick_users`) it shows side by side:

* who the user is: the history (titles), the user SCID, the task-A prompt the models answer, the test target;
* the top 10 of every model of the curriculum (SFT, each SP-DPO sub-stage, each RF-DPO sub-stage), read
  from the stages' ``recommendations.json`` (:func:`align3gr_kit.evaluate.read_recommendations`), the
  target marked (hit) and the items the evaluation judge grades liked
  (:func:`align3gr_kit.feedback.evaluation.optional_judge`);
* the user's preference pairs in each sub-stage (``<sub-stage>/preferences.jsonl``): the chosen item,
  every rejected item with its difficulty (SP: shared semantic SCID levels) or feedback grade (RF), and the
  chosen-minus-rejected log-prob margin under the sub-stage's reference (before) and its trained policy
  (after).

Over all DPO pairs and users: the distribution of the margins before and after each sub-stage
(:func:`margin_summary`), and how much the top 10 of consecutive models overlap (:func:`overlap_table`).

Margins come from ``<sub-stage>/pair_margins.json`` (``{"user_id": [n], "reference": [n][N_i],
"policy": [n][N_i]}``, one entry per example of ``preferences.jsonl``, in its order) when the run wrote
it; else they are computed here (:func:`score_margins`): the sub-stage's reference is the model it
started from (the previous sub-stage's, or the upstream stage's final model), its policy the model it
saved, and each response is scored as training scored it (:func:`align3gr_kit.dpo.negatives.response_logps_batch`).

The figures are plotly figures whose dropdown switches between the precomputed users, so that they
stay interactive in a static HTML report (no kernel).

Imports of the kit: ``config``, ``evaluate``, ``feedback.evaluation``, ``model``, ``utils`` and
``dpo.artifacts``/``negatives``/``pipeline``; nothing imports this module but notebooks and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from align3gr_kit.config import RunConfig
from align3gr_kit.dpo.artifacts import PAIR_MARGINS, DPOArtifacts
from align3gr_kit.evaluate import evaluation_prompts, read_recommendations
from align3gr_kit.utils import read_json
from align3gr_kit.viz import dropdown_figure

#: DPO stage folder -> the label prefix of its sub-stages.
DPO_LABELS = {"05_sp_dpo": "SP-DPO", "06_rf_dpo": "RF-DPO"}
HIT, LIKED = "#b7e4c7", "#fde2e4"  # cell colours of the top-10 table


@dataclass
class SubStage:
    """One trained DPO sub-stage: ``label`` (``SP-DPO easy``), its stage folder name (``05_sp_dpo``), its
    name (``easy``), its artifacts, and the folders of the models it started from and ended with."""

    label: str
    stage: str
    name: str
    artifacts: DPOArtifacts
    reference_dir: Path
    policy_dir: Path

    @property
    def folder(self) -> Path:
        return self.artifacts.folder / self.name


@dataclass
class Curriculum:
    """A finished run's curriculum, ready to draw (built by :func:`load_curriculum`).

    Attributes:
        models: model labels in curriculum order (``SFT``, ``SP-DPO easy``, ..., ``RF-DPO hard``).
        split: the evaluation split the top 10 come from (``test``).
        users: the dropdown's users (:func:`pick_users`).
        user_info: per dropdown user: ``history`` (titles, oldest first), ``user_scid`` (None when the run
            has no user SCIDs), ``prompt``, ``target`` (title and SCID).
        top: long table ``model, user_id, rank (1-based), item, title, scid, hit, liked`` of the dropdown
            users' top 10 (``liked``: None without a judge).
        recommendations: ``{model: {"user_id": [n], "items": [n][K]}}`` of every evaluated user (the saved
            recommendations of the split).
        pairs: long table of every DPO pair of every user: ``model, example, user_id, chosen_item,
            rejected_item, j, detail, margin_before, margin_after`` (one row per rejected response).
        margin_source: per sub-stage, ``file`` (``pair_margins.json``) or ``computed``.
    """

    models: list[str]
    split: str
    users: list[int]
    user_info: dict[int, dict[str, Any]]
    top: pd.DataFrame
    recommendations: dict[str, dict[str, list]]
    pairs: pd.DataFrame
    margin_source: dict[str, str] = field(default_factory=dict)

    @property
    def dpo_models(self) -> list[str]:
        """The DPO sub-stages' labels (every model but SFT)."""
        return self.models[1:]


def sub_stages(cfg: RunConfig, artifacts: Callable[[str], Any], stages: tuple[str, ...]) -> list[SubStage]:
    """The trained sub-stages of the DPO ``stages`` (``05_sp_dpo``, ``06_rf_dpo``), in training order, each
    with its reference (the model it started from) and policy folders.

    ``artifacts(name)``: the typed artifacts of a finished stage (``StageRun.input``); the first sub-stage
    of 05 starts from 04_sft's model, the first of 06 from 05's last (04_sft's when the run has no SP-DPO).
    """
    from align3gr_kit.dpo.pipeline import sp_stage_names

    out: list[SubStage] = []
    for stage in stages:
        art: DPOArtifacts = artifacts(stage)
        if stage == "05_sp_dpo" or not sp_stage_names(cfg.dpo):
            previous = artifacts("04_sft").model_dir
        else:
            previous = artifacts("05_sp_dpo").final_model_dir
        for name in art.stages:
            policy = art.folder / name / "model"
            out.append(SubStage(f"{DPO_LABELS[stage]} {name}", stage, name, art, Path(previous), policy))
            previous = policy
    return out


def read_pair_margins(folder: Path) -> dict[str, list] | None:
    """``<sub-stage folder>/pair_margins.json`` (see the module docstring), or None when the run has none."""
    path = Path(folder) / PAIR_MARGINS
    return read_json(path) if path.exists() else None


def score_margins(cfg: RunConfig, model_dir: Path, examples: list[dict]) -> list[list[float]]:
    """Per example, ``[N]`` chosen-minus-rejected_j log-prob margins of its SCIDs under the model saved in
    ``model_dir``, scored as DPO training scores responses (the run's prompt encoding, ``sft.max_length``,
    ``model.dtype``; :func:`align3gr_kit.dpo.negatives.response_logps_batch`)."""
    from align3gr_kit.dpo.negatives import response_logps_batch
    from align3gr_kit.model import load_model, prompt_encoder

    model, tokenizer, items, _ = load_model(model_dir, cfg.model.dtype, cfg.model.trust_remote_code)
    encode = prompt_encoder(tokenizer, cfg.sft.max_length - items.levels - 1)
    queries = [(e["prompt"], [int(e["chosen_item"])] + [int(r) for r in e["rejected_items"]]) for e in examples]
    logps = response_logps_batch(model, tokenizer, queries, items, encode, cfg.sft.max_length,
                                 cfg.decode.batch_size, cfg.model.dtype)
    return [[float(lp[0] - r) for r in lp[1:]] for lp in logps]


def substage_margins(cfg: RunConfig, sub: SubStage, examples: list[dict],
                     compute: bool = False) -> tuple[list[list[float]], list[list[float]], str]:
    """``(reference margins, policy margins, source)`` of a sub-stage's examples: from its
    ``pair_margins.json`` (``source="file"``) unless ``compute`` or the file is absent, then scored with
    :func:`score_margins` (``"computed"``)."""
    kept = None if compute else read_pair_margins(sub.folder)
    if kept is not None:
        if len(kept["reference"]) != len(examples) or len(kept["policy"]) != len(examples):
            raise ValueError(f"{sub.folder / PAIR_MARGINS}: {len(kept['reference'])} entries for {len(examples)} "
                             f"examples in {sub.folder / 'preferences.jsonl'}; re-run {sub.stage}")
        return kept["reference"], kept["policy"], "file"
    return score_margins(cfg, sub.reference_dir, examples), score_margins(cfg, sub.policy_dir, examples), "computed"


def pick_users(examples_by_model: dict[str, list[dict]], evaluated: list[int], n_users: int) -> list[int]:
    """The dropdown's users: evaluated users with preference pairs, those in the most sub-stages first
    (then by user id), at most ``n_users``."""
    seen = set(int(u) for u in evaluated)
    count: dict[int, int] = {}
    for examples in examples_by_model.values():
        for u in {int(e["user_id"]) for e in examples} & seen:
            count[u] = count.get(u, 0) + 1
    return sorted(count, key=lambda u: (-count[u], u))[:n_users]


def _title(dataset, item: int, width: int | None = None) -> str:
    return _cut(str(dataset.items.title.iloc[int(item)]) or f"item {item}", width)


def _cut(text: str, width: int | None) -> str:
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def _detail(example: dict, j: int) -> str:
    """What makes rejected response ``j`` rejected: the RF grade, or the SCID levels it shares (SP)."""
    if "rejected_levels" in example:
        return str(example["rejected_levels"][j])
    if "overlaps" in example:
        return f"{example['overlaps'][j]} shared level(s)"
    return ""


def load_curriculum(cfg: RunConfig, artifacts: Callable[[str], Any], stages: tuple[str, ...] = ("05_sp_dpo",),
                    split: str = "test", n_users: int = 8, compute_margins: bool = False,
                    judge: Any = "default") -> Curriculum:
    """Everything the explorer shows, read from a finished run.

    Args:
        cfg: the run's config.
        artifacts: ``stage name -> typed artifacts`` of a finished stage (``StageRun.input``; for the stage
            a notebook views or has just trained, its ``stage.output``): ``00_data``, ``01_tokenize``,
            ``04_sft`` and the DPO ``stages``.
        stages: the DPO stages shown, in order (``("05_sp_dpo",)`` or ``("05_sp_dpo", "06_rf_dpo")``).
        split: the split whose saved top 10 are shown.
        n_users: how many users the dropdown offers.
        compute_margins: score the margins with the models even where ``pair_margins.json`` exists.
        judge: grades the top 10 (liked); ``"default"``: the run's evaluation judge
            (:func:`align3gr_kit.feedback.evaluation.optional_judge`); None: no liked marks.
    Returns:
        A :class:`Curriculum`.
    Raises:
        FileNotFoundError: a stage kept no ``recommendations.json`` (a run made before they were kept): re-run it.
    """
    from align3gr_kit.feedback.evaluation import optional_judge

    data, tok = artifacts("00_data"), artifacts("01_tokenize")
    dataset, samples = data.dataset, data.split.samples(split).reset_index(drop=True)
    subs = sub_stages(cfg, artifacts, stages)
    folders = [("SFT", "SFT", artifacts("04_sft").folder)] + [(s.label, s.name, s.artifacts.folder) for s in subs]
    recs: dict[str, dict[str, list]] = {}
    for label, key, folder in folders:
        kept = read_recommendations(folder).get(key, {}).get(split)
        if kept is None:
            raise FileNotFoundError(f"{folder}/recommendations.json: no {split} recommendations of {key!r} (a run "
                                    f"made before they were kept); re-run {Path(folder).name} to keep them")
        recs[label] = kept
    models = [label for label, _, _ in folders]

    examples = {s.label: s.artifacts.preferences(s.name) for s in subs}
    rows, sources = [], {}
    for s in subs:
        before, after, sources[s.label] = substage_margins(cfg, s, examples[s.label], compute_margins)
        for k, (e, mb, ma) in enumerate(zip(examples[s.label], before, after)):
            for j, item in enumerate(e["rejected_items"]):
                rows.append({"model": s.label, "example": k, "user_id": int(e["user_id"]),
                             "chosen_item": int(e["chosen_item"]), "rejected_item": int(item), "j": j,
                             "detail": _detail(e, j), "margin_before": float(mb[j]), "margin_after": float(ma[j])})
    pairs = pd.DataFrame(rows, columns=["model", "example", "user_id", "chosen_item", "rejected_item", "j", "detail",
                                        "margin_before", "margin_after"])

    users = pick_users(examples, recs["SFT"]["user_id"], n_users)
    row_of = {int(u): r for r, u in enumerate(samples.user_id)}
    use_user = cfg.prompts.user_scid_in_prompt and tok.users is not None
    info, top = {}, []
    judge = optional_judge(dataset, cfg.seed) if judge == "default" else judge
    for u in users:
        sample = samples.iloc[[row_of[u]]]
        target = int(sample.target.iloc[0])
        info[u] = {"history": [_title(dataset, i) for i in sample.history.iloc[0]],
                   "user_scid": tok.users.string(u) if tok.users is not None else None,
                   "prompt": evaluation_prompts(sample, tok.items, tok.users, use_user)[0],
                   "target": f"{_title(dataset, target)} {tok.items.string(target)}", "target_item": target}
        for label in models:
            kept = recs[label]
            items = [int(i) for i in kept["items"][kept["user_id"].index(u)] if int(i) >= 0]
            levels = judge.levels([u] * len(items), items) if judge is not None else [None] * len(items)
            for rank, (item, level) in enumerate(zip(items, levels), start=1):
                top.append({"model": label, "user_id": u, "rank": rank, "item": item, "title": _title(dataset, item),
                            "scid": tok.items.string(item), "hit": item == target,
                            "liked": None if judge is None else level == "liked"})
    top_df = pd.DataFrame(top, columns=["model", "user_id", "rank", "item", "title", "scid", "hit", "liked"])
    return Curriculum(models, split, users, info, top_df, recs, pairs, sources)


def explore_curriculum(stage, n_users: int = 8, split: str = "test", compute_margins: bool = False) -> Curriculum:
    """:func:`load_curriculum` from a notebook's stage (a ``StageRun`` or ``StageView`` of ``05_sp_dpo`` or
    ``06_rf_dpo``): its own artifacts from ``stage.output``, upstream ones from ``stage.input``; 06 shows the
    SP-DPO sub-stages before its own when the run has them."""
    from align3gr_kit.dpo.pipeline import sp_stage_names

    own = stage.final_dir.name
    if own not in DPO_LABELS:
        raise ValueError(f"explore_curriculum: {own} is not a DPO stage; use it in notebooks 05_sp_dpo / 06_rf_dpo")
    stages = ("05_sp_dpo", own) if own == "06_rf_dpo" and sp_stage_names(stage.cfg.dpo) else (own,)
    return load_curriculum(stage.cfg, lambda n: stage.output if n == own else stage.input(n), stages, split=split,
                           n_users=n_users, compute_margins=compute_margins)


# ---- tables -------------------------------------------------------------------------------------------


def user_table(cur: Curriculum, user: int) -> pd.DataFrame:
    """Who ``user`` is: user SCID, test target, history (titles, oldest first) and the task-A prompt."""
    i = cur.user_info[user]
    rows = [("user SCID", i["user_scid"] or "(none)"), (f"{cur.split} target", i["target"])]
    rows += [(f"history {k}", t) for k, t in enumerate(i["history"], start=1)]
    rows.append(("prompt", i["prompt"].strip()))
    return pd.DataFrame(rows, columns=["field", "value"])


def top10_table(cur: Curriculum, user: int) -> pd.DataFrame:
    """``user``'s top 10 of every model side by side (one column per model, rank rows): ``title SCID``
    followed by ``[hit]`` (the test target) and ``[liked]`` (graded liked by the judge)."""
    d = cur.top[cur.top.user_id == user]
    cell = d.title + " " + d.scid + np.where(d.hit, " [hit]", "") + np.where(d.liked.fillna(False).astype(bool),
                                                                             " [liked]", "")
    wide = d.assign(cell=cell).pivot(index="rank", columns="model", values="cell")
    return wide.reindex(columns=cur.models).fillna("")


def pairs_table(cur: Curriculum, user: int, dataset=None, item_scids=None, width: int | None = None) -> pd.DataFrame:
    """``user``'s preference pairs in every sub-stage: one row per rejected response with the chosen item,
    the rejected item, its difficulty or grade, and the margin before (reference) and after (policy).
    With ``dataset`` and ``item_scids``, items are shown as ``title SCID`` (titles cut at ``width``)."""
    d = cur.pairs[cur.pairs.user_id == user].copy()
    if dataset is not None and item_scids is not None:
        for col in ("chosen_item", "rejected_item"):
            d[col] = [f"{_title(dataset, i, width)} {item_scids.string(int(i))}" for i in d[col]]
    d["change"] = d.margin_after - d.margin_before
    return d.drop(columns=["user_id"]).reset_index(drop=True)


def margin_summary(cur: Curriculum) -> pd.DataFrame:
    """Per sub-stage over all its pairs (every DPO user): pairs, users, mean and median margin before
    (reference) and after (policy), and the share of pairs whose margin grew."""
    rows = []
    for label in cur.dpo_models:
        d = cur.pairs[cur.pairs.model == label]
        rows.append({"sub-stage": label, "pairs": len(d), "users": d.user_id.nunique(),
                     "mean before": d.margin_before.mean(), "mean after": d.margin_after.mean(),
                     "median before": d.margin_before.median(), "median after": d.margin_after.median(),
                     "share grew": float((d.margin_after > d.margin_before).mean()) if len(d) else float("nan")})
    return pd.DataFrame(rows)


def _top_sets(cur: Curriculum, label: str, k: int) -> dict[int, set[int]]:
    kept = cur.recommendations[label]
    return {int(u): {int(i) for i in row[:k] if int(i) >= 0} for u, row in zip(kept["user_id"], kept["items"])}


def overlap_matrix(cur: Curriculum, k: int = 10) -> pd.DataFrame:
    """Mean Jaccard similarity of two models' top-``k`` sets over every evaluated user, for every pair of models."""
    sets = {m: _top_sets(cur, m, k) for m in cur.models}
    out = pd.DataFrame(index=cur.models, columns=cur.models, dtype=float)
    for a in cur.models:
        for b in cur.models:
            users = sets[a].keys() & sets[b].keys()
            out.loc[a, b] = float(np.mean([len(sets[a][u] & sets[b][u]) / max(1, len(sets[a][u] | sets[b][u]))
                                           for u in users]))
    return out


def overlap_table(cur: Curriculum, k: int = 10) -> pd.DataFrame:
    """Consecutive models of the curriculum: mean items shared by their top-``k`` lists, mean Jaccard,
    and the share of users whose list did not change at all (over every evaluated user)."""
    sets = {m: _top_sets(cur, m, k) for m in cur.models}
    rows = []
    for a, b in zip(cur.models, cur.models[1:]):
        users = sorted(sets[a].keys() & sets[b].keys())
        shared = [len(sets[a][u] & sets[b][u]) for u in users]
        jac = [s / max(1, len(sets[a][u] | sets[b][u])) for s, u in zip(shared, users)]
        rows.append({"from": a, "to": b, "users": len(users), f"shared of {k}": float(np.mean(shared)),
                     "jaccard": float(np.mean(jac)),
                     "unchanged": float(np.mean([sets[a][u] == sets[b][u] for u in users]))})
    return pd.DataFrame(rows)


# ---- figures (a dropdown over the precomputed users: interactive in a static HTML report) -----------


def _per_user_dropdown(fig: go.Figure, cur: Curriculum, titles: list[str], traces_per_user: int) -> go.Figure:
    """A dropdown over ``cur.users``, each user owning ``traces_per_user`` consecutive traces of ``fig``."""
    groups = [list(range(n * traces_per_user, (n + 1) * traces_per_user)) for n in range(len(cur.users))]
    return dropdown_figure(fig, groups, [f"user {u}" for u in cur.users], titles, y=1.02, yanchor="bottom")


def _user_title(cur: Curriculum, u: int) -> str:
    i = cur.user_info[u]
    scid = f" {i['user_scid']}" if i["user_scid"] else ""
    return f"user {u}{scid} · {cur.split} target: {i['target']}"


def top10_figure(cur: Curriculum) -> go.Figure:
    """Pick a user (dropdown): its history and prompt above, the top 10 of every model side by side below
    (green: the test target, pink: graded liked by the judge)."""
    fig = make_subplots(rows=2, cols=1, specs=[[{"type": "table"}], [{"type": "table"}]], row_heights=[0.35, 0.65],
                        vertical_spacing=0.03)
    for u in cur.users:
        who = user_table(cur, u)
        fig.add_trace(go.Table(header={"values": ["", "value"]}, columnwidth=[1, 6],
                               cells={"values": [who.field, who.value], "align": "left"}), row=1, col=1)
        d = cur.top[cur.top.user_id == u]
        values, fills = [list(range(1, 11))], [["white"] * 10]
        for m in cur.models:
            dm = d[d.model == m].set_index("rank").reindex(range(1, 11))
            values.append([f"{_cut(t, 30)} {s}" if isinstance(t, str) else "" for t, s in zip(dm.title, dm.scid)])
            fills.append([HIT if h is True else LIKED if lk is True else "white" for h, lk in zip(dm.hit, dm.liked)])
        fig.add_trace(go.Table(header={"values": ["rank"] + cur.models}, columnwidth=[0.4] + [2] * len(cur.models),
                               cells={"values": values, "fill_color": fills, "align": "left", "font": {"size": 10}}),
                      row=2, col=1)
    titles = [_user_title(cur, u) for u in cur.users] or ["no DPO user"]
    fig.update_layout(height=760, margin={"t": 110})
    return _per_user_dropdown(fig, cur, titles, traces_per_user=2)


def pairs_figure(cur: Curriculum, dataset, item_scids) -> go.Figure:
    """Pick a user (dropdown): its preference pairs in every sub-stage (chosen, rejected with difficulty or
    grade) and each pair's margin under the sub-stage's reference (before) and policy (after)."""
    fig = go.Figure()
    cols = ["model", "example", "chosen_item", "rejected_item", "detail", "margin_before", "margin_after", "change"]
    for u in cur.users:
        d = pairs_table(cur, u, dataset, item_scids, width=28)
        # the chosen item once per example: the figure is stored in the notebook and the report
        d = d.astype({"example": object})
        d.loc[d.j > 0, ["model", "example", "chosen_item"]] = ""
        vals = [d[c].round(3) if d[c].dtype.kind == "f" else d[c] for c in cols]
        fig.add_trace(go.Table(header={"values": ["sub-stage", "ex.", "chosen", "rejected", "difficulty / grade",
                                                  "margin before", "margin after", "change"]},
                               columnwidth=[1.1, 0.4, 2.4, 2.4, 1.1, 0.8, 0.8, 0.7],
                               cells={"values": vals, "align": "left", "font": {"size": 10}}))
    titles = [f"{_user_title(cur, u)} · {int((cur.pairs.user_id == u).sum())} pairs" for u in cur.users]
    fig.update_layout(height=560, margin={"t": 110})
    return _per_user_dropdown(fig, cur, titles or ["no DPO user"], traces_per_user=1)


def margins_figure(cur: Curriculum) -> go.Figure:
    """Distribution of the chosen-minus-rejected margin over every DPO pair, per sub-stage: under its
    reference (before training) and its trained policy (after)."""
    fig = go.Figure()
    for col, name, colour in (("margin_before", "before (reference)", "#1f77b4"),
                              ("margin_after", "after (policy)", "#d62728")):
        # quartiles computed here, not thousands of points shipped to the browser: the figure stays small
        st = [_box_stats(cur.pairs.loc[cur.pairs.model == m, col].to_numpy()) for m in cur.dpo_models]
        fig.add_trace(go.Box(x=cur.dpo_models, name=name, marker_color=colour,
                             **{k: [round(x[k], 4) for x in st] for k in st[0]} if st else {}))
    fig.update_layout(boxmode="group", title="log π(chosen) − log π(rejected) per pair, before and after each sub-stage",
                      xaxis_title="sub-stage", yaxis_title="margin (nats)", height=420)
    return fig


def _box_stats(values: np.ndarray) -> dict[str, float]:
    """Quartiles, mean and Tukey fences (the most extreme values within 1.5 IQR of the box) of ``values``."""
    if len(values) == 0:
        return dict.fromkeys(("q1", "median", "q3", "mean", "lowerfence", "upperfence"), float("nan"))
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    iqr = q3 - q1
    inside = values[(values >= q1 - 1.5 * iqr) & (values <= q3 + 1.5 * iqr)]
    return {"q1": q1, "median": med, "q3": q3, "mean": float(values.mean()), "lowerfence": float(inside.min()),
            "upperfence": float(inside.max())}


def overlap_figure(cur: Curriculum, k: int = 10) -> go.Figure:
    """Mean Jaccard similarity of every two models' top-``k`` lists over every evaluated user (a heatmap)."""
    m = overlap_matrix(cur, k)
    fig = go.Figure(go.Heatmap(z=m.to_numpy(), x=m.columns, y=m.index, zmin=0, zmax=1, colorscale="Blues",
                               text=m.round(2).to_numpy(), texttemplate="%{text}"))
    fig.update_layout(title=f"top-{k} overlap between models (mean Jaccard over {cur.split} users)", height=420,
                      yaxis={"autorange": "reversed"})
    return fig
