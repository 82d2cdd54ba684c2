"""The ablation ladder as configs, metrics read back from manifests, summaries over seeds, and the
rung runner against a fake pipeline (no notebooks executed)."""

import json

import numpy as np
import pandas as pd
import pytest

from align3gr_kit.stages import runner
from align3gr_kit.config import RunConfig
from align3gr_kit.report.ablation import results_table, run_rungs
from align3gr_kit.report.benchmark import ratio_vs
from align3gr_kit.report.ledger import final_metrics, manifest_final_metrics
from align3gr_kit.report.specs import GENERATIVE_BASELINES, LADDER, SFT_STAGES, Rung, config_diff, reaching_fields
from align3gr_kit.report.statistics import summarise
from align3gr_kit.stages.contract import StageRun
from align3gr_kit.utils import project_root

SMOKE = str(project_root() / "configs" / "smoke.yaml")

# Paper Figure 4, bottom to top: what each rung switches on, read off the figure (independent of
# the LADDER definition). Keys are the config fields whose effective value changes. One departure:
# "+U-I align" before "+Dual SCID", whose user side reaches nothing without L_U2I (see the next test).
FIGURE4 = [
    ("Single+SEQ", None, ()),
    ("+CF", {"tokenizer.use_cf"}, ()),
    ("+U-I align", {"tokenizer.u2i_align"}, ()),
    ("+Dual SCID", {"tokenizer.dual"}, ()),
    ("+C1-C3", {"prompts.tasks"}, ()),  # the paper adds C1-C3 before B1 (issue 37)
    ("+B1", {"prompts.tasks"}, ()),
    ("+User SCID", {"prompts.user_scid_in_prompt"}, ()),
    ("+B2", {"prompts.tasks"}, ()),
    ("+Softmax-DPO", {"dpo.sp_negatives", "dpo.sp_progressive"}, ("05_sp_dpo",)),
    ("+SP-DPO", {"dpo.sp_negatives"}, ()),
    ("+Progressive", {"dpo.sp_progressive"}, ()),
    ("+RF-DPO", set(), ("06_rf_dpo",)),  # rf_progressive is already the default: only the stage is new
]


def _flat(cfg: RunConfig) -> dict:
    return {f"{s}.{k}": v for s, d in cfg.to_dict().items() if isinstance(d, dict) for k, v in d.items()}


def test_ladder_is_cumulative_and_each_rung_changes_exactly_its_delta():
    assert [r.label for r in LADDER] == [f[0] for f in FIGURE4]
    base = RunConfig()
    prev_cfg, prev = None, None
    for rung, (_, changed, new_stages) in zip(LADDER, FIGURE4):
        cfg = _flat(base.override(rung.overrides))
        if prev is not None:
            # cumulative: every earlier override is still there (values may be superseded only by this delta)
            assert set(prev.overrides) <= set(rung.overrides)
            diff = {k for k in cfg if cfg[k] != prev_cfg[k]}
            assert diff == changed, (rung.label, diff)
            assert tuple(s for s in rung.stages if s not in prev.stages) == new_stages
            assert all(s in rung.stages for s in prev.stages)
        prev_cfg, prev = cfg, rung
    first = base.override(LADDER[0].overrides)
    assert (first.tokenizer.dual, first.tokenizer.use_cf, first.tokenizer.u2i_align) == (False, False, False)
    assert first.prompts.tasks == ["A"] and not first.prompts.user_scid_in_prompt
    assert LADDER[0].stages == SFT_STAGES and "02_codebooks" not in LADDER[-1].stages


def _steps_without_effect(rungs) -> list[str]:
    """Labels of rungs whose model-reaching fields and stages equal the previous rung's."""
    base = RunConfig.from_yaml(SMOKE)
    out = []
    for prev, rung in zip(rungs, rungs[1:]):
        a = reaching_fields(base.override(prev.overrides), prev.stages)
        b = reaching_fields(base.override(rung.overrides), rung.stages)
        if a == b and prev.stages == rung.stages:
            out.append(rung.label)
    return out


