"""The report's reading of its own numbers, the full pipeline's per-stage table, the paper side by side,
and run_benchmark end to end against a fake pipeline (classic baselines for real)."""

import json

import numpy as np
import pandas as pd
import pytest

from align3gr_kit.stages import runner
from align3gr_kit.config import RunConfig
from align3gr_kit.report.benchmark import report_metrics, run_benchmark
from align3gr_kit.report.figures import comparison_figure, ladder_figure
from align3gr_kit.report.paper import INSTRUMENTS_TABLE1, context_note, side_by_side
from align3gr_kit.report.reading import baseline_reading, caveats, compare, honest_reading, ladder_reading, stage_reading
from align3gr_kit.evaluate import write_target_ranks
from align3gr_kit.report.specs import SMOKE_REPORT_OVERRIDES, report_overrides
from align3gr_kit.report.stage_metrics import paired_reading, paired_steps, pipeline_stage_metrics, pipeline_target_ranks
from align3gr_kit.stages.contract import StageRun
from align3gr_kit.utils import project_root, write_json

SMOKE = str(project_root() / "configs" / "smoke.yaml")


def _summary(rows):
    return pd.DataFrame([{"method": m, "recall@10": r, "ndcg@10": r / 2, **({"recall@10 sd": sd} if sd is not None else {})}
                         for m, r, sd in rows])


def test_baseline_reading_says_below_sasrec_with_the_ratio():
    t = _summary([("Popularity", 0.05, None), ("SASRec", 0.08, None), ("TIGER-style", 0.04, None),
                  ("Align3GR (full)", 0.06, None)])
    text = " ".join(baseline_reading(t))
    assert "Align3GR (full) is below SASRec on test Recall@10: 0.0600 vs 0.0800 (ratio 0.75)." in text
    assert "Ranking by test Recall@10: SASRec 0.0800, Align3GR (full) 0.0600, Popularity 0.0500, TIGER-style 0.0400." in text
    assert "above Popularity" in text and "above TIGER-style" in text
    assert "Not above the popularity ranking (0.0500): TIGER-style." in text
    up = " ".join(baseline_reading(_summary([("SASRec", 0.08, None), ("Align3GR (full)", 0.1, None)])))
    assert "is above SASRec" in up and "ratio 1.25" in up and "popularity" not in up


def test_within_the_seed_spread_and_failed_methods():
    t = _summary([("SASRec", 0.080, 0.004), ("Align3GR (full)", 0.083, 0.002)])
    assert "is within the seed spread of SASRec" in " ".join(baseline_reading(t))
    t = _summary([("SASRec", 0.080, 0.001), ("Align3GR (full)", 0.083, 0.002)])
    assert "is above SASRec" in " ".join(baseline_reading(t))
    assert compare(0.1, 0.1) == "level with" and compare(0.1, 0.2, 0.05) == "below"
    failed = _summary([("SASRec", 0.08, None), ("Align3GR (full)", float("nan"), None)])
    text = baseline_reading(failed)
    assert text[0] == "'Align3GR (full)' produced no Recall@10 (its run failed; see the runs table)."
    assert not any("ratio" in s for s in text)


def test_ladder_reading_reports_each_step_and_the_extremes():
    ladder = _summary([("Single+SEQ", 0.10, None), ("+CF", 0.12, None), ("+Dual SCID", 0.09, None),
                       ("+U-I align", float("nan"), None), ("+B1", 0.09, None), ("+C1-C3", 0.15, None)])
    text = ladder_reading(ladder)
    assert text[0].startswith("Rung '+U-I align' produced no Recall@10")
    assert "+CF (vs Single+SEQ): test Recall@10 0.1000 -> 0.1200 (+0.0200, +20%): helped." in text
    assert "+Dual SCID (vs +CF): test Recall@10 0.1200 -> 0.0900 (-0.0300, -25%): hurt." in text
    assert "+B1 (vs +Dual SCID): test Recall@10 0.0900 -> 0.0900 (+0.0000, +0%): changed nothing." in text
    assert "2 of 4 steps raised test Recall@10 (+CF, +C1-C3); 1 lowered it (+Dual SCID)." in text
    assert "Largest gain: +C1-C3 (+0.0600)." in text and "Largest drop: +Dual SCID (-0.0300)." in text
    assert text[-1] == "Whole ladder, Single+SEQ -> +C1-C3: test Recall@10 0.1000 -> 0.1500 (+0.0500, +50%)."
    noisy = _summary([("a", 0.10, 0.02), ("b", 0.11, 0.01)])
    assert "moved it within the seed spread" in ladder_reading(noisy)[0]
    assert "nothing to compare" in ladder_reading(_summary([("a", 0.1, None)]))[0]