def test_every_ladder_rung_changes_a_field_that_reaches_the_model():
    assert _steps_without_effect(LADDER) == []
    # the figure's order: "+Dual SCID" right after "+CF" (no L_U2I, no user SCID in prompts, no B2)
    # changes nothing the model sees, and the check says so
    figure_order = [Rung(r.label, {**r.overrides, "tokenizer.u2i_align": False} if r.label == "+Dual SCID" else
                         r.overrides, r.stages) for r in LADDER]
    figure_order = [figure_order[i] for i in (0, 1, 3, 2, *range(4, len(LADDER)))]
    assert _steps_without_effect(figure_order) == ["+Dual SCID"]
    # the old Softmax-DPO rung (catalogue negatives) is not the paper's: it samples the policy's generations
    assert LADDER[8].overrides["dpo.sp_negatives"] == "generated"


def test_top_of_the_ladder_is_the_full_pipeline_and_rungs_share_upstream_stages():
    base = RunConfig.from_yaml(SMOKE)
    full = GENERATIVE_BASELINES[-1]
    assert full.label == "Align3GR (full)" and full.overrides == {}
    top = base.override(LADDER[-1].overrides)
    assert top.to_dict() == base.to_dict() and LADDER[-1].stages == full.stages
    cfgs = [base.override(r.overrides) for r in LADDER]
    # what --resume can share: one dataset for all; one tokenization from "+U-I align" on; one SFT
    # model from "+B2" on (the DPO rungs start from it)
    assert len({c.section_hash("data") for c in cfgs}) == 1
    assert len({c.section_hash("tokenizer") for c in cfgs[3:]}) == 1 and len({c.section_hash("tokenizer") for c in cfgs}) == 4
    sft = ("tokenizer", "prompts", "model", "sft", "decode")
    assert len({c.section_hash(*sft) for c in cfgs[7:]}) == 1
    tiger = GENERATIVE_BASELINES[0]
    assert tiger.overrides == LADDER[0].overrides and tiger.stages == LADDER[0].stages
    lcrec = base.override(GENERATIVE_BASELINES[1].overrides)
    assert lcrec.prompts.tasks == ["A", "B1", "C1-1", "C1-2", "C2", "C3"] and not lcrec.tokenizer.dual


@pytest.fixture()
def cfg(tmp_path):
    return RunConfig.from_yaml(SMOKE, run_name="r", runs_dir=str(tmp_path / "runs"))


VALUES = {"recall@5": 0.1, "recall@10": 0.2, "ndcg@5": 0.05, "ndcg@10": 0.08}


def test_final_metrics_reads_nested_flat_and_dpo_final_manifests(cfg):
    StageRun(cfg, "04_sft").finish({"valid": VALUES, "test": {k: v / 2 for k, v in VALUES.items()}})
    assert final_metrics(cfg, "04_sft") == {"valid": VALUES, "test": {k: v / 2 for k, v in VALUES.items()}}
    flat = {f"{s}_{k}": v + i for i, s in enumerate(("valid", "test")) for k, v in VALUES.items()}
    StageRun(cfg, "04_sft").finish({**flat, "train_loss": 1.0})
    assert final_metrics(cfg, "04_sft")["test"]["ndcg@10"] == pytest.approx(1.08)
    # the DPO stages' flat layout: the model a stage ends with is "final", not "start" or a stage name
    dpo = {f"{label}/{s}/{k}": v * f for label, f in (("start", 1), ("easy", 2), ("final", 3))
           for s in ("valid", "test") for k, v in VALUES.items()}
    StageRun(cfg, "05_sp_dpo").finish(dpo)
    assert final_metrics(cfg, "05_sp_dpo")["valid"]["recall@10"] == pytest.approx(0.6)
    StageRun(cfg, "06_rf_dpo").finish({"valid": VALUES})
    with pytest.raises(KeyError, match=r"06_rf_dpo/manifest.json: metrics lack test"):
        final_metrics(cfg, "06_rf_dpo")
    with pytest.raises(FileNotFoundError, match="did not finish"):
        final_metrics(cfg, "03_sft_prompts")
    assert manifest_final_metrics({"test": VALUES, "valid_recall@5": 1, "valid_recall@10": 2, "valid_ndcg@5": 3,
                                   "valid_ndcg@10": 4})["valid"] == {"recall@5": 1.0, "recall@10": 2.0,
                                                                      "ndcg@5": 3.0, "ndcg@10": 4.0}