def test_stage_reading_and_caveats():
    st = pd.DataFrame({"model": ["SFT", "SP-DPO easy", "SP-DPO hard", "RF-DPO easy"],
                       "test recall@10": [0.10, 0.12, 0.11, 0.08]})
    text = stage_reading(st)
    assert text[0] == "SP-DPO easy (after SFT): test Recall@10 0.1000 -> 0.1200 (+0.0200, +20%)."
    assert "All SP-DPO stages together: 0.1000 -> 0.1100 (+0.0100, +10%) (from SFT)." in text
    assert "All RF-DPO stages together: 0.1100 -> 0.0800 (-0.0300, -27%) (from SP-DPO hard)." in text
    assert text[-1].startswith("SFT -> final model (RF-DPO easy)")
    c = caveats(1, eval_users=150, smoke=True)
    assert "One seed" in c[0] and "moves Recall@K by 0.0067" in c[1] and "Smoke config" in c[2]
    assert "3 seeds" in caveats(3)[0]
    allt = honest_reading(_summary([("SASRec", 0.08, None), ("Align3GR (full)", 0.06, None)]),
                          _summary([("a", 0.1, None), ("b", 0.2, None)]), st, seeds=1)
    assert allt[0].startswith("One seed") and any("below SASRec" in s for s in allt)
    assert any(s.startswith("b (vs a)") for s in allt) and allt[-1].startswith("SFT -> final model")


def test_pipeline_stage_metrics_reads_sft_and_dpo_histories(tmp_path):
    cfg = RunConfig.from_yaml(SMOKE, run_name="full", runs_dir=str(tmp_path))
    keys = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
    with pytest.raises(FileNotFoundError, match="no finished SFT stage"):
        pipeline_stage_metrics(cfg)
    StageRun(cfg, "04_sft").finish({"test_users": 150, **{f"{s}_{k}": 0.1 * (i + 1) for i, s in enumerate(("valid", "test"))
                                                          for k in keys}})
    for stage, names, base in (("05_sp_dpo", ["easy", "medium", "hard"], 0.3), ("06_rf_dpo", ["easy", "hard"], 0.6)):
        run = StageRun(cfg, stage)
        entries = [{"stage": n, "metrics": {s: {k: base + j / 100 for k in keys} for s in ("valid", "test")}}
                   for j, n in enumerate(names)]
        write_json(run.path("history.json"), {"start": None, "stages": entries})
        run.finish({})
    t = pipeline_stage_metrics(cfg)
    assert t["model"].tolist() == ["SFT", "SP-DPO easy", "SP-DPO medium", "SP-DPO hard", "RF-DPO easy", "RF-DPO hard"]
    assert t["stage"].tolist() == ["04_sft"] + ["05_sp_dpo"] * 3 + ["06_rf_dpo"] * 2
    np.testing.assert_allclose(t["test recall@10"], [0.2, 0.3, 0.31, 0.32, 0.6, 0.61])
    np.testing.assert_allclose(t["valid ndcg@5"], [0.1, 0.3, 0.31, 0.32, 0.6, 0.61])
    assert t["users"].iloc[0] == 150 and pd.isna(t["users"].iloc[1])