def test_summarise_mean_and_sample_sd_match_numpy():
    rng = np.random.default_rng(0)
    rows = []
    for method, n in (("B", 3), ("A", 2), ("C", 1)):
        for s in range(n):
            rows.append({"method": method, "seed": s, **{k: float(rng.random()) for k in VALUES}})
    rows.append({"method": "A", "seed": 9, "error": "04_sft: boom"})  # a failed run: no metrics
    table = pd.DataFrame(rows)
    out = summarise(table)
    assert out["method"].tolist() == ["B", "A", "C"] and out["seeds"].tolist() == [3, 2, 1]
    for _, r in out.iterrows():
        vals = table[(table.method == r["method"])].dropna(subset=["recall@10"])
        for k in VALUES:
            x = vals[k].to_numpy()
            assert r[k] == pytest.approx(np.mean(x))
            if len(x) > 1:
                assert r[f"{k} sd"] == pytest.approx(np.std(x, ddof=1))
            else:
                assert np.isnan(r[f"{k} sd"])
    assert summarise(pd.DataFrame([{"method": "X", "seed": 0, "error": "e"}]))["seeds"].tolist() == [0]


def test_ratio_vs():
    s = pd.DataFrame([{"method": "SASRec", "recall@10": 0.08, "ndcg@10": 0.05},
                      {"method": "Align3GR (full)", "recall@10": 0.06, "ndcg@10": 0.055},
                      {"method": "Zero", "recall@10": 0.0, "ndcg@10": 0.0}])
    assert ratio_vs(s, "Align3GR (full)", "SASRec") == {"recall@10": 0.75, "ndcg@10": 1.1}
    assert ratio_vs(s, "Align3GR (full)", "Zero") == {"recall@10": None, "ndcg@10": None}
    assert ratio_vs(s, "Align3GR (full)", "Missing") == {"recall@10": None, "ndcg@10": None}


def test_config_diff_recovers_the_overrides(cfg):
    changed = cfg.override({"data.dataset": "ml-100k", "dpo.beta": 0.5, "run_name": "other", "seed": 3})
    assert config_diff(changed, SMOKE) == {"data.dataset": "ml-100k", "dpo.beta": 0.5}
    assert config_diff(cfg, SMOKE) == {}


def _fake_pipeline(calls, fail_label_stage=None):
    """A stand-in for run_pipeline: records its arguments and writes the last stage's manifest with
    metrics that encode the seed and the rung (so results can be traced back)."""

    def fake(cfg, config_path, stages=None, resume=False, overrides=None, kernel_name="python3", render=True,
             reports_dir=None):
        calls.append({"run": cfg.run_name, "seed": cfg.seed, "stages": stages, "resume": resume,
                      "overrides": overrides, "render": render, "config": config_path,
                      "tasks": cfg.prompts.tasks, "dataset": cfg.data.dataset})
        if fail_label_stage and fail_label_stage[0] == cfg.run_name:
            return {"ok": False, "stages": [{"stage": fail_label_stage[1], "status": "failed",
                                             "error": "ValueError: boom", "notebook": "x.failed.ipynb"}]}
        code = len(cfg.prompts.tasks) / 100 + cfg.seed / 1000 + (0.5 if stages[-1] != "04_sft" else 0)
        StageRun(cfg, stages[-1]).finish({s: {k: code for k in VALUES} for s in ("valid", "test")})
        return {"ok": True, "stages": []}

    return fake