def test_paper_side_by_side_and_its_label():
    ours = pd.DataFrame([{"method": "Popularity", "recall@10": 0.1, "ndcg@10": 0.05},
                         {"method": "Align3GR (full)", "recall@10": 0.2, "ndcg@10": 0.1}])
    t = side_by_side(ours).set_index("paper method")
    assert t.loc["Align3GR", "paper recall@10"] == 0.1442 and t.loc["Align3GR", "ours recall@10"] == 0.2
    assert np.isnan(t.loc["", "paper recall@10"])  # Popularity: not in the paper's table
    assert t.loc["LETTER-TIGER", "paper ndcg@10"] == INSTRUMENTS_TABLE1["LETTER-TIGER"][3]
    assert np.isnan(t.loc["SASRec", "ours ndcg@10"])
    assert "another dataset" in context_note("synthetic", backbone="tiny-llama", smoke=True)
    assert "smoke" in context_note("synthetic", smoke=True)
    assert context_note("lcrec", "Instruments").startswith("Same dataset and split")
    assert "same Amazon category" in context_note("amazon2018", "Musical_Instruments")


def test_figures_draw_the_tables():
    s = pd.DataFrame({"method": ["a", "b"], "recall@10": [0.1, 0.2], "recall@10 sd": [np.nan, 0.01],
                      "ndcg@10": [0.05, 0.1]})
    fig = ladder_figure(s)
    assert [t.name for t in fig.data] == ["recall@10", "ndcg@10"] and list(fig.data[0].error_y.array) == [0, 0.01]
    assert list(comparison_figure(s).data[0].y) == ["a", "b"]