def test_run_rungs_names_seeds_overrides_and_failures(cfg, monkeypatch):
    calls = []
    base = cfg.override({"data.dataset": "synthetic", "data.synthetic_users": 40})  # as a notebook/--set would
    monkeypatch.setattr(runner, "run_pipeline", _fake_pipeline(calls, ("r-ladder-02-s1", "01_tokenize")))
    rungs = LADDER[:3] + [LADDER[8]]
    res = run_rungs(base, SMOKE, rungs, seeds=[0, 1], prefix="ladder", base_overrides={"dpo.beta": 0.2})
    assert [c["run"] for c in calls] == [f"r-ladder-{i:02d}-s{s}" for s in (0, 1) for i in range(4)]
    assert [c["seed"] for c in calls] == [0] * 4 + [1] * 4
    assert all(c["resume"] and not c["render"] and c["config"] == SMOKE for c in calls)
    for c, rung in zip(calls, rungs * 2):
        assert c["stages"] == list(rung.stages)
        assert c["overrides"] == {"data.synthetic_users": 40, "dpo.beta": 0.2, **rung.overrides}
        assert "seed" not in c["overrides"] and "run_name" not in c["overrides"]
    assert res[0].metrics["test"]["recall@10"] == pytest.approx(0.01)
    assert res[7].label == "+Softmax-DPO" and res[7].metrics["test"]["recall@10"] == pytest.approx(0.571)  # 7 tasks, seed 1, a DPO stage
    assert res[6].error.startswith("01_tokenize: ValueError: boom") and not res[6].metrics
    table = results_table(res)
    assert table.loc[6, "error"].startswith("01_tokenize") and np.isnan(table.loc[6, "recall@10"])
    summary = summarise(table)
    assert summary.set_index("method").loc["+U-I align", "seeds"] == 1
    assert summary.set_index("method").loc["Single+SEQ", "recall@10"] == pytest.approx(0.0105)
    runs_dir = base.run_dir.parent
    manifest = json.loads((runs_dir / "r-ladder-03-s1" / "05_sp_dpo" / "manifest.json").read_text())
    assert manifest["parameters"]["dpo"]["sp_negatives"] == "generated" and manifest["seed"] == 1


def test_sft_table_rows_see_equal_task_a_examples_and_their_row_files_say_so(tmp_path, monkeypatch):
    """Issue 37: two rows of the SFT table, trained for real (in-process stages, tiny budget), see the
    same task-A examples and different totals; the row files record both, and the totals match an
    independent count of each row's stage-03 dataset."""
    from align3gr_kit.report.specs import table_rungs
    from align3gr_kit.stages.contract import ensure_stage, get_stage
    from align3gr_kit.utils import read_json

    def in_process(cfg, config_path, stages=None, resume=False, overrides=None, kernel_name="python3", render=True,
                   reports_dir=None):  # the stages themselves, without papermill's notebooks
        for s in stages:
            ensure_stage(cfg, s)
        return {"ok": True, "stages": []}

    monkeypatch.setattr(runner, "run_pipeline", in_process)
    base = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "runs"))
    small = {"prompts.max_per_task": 30, "sft.max_steps": 2, "sft.batch_size": 4, "decode.max_eval_users": 3,
             "decode.beam_width": 10}
    rungs = table_rungs("sft")[:2]
    assert [r.label for r in rungs] == ["A", "+C1-C3"]
    results = run_rungs(base, SMOKE, rungs, [0], "sft", base_overrides=small, ledger=tmp_path / "table")
    assert not any(r.error for r in results)
    files = {(f := read_json(p))["run"]: f for p in (tmp_path / "table" / "rows").glob("*.json")}
    ran = [files[r.run_name]["ran"]["04_sft"] for r in results]
    task_a = 2 * 4  # max_steps x batch_size (grad_accum 1): what row A sees
    assert [x["task_a_examples"] for x in ran] == [task_a, task_a]
    for r, rung, x in zip(results, rungs, ran):
        cfg = base.override({**small, **rung.overrides, "run_name": r.run_name})
        # independent count: the tasks of the row's SFT dataset, each scaled to task A's fixed budget
        counts = pd.Series(get_stage("03").load_artifacts(cfg.run_dir / "03_sft_prompts").sft["task"]).value_counts()
        expected = sum(task_a if t == "A" else round(task_a * n / counts["A"]) for t, n in counts.items())
        assert x["mix_examples"] == expected and x["steps"] == -(-expected // 4)
    assert ran[0]["mix_examples"] == task_a < ran[1]["mix_examples"]