def test_run_benchmark_end_to_end_with_a_fake_pipeline(tmp_path, monkeypatch):
    cfg = RunConfig.from_yaml(SMOKE, run_name="b", runs_dir=str(tmp_path / "runs"), overrides={"sft.max_steps": 3})
    calls, seen = [], []

    def fake(cfg, config_path, stages=None, resume=False, overrides=None, **kw):
        calls.append(cfg.run_name)
        seen.append((overrides, cfg.decode.max_eval_users, cfg.sft.max_steps))
        value = 0.01 * len(stages) + 0.001 * len(cfg.prompts.tasks)
        StageRun(cfg, stages[-1]).finish({s: {k: value for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10")}
                                          for s in ("valid", "test")})
        return {"ok": True, "stages": []}

    monkeypatch.setattr(runner, "run_pipeline", fake)
    out = tmp_path / "report"
    res = run_benchmark(cfg, SMOKE, seeds=[0], out_dir=out)
    assert calls == [f"b-baseline-{i:02d}-s0" for i in range(3)] + [f"b-ladder-{i:02d}-s0" for i in range(12)]
    base = pd.read_csv(out / "baselines.csv").set_index("method")
    assert list(base.index) == ["Popularity", "SASRec", "TIGER-style", "LC-Rec-style", "Align3GR (full)"]
    assert base.loc["Align3GR (full)", "recall@10"] == pytest.approx(0.067)
    sas = base.loc["SASRec", "recall@10"]
    assert 0 <= sas <= 1 and res["ratio_vs_sasrec"]["recall@10"] == pytest.approx(round(0.067 / sas, 4))
    assert res["full_runs"] == [str(tmp_path / "runs" / "b-baseline-02-s0")] and res["failed"] == []
    assert len(pd.read_csv(out / "ladder.csv")) == 12 and len(pd.read_csv(out / "ladder_runs.csv")) == 12
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["ratio_vs_sasrec"] == res["ratio_vs_sasrec"] and len(saved["baselines"]) == 5
    # smoke: cheaper settings for every run, the caller's own value (sft.max_steps=3) kept
    want = {k: v for k, v in SMOKE_REPORT_OVERRIDES.items() if k != "sft.max_steps"}
    assert res["smoke_reductions"] == want and "sft.max_steps" in SMOKE_REPORT_OVERRIDES
    assert all(o["decode.max_eval_users"] == 40 and o["sft.max_steps"] == 3 and users == 40 and steps == 3
               for o, users, steps in seen)
    runs = pd.read_csv(out / "baselines_runs.csv")
    assert set(runs.method) >= {"Popularity", "SASRec"}
    m = report_metrics(res)
    assert m["ladder"]["+RF-DPO"]["recall@10"] == pytest.approx(0.067) and m["seeds"] == 1 and m["failed_runs"] == 0


def test_evaluation_split_keeps_the_generative_models_users(synthetic_small):
    from align3gr_kit.data import leave_one_out
    from align3gr_kit.report.specs import evaluation_split

    split = leave_one_out(synthetic_small, 20)
    cut = evaluation_split(split, 30)
    assert len(cut.test) == 30 and len(cut.valid) == 30 and cut.train is split.train
    assert cut.test.user_id.tolist() == split.test.user_id.iloc[:30].tolist()
    assert evaluation_split(split, 0) is split


def test_report_overrides_only_on_smoke_and_never_over_the_callers(tmp_path):
    cfg = RunConfig.from_yaml(SMOKE, runs_dir=str(tmp_path))
    assert report_overrides(cfg, SMOKE) == SMOKE_REPORT_OVERRIDES
    assert report_overrides(cfg.override({"smoke": False}), SMOKE) == {}
    mine = report_overrides(cfg.override({"decode.max_eval_users": 7}), SMOKE, {"dpo.n_rejected": 2})
    assert "decode.max_eval_users" not in mine and "dpo.n_rejected" not in mine and mine["sft.max_steps"] == 10


def test_baselines_are_scored_on_the_users_the_generative_model_is_scored_on(synthetic_small):
    """With decode.max_eval_users = N the SASRec row reads stage 01's per-user ranks of the first N
    test users, and popularity counts those N users too, not every user."""
    from types import SimpleNamespace

    from align3gr_kit.baselines.popularity import popularity_counts, popularity_ranks
    from align3gr_kit.data.split import leave_one_out
    from align3gr_kit.report.pipeline_report import baseline_rows

    split = leave_one_out(synthetic_small)
    data = SimpleNamespace(dataset=synthetic_small, split=split)
    n_test = len(split.test)
    ranks = [0, 20, 3, -1, 7] + [0] * (n_test - 5)  # the first 5: two in the top 5, three in the top 10
    summary = {"sasrec": {"test": {"recall@5": 0.9, "recall@10": 0.9, "ndcg@5": 0.9, "ndcg@10": 0.9}}}
    kept = {"valid": np.array(ranks), "test": np.array(ranks)}  # stage 01's sasrec_ranks_*.npy
    cfg = RunConfig.from_yaml(SMOKE, overrides={"decode.max_eval_users": 5})
    rows = baseline_rows(cfg, data, summary, kept).set_index("method")
    assert rows.loc["SASRec", "recall@5"] == pytest.approx(2 / 5)
    assert rows.loc["SASRec", "recall@10"] == pytest.approx(3 / 5)
    assert rows.loc["SASRec", "ndcg@10"] == pytest.approx((1 + 1 / np.log2(5) + 1 / np.log2(9)) / 5)
    assert "first 5 test users" in rows.loc["SASRec", "source"]
    # popularity by hand on the same 5 users
    counts = popularity_counts(split, synthetic_small.n_items)
    r = popularity_ranks(counts, split.test.target.to_numpy()[:5])
    assert rows.loc["Popularity", "recall@10"] == pytest.approx(np.mean((r >= 0) & (r < 10)))
    # all users: the summary's own numbers when no subset is asked for
    full = baseline_rows(RunConfig.from_yaml(SMOKE, overrides={"decode.max_eval_users": 0}), data, summary, kept)
    assert full.set_index("method").loc["SASRec", "recall@5"] == pytest.approx(sum(1 for x in ranks if 0 <= x < 5) / n_test)


def test_pipeline_pairs_consecutive_models_by_their_kept_target_ranks(tmp_path):
    cfg = RunConfig.from_yaml(SMOKE, run_name="paired", runs_dir=str(tmp_path))
    sft = StageRun(cfg, "04_sft")
    # 40 users; SFT hits the first 10 (ranks 0..9), one at rank 12 (beyond K = 10)
    sft_ranks = list(range(10)) + [12] + [-1] * 29
    write_target_ranks(sft.dir, {"SFT": {"test": sft_ranks}})
    sft.finish({})
    sp = StageRun(cfg, "05_sp_dpo")
    easy = list(range(10)) + [3] * 12 + [-1] * 18       # keeps SFT's 10 hits, adds 12 (the rank-12 user now hit)
    hard = [-1] * 10 + [3] * 12 + [-1] * 18             # loses SFT's 10 hits
    write_json(sp.path("history.json"), {"start": None, "stages": [{"stage": "easy"}, {"stage": "medium"},
                                                                    {"stage": "hard"}]})
    write_target_ranks(sp.dir, {"easy": {"test": easy}, "hard": {"test": hard}})  # medium kept none
    sp.finish({})
    models = pipeline_target_ranks(cfg)
    assert [m for m, _ in models] == ["SFT", "SP-DPO easy", "SP-DPO medium", "SP-DPO hard"]
    assert models[2][1] is None
    steps = paired_steps(models, k=10)
    assert [(s["from"], s["to"]) for s in steps] == [("SFT", "SP-DPO easy")]  # pairs with medium left out
    s = steps[0]
    assert (s["only_a"], s["only_b"], s["users"]) == (0, 12, 40)
    assert s["delta"] == pytest.approx(12 / 40) and s["p"] == pytest.approx(2 / 2 ** 12, abs=1e-4)
    assert paired_reading(s) == "gain beyond user-sampling noise"
    assert paired_reading({"delta": -0.01, "ci_low": -0.03, "ci_high": 0.01}) == "within user-sampling noise"
    assert paired_reading({"delta": -0.1, "ci_low": -0.2, "ci_high": -0.01}) == "loss beyond user-sampling noise"


def test_two_runs_are_paired_on_the_same_users_by_bench_paired_runs(tmp_path, capsys):
    """bench/paired_runs.py: the SFT model of one run against the last SP-DPO policy of another."""
    import runpy

    a = RunConfig.from_yaml(SMOKE, run_name="fp32", runs_dir=str(tmp_path))
    b = RunConfig.from_yaml(SMOKE, run_name="bf16", runs_dir=str(tmp_path))
    sft = StageRun(a, "04_sft")
    write_target_ranks(sft.dir, {"SFT": {"test": [0, 1, 2, -1, -1, 15]}})  # hits users 0-2 (rank 15 > K)
    write_json(sft.path("log_history.json"), [{"step": 1, "loss": 4.0}, {"step": 2, "loss": 2.0},
                                              {"step": 4, "loss": 1.0}, {"train_runtime": 9.0, "step": 4}])
    sft.finish({"train_train_loss": 2.5})
    sp = StageRun(b, "05_sp_dpo")
    write_json(sp.path("history.json"), {"start": None, "stages": [{"stage": "easy"}, {"stage": "hard"}]})
    write_target_ranks(sp.dir, {"easy": {"test": [-1] * 6}, "hard": {"test": [-1, 4, 2, 9, 0, -1]}})
    sp.finish({})
    script = str(project_root() / "bench" / "paired_runs.py")
    argv = ["paired_runs.py", "--a", f"{a.run_dir}:04_sft", "--b", f"{b.run_dir}:05_sp_dpo"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", argv)
        with pytest.raises(SystemExit) as done:
            runpy.run_path(script, run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    # the 'hard' policy (the last sub-stage) hits users 1-4: user 0 by SFT alone, users 3 and 4 by it alone
    assert "| fp32:04_sft | bf16:05_sp_dpo | +0.1667 |" in out and "| 1 | 2 |" in out
    # the SFT side's loss: the manifest's train_loss, first/last logged, the mean after half the steps (2)
    assert ("trainer train_loss 2.500; logged loss 4.00 at step 1, 1.00 at step 4; "
            "mean of the 1 logged values after step 2: 1.000") in out
    StageRun(b, "06_rf_dpo").finish({})  # a stage that kept no ranks is refused by name
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", argv[:-1] + [f"{b.run_dir}:06_rf_dpo"])
        with pytest.raises(SystemExit, match="06_rf_dpo: no test ranks"):
            runpy.run_path(script, run_name="__main__")


def test_bench_paired_runs_reads_committed_row_and_pipeline_files(tmp_path, capsys):
    """Run folders do not outlive a session; the committed results keep the test users' ranks. A row
    file holds one model, a pipeline file one per model (named after ':'); wrong names are refused."""
    import runpy

    row = write_json(tmp_path / "abc-s0-04_sft.json", {"key": "abc-s0-04_sft",
                                                       "test_target_ranks": [0, 1, 2, -1, -1, 15]})
    pipe = write_json(tmp_path / "pipeline-x.json", {"test_target_ranks": {"SFT": [0, 1, 2, -1, -1, 15],
                                                                            "SP-DPO hard": [-1, 4, 2, 9, 0, -1]}})
    script = str(project_root() / "bench" / "paired_runs.py")

    def run(a: str, b: str) -> int | str:
        """The script's exit: 0, or the message it stopped with."""
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("sys.argv", ["paired_runs.py", "--a", a, "--b", b])
            with pytest.raises(SystemExit) as done:
                runpy.run_path(script, run_name="__main__")
        return done.value.code

    assert run(str(row), f"{pipe}:SP-DPO hard") == 0
    out = capsys.readouterr().out
    assert "| abc-s0-04_sft | pipeline-x:SP-DPO hard | +0.1667 |" in out and "| 1 | 2 |" in out
    assert run(f"{pipe}:SFT", str(row)) == 0  # the same ranks: no user hit by one alone
    assert "| pipeline-x:SFT | abc-s0-04_sft | +0.0000 |" in capsys.readouterr().out
    assert "one of ['SFT', 'SP-DPO hard']" in run(str(row), f"{pipe}:RF-DPO")
    assert "a row file holds one model" in run(f"{row}:SFT", str(row))
    assert "no such result file" in run(str(tmp_path / "gone.json"), str(row))


def test_pipeline_document_takes_the_settings_of_the_last_stage_not_of_a_copied_one(tmp_path):
    """A stage copied from another run's identical stage records that run's settings (which differ where
    the stage never reads them): the run's file must describe the run itself. A stage that resumed from
    a training checkpoint timed only its last attempt, and the file must say so."""
    from align3gr_kit.report.ledger import config_fingerprint
    from align3gr_kit.report.pipeline_file import pipeline_document, pipeline_markdown

    cfg = RunConfig.from_yaml(SMOKE, run_name="own", runs_dir=str(tmp_path))
    other = cfg.override({"dpo.rf_progressive": not cfg.dpo.rf_progressive})  # what the copied stages recorded
    keys = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
    StageRun(other, "04_sft").finish({**{f"{s}_{k}": 0.1 for s in ("valid", "test") for k in keys},
                                      "train_resumed_from_step": 350, "train_steps": 600})
    rf = StageRun(cfg, "06_rf_dpo")
    write_json(rf.path("history.json"), {"start": None, "stages": [{"stage": "easy", "metrics": {
        s: {k: 0.2 for k in keys} for s in ("valid", "test")}}]})
    write_target_ranks(rf.dir, {"easy": {"test": [2, -1, 0]}})
    rf.finish({})
    doc = pipeline_document(cfg, SMOKE)
    # the models' per-user ranks travel with the file (the SFT stage kept none here)
    assert doc["test_target_ranks"] == {"RF-DPO easy": [2, -1, 0]}
    assert doc["overrides"] == {} and doc["fingerprint"] == config_fingerprint(cfg) != config_fingerprint(other)
    # the SFT stage continued from a checkpoint: its time is that of the last attempt, and the file says so
    assert doc["resumed"] == {"04_sft": {"from": 350, "of": 600}}
    assert "Stage 04 resumed from its checkpoint at step 350 of 600" in pipeline_markdown(doc)
