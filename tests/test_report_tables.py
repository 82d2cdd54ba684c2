"""The papers' tables as configs (rows, shared stages, --upto), verdicts against the spread, the
files a table run writes (against a fake pipeline), and BENCHMARKS.md regenerated from them."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from align3gr_kit.config import RunConfig
from align3gr_kit.report import benchmarks_md
from align3gr_kit.evaluate import write_target_ranks
from align3gr_kit.report.ledger import tables_dir
from align3gr_kit.report.specs import TABLES, reaching_fields, table_rungs
from align3gr_kit.report.statistics import PAIRED_GAIN, PAIRED_LOSS, PAIRED_WITHIN, summarise, verdicts
from align3gr_kit.report.table_files import table_markdown
from align3gr_kit.report.tables import run_table
from align3gr_kit.stages import runner
from align3gr_kit.stages.contract import StageRun, fingerprint, get_stage
from align3gr_kit.utils import project_root, write_json

SMOKE = str(project_root() / "configs" / "smoke.yaml")
SFT_SECTIONS = ("tokenizer", "prompts", "model", "sft", "decode")


def _cfgs(name, upto=None):
    base = RunConfig.from_yaml(SMOKE)
    return [(r, base.override(r.overrides)) for r in table_rungs(name, upto)]


def test_every_row_differs_from_every_other_in_what_reaches_the_model():
    for name in TABLES:
        rows = [(reaching_fields(c, r.stages), r.stages) for r, c in _cfgs(name)]
        for i, a in enumerate(rows):
            for b in rows[i + 1:]:
                assert a != b, name


def test_levels_not_under_study_stay_at_the_full_setting():
    base = RunConfig.from_yaml(SMOKE)
    # DPO table: one SFT model for every row (same tokenizer, prompts, model, SFT sections)
    dpo = _cfgs("dpo")
    assert len({c.section_hash(*SFT_SECTIONS) for _, c in dpo}) == 1
    assert dpo[0][1].section_hash(*SFT_SECTIONS) == base.section_hash(*SFT_SECTIONS)
    assert [r.last_stage for r, _ in dpo] == ["04_sft"] + ["05_sp_dpo"] * 3 + ["06_rf_dpo"] * 2
    # both RF rows continue the progressive SP row's SP-DPO model: stage 05 never reads the RF fields
    sp05 = {fingerprint(c, get_stage("05")) for _, c in dpo[3:]}
    assert len(sp05) == 1 and fingerprint(dpo[2][1], get_stage("05")) not in sp05
    assert len({fingerprint(c, get_stage("06")) for _, c in dpo[4:]}) == 2  # while stage 06 tells them apart
    gen = dpo[1][1].dpo
    assert gen.sp_negatives == "generated" and gen.n_rejected == 20  # the paper's 20 generated negatives
    # token table: full SFT tasks and the full DPO chain; only the tokenizer varies
    token = _cfgs("token")
    assert len({c.section_hash("prompts", "sft", "dpo") for _, c in token}) == 1
    assert all(r.last_stage == "06_rf_dpo" for r, _ in token) and token[0][1].to_dict() == base.to_dict()
    # SFT and TS-Rec tables: the full tokenizer, SFT only
    for name in ("sft", "tsrec", "sa-depth"):
        rows = _cfgs(name)
        assert len({c.section_hash("tokenizer") for _, c in rows}) == 1 and rows[0][1].tokenizer == base.tokenizer
        assert all(r.last_stage == "04_sft" for r, _ in rows)
    # its last row is the full SFT, under the table's budget rule (equal task-A examples: issue 37)
    assert _cfgs("sft")[-1][1].to_dict() == base.override({"sft.fixed_task_a": True}).to_dict()
    assert all(c.sft.fixed_task_a for _, c in _cfgs("sft"))
    # SA-Init depth: levels 1, 1-2, 1-3 over the random arm's init, which initialises the rest
    depth = _cfgs("sa-depth")
    assert [c.model.sa_init_levels for _, c in depth[1:]] == [1, 2, 3] and not depth[0][1].model.sa_init
    assert {c.model.new_token_init for _, c in depth} == {"mean_resizing"}


def test_upto_drops_later_rows_and_ends_the_chain_earlier():
    assert [r.label for r in table_rungs("dpo", "sp")] == ["SFT", "Softmax-DPO", "SP-DPO w/o progression",
                                                           "Progressive SP-DPO"]
    assert {r.last_stage for r in table_rungs("token", "sp")} == {"05_sp_dpo"}
    assert [r.last_stage for r in table_rungs("ladder", "sft")] == ["04_sft"] * 8
    with pytest.raises(ValueError, match="nothing to compare"):
        table_rungs("dpo", "sft")
    with pytest.raises(ValueError, match="unknown table"):
        table_rungs("tokens")


def test_verdicts_call_a_difference_within_the_spread_what_it_is():
    runs = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3 + ["c"] * 3,
                         "seed": [0, 1, 2] * 3,
                         "recall@10": [0.10, 0.12, 0.14, 0.13, 0.11, 0.15, 0.30, 0.31, 0.32],
                         "ndcg@10": [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.01, 0.01, 0.01]})
    out = verdicts(summarise(runs), "previous").set_index("method")
    # b - a = +0.01 with sd 0.02 each: the spread of the difference is 0.0283 -> not a gain
    assert out.loc["b", "d recall@10"] == pytest.approx(0.01)
    assert out.loc["b", "recall@10 verdict"] == "within spread" and out.loc["b", "vs"] == "a"
    assert out.loc["c", "recall@10 verdict"] == "gain" and out.loc["c", "ndcg@10 verdict"] == "loss"
    assert out.loc["a", "recall@10 verdict"] == ""
    one = verdicts(summarise(runs[runs.seed == 0]), "first").set_index("method")
    assert one.loc["c", "recall@10 verdict"] == "1 seed" and one.loc["c", "vs"] == "a"

    # against a classic baseline (no judge, no liked share) the liked share is not judged, not "failed"
    judged = runs.assign(**{"liked_share@10": [float("nan")] * 3 + [0.5] * 6})
    vs_baseline = verdicts(summarise(judged), "first").set_index("method")
    assert vs_baseline.loc["b", "liked_share@10 verdict"] == "–" and vs_baseline.loc["b", "recall@10 verdict"] != "failed"
    assert pd.isna(vs_baseline.loc["b", "d liked_share@10"])
    assert verdicts(summarise(judged), "previous").set_index("method").loc["c", "liked_share@10 verdict"] == "within spread"


def _fake_pipeline(calls, liked=None):
    """``liked(cfg, stages) -> share``: the runs are also judged (``liked_share@10``)."""
    def fake(cfg, config_path, stages=None, resume=False, overrides=None, kernel_name="python3", render=True,
             reports_dir=None):
        calls.append((cfg.run_name, tuple(stages)))
        value = 0.1 * len(stages) + 0.01 * cfg.seed + (0.05 if cfg.dpo.sp_progressive else 0)
        judged = {"liked_share@10": liked(cfg, stages)} if liked else {}
        StageRun(cfg, stages[-1]).finish({s: {"recall@5": value, "recall@10": value, "ndcg@5": value / 2,
                                              "ndcg@10": value / 2, **judged} for s in ("valid", "test")})
        return {"ok": True, "stages": []}
    return fake


def test_judged_tables_show_the_liked_share_with_its_own_verdict(tmp_path, monkeypatch):
    """RF-DPO's aim is what users like: a judged table carries the liked share (mean ± sd) and a
    verdict on it; the unjudged classic baselines show a dash, not a failure."""
    from align3gr_kit.report import benchmark

    def liked(cfg, stages):  # RF-DPO (06) lifts the share by 0.1; seeds spread it by 0.01
        return 0.4 + 0.01 * cfg.seed + (0.1 if "06_rf_dpo" in stages else 0.0)

    monkeypatch.setattr(runner, "run_pipeline", _fake_pipeline([], liked))
    monkeypatch.setattr(benchmark, "classic_baselines", lambda cfg, seeds: pd.DataFrame(
        [{"method": "SASRec", "seed": s, "run": "b", "seconds": 1.0, "recall@5": 0.2, "recall@10": 0.2,
          "ndcg@5": 0.1, "ndcg@10": 0.1} for s in seeds]))
    base = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "runs"))
    doc = run_table(base, SMOKE, "dpo", [0, 1, 2])
    rows = {r["method"]: r for r in doc["rows"]}
    assert rows["Progressive SP-DPO"]["liked_share@10"] == pytest.approx(0.41)
    assert rows["Progressive SP-DPO"]["liked_share@10 sd"] == pytest.approx(0.01)
    rf = rows["RF-DPO w/o progression"]
    assert rf["d liked_share@10"] == pytest.approx(0.1) and rf["liked_share@10 verdict"] == "gain"
    assert rows["Progressive RF-DPO"]["liked_share@10 verdict"] == "within spread"  # the same share again
    md = table_markdown(doc)
    assert "| liked@10 |" in md and "Δ liked@10" in md and "verdict (R@10 / N@10 / liked)" in md
    assert "0.5100 ± 0.0100" in md and "+0.1000" in md
    assert all(line.count("|") == md.splitlines()[4].count("|") for line in md.splitlines()[4:] if line.startswith("| "))

    # a table where no row was judged (its shares are NaN, their verdicts "failed") has no liked column
    nan = float("nan")
    unjudged = dict(doc, rows=[dict(r, **{"liked_share@10": nan, "liked_share@10 sd": nan, "d liked_share@10": nan,
                                          "liked_share@10 verdict": "failed"}) for r in doc["rows"]])
    assert "liked@10" not in table_markdown(unjudged) and "failed" not in table_markdown(unjudged)

    backbone = run_table(base, SMOKE, "backbone", [0])  # SASRec has no judge: a dash
    sasrec = next(line for line in table_markdown(backbone).splitlines() if line.startswith("| SASRec"))
    assert "| – |" in sasrec and "failed" not in sasrec


def test_run_table_writes_json_markdown_and_figure(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "run_pipeline", _fake_pipeline(calls))
    base = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "runs"))
    assert tables_dir(base) == tmp_path / "runs" / "tables" / "synthetic"  # smoke tables stay out of reports/
    run_table(base, SMOKE, "dpo", [0, 1], upto="sp", base_overrides={"dpo.beta": 0.2})
    assert [c[0] for c in calls] == [f"t-dpo-{i:02d}-s{s}" for s in (0, 1) for i in range(4)]
    folder = tmp_path / "runs" / "tables" / "synthetic"
    assert {p.name for p in folder.iterdir()} == {"dpo.json", "dpo.md", "dpo.html", "plotly.min.js", "rows"}
    assert len(list((folder / "rows").glob("*.json"))) == 8  # one small result per (row, seed), committed
    saved = json.loads((folder / "dpo.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["upto"] == "sp" and saved["overrides"]["dpo.beta"] == 0.2
    assert saved["smoke"] and len(saved["fingerprint"]) == 12 and saved["wall_seconds"] >= 0
    assert "cores" in saved["machine"] and "torch CPU capability" in saved["machine"]  # times mean little without it
    rows = {r["method"]: r for r in saved["rows"]}
    assert rows["SFT"]["recall@10"] == pytest.approx(0.4 + 0.005 + 0.05)
    assert rows["SFT"]["recall@10 sd"] == pytest.approx(math.sqrt(0.01 ** 2 / 2))
    assert rows["Softmax-DPO"]["budget"]["dpo.max_steps"] == 2 and rows["SFT"]["budget"]["sft.max_steps"] == 10
    assert rows["Progressive SP-DPO"]["recall@10 verdict"] == "gain"
    md = (folder / "dpo.md").read_text()
    assert md == table_markdown(saved) and "0.4550 ± 0.0071" in md and "`sft.max_steps` 10;" in md
    assert saved["config"] == "configs/smoke.yaml"
    html = (folder / "dpo.html").read_text()
    assert 'src="plotly.min.js"' in html and '"error_y"' in html and "Softmax-DPO" in html


def test_a_table_continues_on_another_machine_from_its_committed_rows(tmp_path, monkeypatch):
    """Run directories stay on one machine; the rows/ results travel with the table. A second machine
    (a fresh runs_dir) reads every row measured before and runs only the missing ones; --no-reuse
    runs them all again."""
    calls = []
    monkeypatch.setattr(runner, "run_pipeline", _fake_pipeline(calls))
    tables = tmp_path / "tables"
    first = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "machine1"))
    doc1 = run_table(first, SMOKE, "dpo", [0], upto="sp", out_dir=tables)
    assert len(calls) == 4 and doc1["reused"] == []
    (tables / "rows" / next(p.name for p in sorted((tables / "rows").glob("*-s0-04_sft.json")))).unlink()
    calls.clear()
    second = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "machine2"))
    doc2 = run_table(second, SMOKE, "dpo", [0], upto="sp", out_dir=tables)
    assert calls == [("t-dpo-00-s0", tuple(table_rungs("dpo", "sp")[0].stages))]  # only the deleted row ran
    assert [r["method"] for r in doc2["reused"]] == ["Softmax-DPO", "SP-DPO w/o progression", "Progressive SP-DPO"]
    assert all("rows/" in r["source"] for r in doc2["reused"])
    assert [r["recall@10"] for r in doc2["rows"]] == [r["recall@10"] for r in doc1["rows"]]
    # outside reports/ (here a temporary folder; on smoke, runs/) the files are not called committed
    assert "read from earlier runs' result files: Softmax-DPO seed 0" in table_markdown(doc2)
    as_committed = {**doc2, "reused": [{**r, "source": "reports/tables/x/rows/" + Path(r["source"]).name}
                                       for r in doc2["reused"]]}
    assert "read from committed results: Softmax-DPO seed 0" in table_markdown(as_committed)
    calls.clear()
    run_table(second.override({"runs_dir": str(tmp_path / "machine3")}), SMOKE, "dpo", [0], upto="sp",
              out_dir=tables, reuse=False)
    assert len(calls) == 4
    calls.clear()
    run_table(second, SMOKE, "dpo", [1], upto="sp", out_dir=tables)  # another seed is another row
    assert len(calls) == 4


def test_a_table_names_the_machines_when_its_rows_ran_on_more_than_one(tmp_path, monkeypatch):
    """Under model.dtype auto a CPU with bf16 units trains in bf16, one without in fp32: a table whose
    rows were reused from another machine says which row ran where."""
    from align3gr_kit.utils import machine_info

    monkeypatch.setattr(runner, "run_pipeline", _fake_pipeline([]))
    tables = tmp_path / "tables"
    base = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "runs"))
    doc = run_table(base, SMOKE, "dpo", [0], upto="sp", out_dir=tables)
    here = machine_info()
    assert [m["machine"] for m in doc["machines"]] == [here] * 4
    assert "more than one machine" not in table_markdown(doc)  # one machine: nothing to say
    sft_row = next((tables / "rows").glob("*-s0-04_sft.json"))
    rec = json.loads(sft_row.read_text())
    write_json(sft_row, {**rec, "machine": "2 cores, Old CPU, torch CPU capability AVX2"})
    doc = run_table(base.override({"runs_dir": str(tmp_path / "runs2")}), SMOKE, "dpo", [0], upto="sp", out_dir=tables)
    md = table_markdown(doc)
    assert "The rows ran on more than one machine" in md
    assert "2 cores, Old CPU, torch CPU capability AVX2: SFT seed 0;" in md
    assert f"{here}: Softmax-DPO seed 0, SP-DPO w/o progression seed 0, Progressive SP-DPO seed 0." in md


def test_a_row_is_read_from_a_pipeline_results_file_of_the_same_config_and_seed(tmp_path):
    from align3gr_kit.report.ledger import config_fingerprint, find_row

    cfg = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "runs"))

    def row(stage, model, v):
        return {"stage": stage, "model": model, **{f"{s} {k}": v for s in ("valid", "test")
                                                   for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10")}}

    doc = {"table": "pipeline", "fingerprint": config_fingerprint(cfg), "seeds": [0], "run_name": "p",
           "commits": ["abc1234"], "date": "d", "stage_seconds": {"00_data": 1.0, "04_sft": 10.0, "05_sp_dpo": 5.0},
           "rows": [row("04_sft", "SFT", 0.1), row("05_sp_dpo", "SP-DPO easy", 0.2), row("05_sp_dpo", "SP-DPO hard", 0.3)]}
    (tmp_path / "pipeline-p.json").write_text(json.dumps(doc))
    sp = find_row(tmp_path, cfg, "05_sp_dpo")
    assert sp["metrics"]["test"]["recall@10"] == 0.3 and sp["seconds"] == 16.0  # the stage's last model
    assert "pipeline-p.json" in sp["source"] and "abc1234" in sp["source"]
    assert find_row(tmp_path, cfg, "04_sft")["metrics"]["valid"]["ndcg@5"] == 0.1
    assert find_row(tmp_path, cfg, "06_rf_dpo") is None  # the run did not reach RF-DPO
    assert find_row(tmp_path, cfg.override({"seed": 1}), "04_sft") is None  # another seed
    assert find_row(tmp_path, cfg.override({"dpo.beta": 0.3}), "04_sft") is None  # another config
    assert sp["run"] == "p" and sp["ranks"] is None  # a file written before pipeline files kept ranks ...
    doc["test_target_ranks"] = {"SFT": [0, 3, -1, 12], "SP-DPO hard": [1, -1, -1, 2]}
    (tmp_path / "pipeline-p.json").write_text(json.dumps(doc))
    assert find_row(tmp_path, cfg, "05_sp_dpo")["ranks"] == [1, -1, -1, 2]  # the stage's last model's
    assert find_row(tmp_path, cfg, "04_sft")["ranks"] == [0, 3, -1, 12]
    # ... and for an old file, while run "p" is on this machine with its stage current for this config, they are read there
    from align3gr_kit.report.ablation import local_ranks

    made = RunConfig.from_yaml(SMOKE, run_name="p", runs_dir=str(tmp_path / "runs"))
    sft = StageRun(made, "04_sft")
    write_target_ranks(sft.dir, {"SFT": {"test": [0, 3, -1, 12]}})
    sft.finish({})
    assert local_ranks(cfg, "04_sft", "p") == [0, 3, -1, 12]
    assert local_ranks(cfg, "04_sft") is None  # run "t" itself holds nothing
    assert local_ranks(cfg.override({"sft.lr": 5e-4}), "04_sft", "p") is None  # "p" trained another config
    assert local_ranks(cfg.override({"seed": 1}), "04_sft", "p") is None  # ... or another seed


def test_backbone_table_leads_with_sasrec_and_gives_every_row_its_ratio(tmp_path, monkeypatch):
    from align3gr_kit.report import benchmark

    monkeypatch.setattr(runner, "run_pipeline", _fake_pipeline([]))
    seen = {}

    def fake_baselines(cfg, seeds):
        seen["users"] = cfg.decode.max_eval_users
        return pd.DataFrame([{"method": m, "seed": s, "run": "b", "seconds": 1.0, "recall@5": v, "recall@10": v,
                              "ndcg@5": v / 2, "ndcg@10": v / 2}
                             for s in seeds for m, v in (("Popularity", 0.05), ("SASRec", 0.2 + 0.01 * s))])

    monkeypatch.setattr(benchmark, "classic_baselines", fake_baselines)
    base = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "runs"))
    doc = run_table(base, SMOKE, "backbone", [0, 1])
    assert seen["users"] == base.override(benchmark.report_overrides(base, SMOKE)).decode.max_eval_users
    rows = {r["method"]: r for r in doc["rows"]}
    assert list(rows) == ["SASRec", "tiny-llama SFT", "Pretrained SFT, random SCID init", "Pretrained SFT, SA-Init",
                          "Pretrained after SP-DPO"]  # no Popularity row: the table asks for SASRec only
    sft = rows["Pretrained SFT, SA-Init"]
    assert sft["recall@10 / SASRec"] == pytest.approx(sft["recall@10"] / 0.205)
    assert rows["SASRec"]["recall@10 / SASRec"] == pytest.approx(1.0) and rows["SASRec"]["last_stage"] == "baseline"
    assert sft["vs"] == "SASRec" and rows["tiny-llama SFT"]["budget"]["model.base"] == "tiny-llama"
    md = table_markdown(doc)
    assert "R@10 / SASRec" in md and f"{sft['recall@10'] / 0.205:.2f}x" in md


def test_benchmarks_md_is_regenerated_from_the_files_and_a_disagreement_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_pipeline", _fake_pipeline([]))
    base = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "runs"))
    root = tmp_path / "tables"
    run_table(base, SMOKE, "tsrec", [0], out_dir=root / "synthetic")
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n\nhand-written reading stays.\n")
    state, keys = benchmarks_md.update_benchmarks(bench, root)
    assert keys == ["synthetic/tsrec"] and state["changed"] == ["synthetic/tsrec"]
    text = bench.read_text()
    assert "hand-written reading stays." in text and "<!-- table:synthetic/tsrec -->" in text
    doc = json.loads((root / "synthetic" / "tsrec.json").read_text())
    assert benchmarks_md.block_markdown("synthetic/tsrec", doc) in text  # the short view, naming the full file
    assert "`reports/tables/synthetic/tsrec.md`" in text and "Budget:" not in text
    assert benchmarks_md.update_benchmarks(bench, root, check=True)[0]["changed"] == []  # idempotent
    tampered = text.replace("| Base | 1 | 0.4500", "| Base | 1 | 0.9000")  # a number typed by hand
    assert tampered != text
    bench.write_text(tampered)
    assert benchmarks_md.update_benchmarks(bench, root, check=True)[0]["changed"] == ["synthetic/tsrec"]
    (root / "synthetic" / "tsrec.json").unlink()
    with pytest.raises(FileNotFoundError, match="synthetic/tsrec"):
        benchmarks_md.update_benchmarks(bench, root, check=True)


def test_the_committed_benchmarks_agree_with_the_committed_tables():
    state, keys = benchmarks_md.update_benchmarks(check=True)
    assert state["changed"] == [], (f"reports/BENCHMARKS.md disagrees with reports/tables/ on {state['changed']}; "
                                    "run: python -m align3gr_kit report benchmarks")
    for key in keys:  # the .md beside each .json is the one the command wrote
        folder = project_root() / "reports" / "tables" / key
        assert folder.with_suffix(".md").read_text() == table_markdown(json.loads(folder.with_suffix(".json").read_text()))


def test_overview_shows_found_tables_and_the_command_for_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_pipeline", _fake_pipeline([]))
    base = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "runs"))
    from align3gr_kit.report.table_files import tables_overview

    assert "none yet" in tables_overview(base) and "--table dpo --seeds 3" in tables_overview(base)
    run_table(base, SMOKE, "sft", [0])
    text = tables_overview(base)
    assert "Tables in" in text and "### Behaviour level: multi-task SFT" in text and "--table sft" not in text


def test_cli_refuses_mixed_or_empty_table_options(capsys):
    from align3gr_kit.cli import TABLE_CHOICES, main
    from align3gr_kit.report.specs import TABLE_NAMES

    assert TABLE_CHOICES == TABLE_NAMES  # every table is a command

    assert main(["ablate", "--config", SMOKE, "--table", "dpo", "--ladder"]) == 2
    assert "--table runs one table alone" in capsys.readouterr().err
    assert main(["ablate", "--config", SMOKE, "--upto", "sp", "--ladder"]) == 2
    assert "--upto goes with --table" in capsys.readouterr().err
    assert main(["ablate", "--config", SMOKE, "--table", "dpo", "--upto", "sft"]) == 2
    assert "nothing to compare" in capsys.readouterr().err


@pytest.mark.slow
def test_ablate_dpo_table_end_to_end_on_smoke(tmp_path, capsys):
    """The real command on the smoke config with tiny budgets (papermill runs of notebooks 00-05):
    one SFT model shared by every row, the Softmax-DPO row's negatives from the policy's own beam."""
    from align3gr_kit.cli import main

    tiny = ["sft.max_steps=10", "prompts.max_per_task=30", "dpo.max_prompts=4", "dpo.n_rejected=3",
            "decode.max_eval_users=8", f"runs_dir={tmp_path / 'runs'}"]
    argv = ["ablate", "--config", SMOKE, "--run-name", "e2e", "--table", "dpo", "--upto", "sp", "--seeds", "1"]
    assert main(argv + [a for s in tiny for a in ("--set", s)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in out["rows"]] == ["SFT", "Softmax-DPO", "SP-DPO w/o progression", "Progressive SP-DPO"]
    assert not out["failed"] and all(0 <= r["recall@10"] <= 1 for r in out["rows"])
    doc = json.loads((tmp_path / "runs" / "tables" / "synthetic" / "dpo.json").read_text())
    assert doc["rows"][1]["budget"]["sft.max_steps"] == 10 and doc["seeds"] == [0]
    runs = tmp_path / "runs"
    sft = {json.loads((runs / f"e2e-dpo-{i:02d}-s0" / "04_sft" / "manifest.json").read_text())["metrics"]["test_recall@10"]
           for i in range(4)}
    assert len(sft) == 1  # one SFT model (copied by --resume), so the rows differ only in DPO
    generated = json.loads((runs / "e2e-dpo-01-s0" / "05_sp_dpo" / "manifest.json").read_text())["metrics"]
    # equal budgets (issue 37): the one-stage rows run as many regenerate-then-train rounds as the progressive one
    assert [generated[f"generated-{r}/preferences/from_beams_share"] for r in (1, 2, 3)] == [1.0] * 3
    progressive = json.loads((runs / "e2e-dpo-03-s0" / "05_sp_dpo" / "manifest.json").read_text())["metrics"]
    assert {"easy/preferences/from_beams_share", "hard/preferences/from_beams_share"} <= set(progressive)
    # what each DPO row trained travels with the table (issue 37): as many rounds and prompts in every row
    trained = {r["method"]: r["dpo"] for r in doc["rows"] if r.get("dpo")}
    assert set(trained) == {"Softmax-DPO", "SP-DPO w/o progression", "Progressive SP-DPO"}
    assert {(d["rounds"], d["prompts"]) for d in trained.values()} == {(3, 12)}
    assert trained["Progressive SP-DPO"]["round_names"] == ["easy", "medium", "hard"]


def test_reading_says_which_steps_go_the_papers_way_beyond_the_spread():
    from align3gr_kit.report.specs import FORMER_LABELS, PAPER_DIRECTION
    from align3gr_kit.report.table_files import table_reading

    def row(method, vs, d, verdict):
        return {"method": method, "vs": vs, "d recall@10": d, "recall@10 verdict": verdict,
                "d ndcg@10": d, "ndcg@10 verdict": verdict}

    doc = {"table": "token", "rows": [
        {"method": "Dual SCID (full)", "vs": ""},
        row("Item-only SCID (CF)", "Dual SCID (full)", -0.02, "loss"),  # the paper: lower -> its way
        row("w/o CF", "Dual SCID (full)", 0.03, "gain"),  # higher than full -> against the paper
        row("w/o U-I align", "Dual SCID (full)", -0.001, "within spread")]}
    lines = table_reading(doc)
    assert lines[0] == ("**Item-only SCID (CF)** vs Dual SCID (full) (paper: lower): Recall@10 -0.0200 (the paper's way), "
                        "NDCG@10 -0.0200 (the paper's way).")
    assert "(against the paper)" in lines[1] and "(within the spread)" in lines[2]
    assert lines[-1] == ("On Recall@10, 1 of 3 steps go the paper's way beyond the spread, 1 against it, "
                         "1 within the spread.")
    one_seed = table_reading({"table": "sft", "rows": [{"method": "A", "vs": ""}, row("+B1", "A", 0.01, "1 seed")]})
    assert "(one seed, no spread)" in one_seed[0] and "1 with one seed" in one_seed[-1]
    assert table_reading({"table": "backbone", "rows": [row("tiny-llama SFT", "SASRec", -0.1, "loss")]}) == []
    # every direction names a real row of its table (or a former one, which committed files still hold)
    for name, directions in PAPER_DIRECTION.items():
        labels = {r.label for r in table_rungs(name)} | FORMER_LABELS.get(name, set())
        assert set(directions) <= labels, (name, set(directions) - labels)
    assert not any(FORMER_LABELS[t] & {r.label for r in table_rungs(t)} for t in FORMER_LABELS)


def test_the_dpo_reading_also_puts_progressive_rf_beside_progressive_sp():
    from align3gr_kit.report.specs import TABLES
    from align3gr_kit.report.statistics import spread_verdict
    from align3gr_kit.report.table_files import table_reading

    # the spread rule by hand: |d| against sqrt(sd_a^2 + sd_b^2) = 0.05 for 0.03 and 0.04
    assert spread_verdict(0.06, 0.03, 0.04) == "gain" and spread_verdict(-0.06, 0.03, 0.04) == "loss"
    assert spread_verdict(0.049, 0.03, 0.04) == "within spread" and spread_verdict(0.2, None, 0.04) == "1 seed"
    assert spread_verdict(float("nan"), 0.03, 0.04) == "failed"

    def row(method, r10, sd, liked, liked_sd):
        return {"method": method, "vs": "", "recall@10": r10, "recall@10 sd": sd, "ndcg@10": 0.1, "ndcg@10 sd": 0.0,
                "liked_share@10": liked, "liked_share@10 sd": liked_sd}

    doc = {"table": "dpo", "rows": [row("SFT", 0.2, 0.01, 0.45, 0.01), row("Progressive SP-DPO", 0.21, 0.03, 0.43, 0.01),
                                    row("RF-DPO w/o progression", 0.22, 0.03, 0.44, 0.02),
                                    row("Progressive RF-DPO", 0.19, 0.04, 0.47, 0.02)]}
    last = table_reading(doc)[-1]
    # recall -0.02 within sqrt(0.04^2 + 0.03^2) = 0.05; liked +0.04 beyond sqrt(0.02^2 + 0.01^2) = 0.0224
    assert last == ("Also **Progressive RF-DPO** vs Progressive SP-DPO (what real feedback adds after self-play): "
                    "Recall@10 -0.0200 (within the spread), NDCG@10 +0.0000 (within the spread), "
                    "liked share@10 +0.0400 (beyond the spread).")
    # every added step names rows of its table
    for name, spec in TABLES.items():
        labels = {r.label for r in table_rungs(name)}
        assert all({a, b} <= labels for a, b, _ in spec.also), name


def test_one_seed_steps_are_judged_on_the_same_users_and_the_ranks_travel_with_the_rows(tmp_path, monkeypatch):
    """With one seed there is no seed spread: two rows whose models kept their users' target ranks are
    compared user by user (paired bootstrap), and a recorded row carries the ranks to the next machine."""
    def hits(n):  # 40 test users, the first n hit at rank 0
        return [0] * n + [-1] * (40 - n)

    def fake(cfg, config_path, stages=None, resume=False, overrides=None, kernel_name="python3", render=True,
             reports_dir=None):
        last = stages[-1]
        if last == "04_sft":
            ranks, name = hits(10), "SFT"
        else:
            ranks = hits(10) if cfg.dpo.sp_negatives == "generated" else hits(30) if not cfg.dpo.sp_progressive else hits(2)
            name = "only"
        run = StageRun(cfg, last)
        if last != "04_sft":
            write_json(run.path("history.json"), {"start": None, "stages": [{"stage": name}]})
        write_target_ranks(run.dir, {name: {"test": ranks}})
        value = sum(r == 0 for r in ranks) / 40
        run.finish({s: {"recall@5": value, "recall@10": value, "ndcg@5": value, "ndcg@10": value}
                    for s in ("valid", "test")})
        return {"ok": True, "stages": []}

    monkeypatch.setattr(runner, "run_pipeline", fake)
    tables = tmp_path / "tables"
    base = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "m1"))
    doc = run_table(base, SMOKE, "dpo", [0], upto="sp", out_dir=tables)
    rows = {r["method"]: r for r in doc["rows"]}
    assert rows["Softmax-DPO"]["recall@10 verdict"] == PAIRED_WITHIN  # the same 10 users: no difference
    assert rows["SP-DPO w/o progression"]["recall@10 verdict"] == PAIRED_GAIN  # 20 more users hit, none lost
    assert rows["SP-DPO w/o progression"]["recall@10 p"] == pytest.approx(2 / 2 ** 20, abs=1e-4)
    assert rows["SP-DPO w/o progression"]["recall@10 ci low"] > 0
    assert rows["Progressive SP-DPO"]["ndcg@10 verdict"] == PAIRED_LOSS and rows["Progressive SP-DPO"]["ndcg@10 ci high"] < 0
    md = table_markdown(doc)
    assert "gain (paired)" in md and "compares the two rows' models on the same test users" in md
    assert "(the paper's way, one seed, paired over users)" in md and "(of seeds; with one seed, of users)" in md
    # another machine reads the rows, ranks included: the same verdicts without running anything
    monkeypatch.setattr(runner, "run_pipeline", lambda *a, **k: pytest.fail("a recorded row ran again"))
    again = run_table(base.override({"runs_dir": str(tmp_path / "m2")}), SMOKE, "dpo", [0], upto="sp", out_dir=tables)
    assert [r["recall@10 verdict"] for r in again["rows"]] == [r["recall@10 verdict"] for r in doc["rows"]]
    # rows without kept ranks (measured before ranks were kept) keep the plain one-seed verdict
    for path in (tables / "rows").glob("*.json"):
        rec = json.loads(path.read_text())
        rec.pop("test_target_ranks")
        path.write_text(json.dumps(rec))
    old = run_table(base.override({"runs_dir": str(tmp_path / "m3")}), SMOKE, "dpo", [0], upto="sp", out_dir=tables)
    assert {r["recall@10 verdict"] for r in old["rows"][1:]} == {"1 seed"}
    # ... until the machine that still holds their runs reads them: the ranks are attached to the rows
    back = run_table(base, SMOKE, "dpo", [0], upto="sp", out_dir=tables)
    assert [r["recall@10 verdict"] for r in back["rows"]] == [r["recall@10 verdict"] for r in doc["rows"]]
    recs = [json.loads(p.read_text()) for p in (tables / "rows").glob("*.json")]
    assert all(len(r["test_target_ranks"]) == 40 for r in recs)


def test_rows_are_keyed_by_the_stages_they_ran_and_legacy_keys_are_still_read(tmp_path):
    from align3gr_kit.report.ledger import find_row, legacy_row_key, record_row, row_key

    cfg = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "runs"))
    metrics = {s: {"recall@5": 0.1, "recall@10": 0.2, "ndcg@5": 0.05, "ndcg@10": 0.1} for s in ("valid", "test")}
    sft = record_row(tmp_path, cfg, "04_sft", metrics, 12.0, commit="abc1234")
    sp = record_row(tmp_path, cfg, "05_sp_dpo", metrics, 20.0, commit="abc1234")
    assert sft.stem == row_key(cfg, "04_sft") != legacy_row_key(cfg, "04_sft")
    # another DPO setting: the SFT model is the same row, the SP-DPO model is not
    budget = cfg.override({"dpo.beta": cfg.dpo.beta * 2})
    assert sft.name in find_row(tmp_path, budget, "04_sft")["source"]
    assert find_row(tmp_path, budget, "05_sp_dpo") is None and find_row(tmp_path, cfg, "05_sp_dpo") is not None
    assert find_row(tmp_path, cfg.override({"sft.lr": 5e-4}), "04_sft") is None  # another SFT
    assert find_row(tmp_path, cfg.override({"seed": 1}), "04_sft") is None  # another seed
    # a row recorded under the whole-config key (before the chain key) is still found, for that config only
    sp.rename(sp.with_name(f"{legacy_row_key(cfg, '05_sp_dpo')}.json"))
    found = find_row(tmp_path, cfg, "05_sp_dpo")
    assert found is not None and legacy_row_key(cfg, "05_sp_dpo") in found["source"]
    assert find_row(tmp_path, cfg.override({"dpo.rf_progressive": not cfg.dpo.rf_progressive}), "05_sp_dpo") is None


def test_a_recorded_row_prints_its_manifest_time_as_the_tables_do(tmp_path):
    from align3gr_kit.report.ledger import find_row, record_row

    cfg = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "runs"))
    metrics = {s: {"recall@5": 0.1, "recall@10": 0.2, "ndcg@5": 0.05, "ndcg@10": 0.1} for s in ("valid", "test")}
    path = record_row(tmp_path, cfg, "04_sft", metrics, 12.0, commit="abc1234", date="2026-12-01T12:00:04+00:00")
    assert json.loads(path.read_text())["date"] == "2026-12-01 12:00 UTC"
    assert find_row(tmp_path, cfg, "04_sft")["source"].endswith("(run t, commit abc1234, 2026-12-01 12:00 UTC)")


def test_steps_are_also_judged_paired_by_seed_against_hand_values():
    """Rows of one seed share that seed's upstream stages: the step's spread is the sd of its per-seed
    differences. Hand values: b - a = +0.03, +0.03, +0.02 (mean 0.02667, sd 0.00577) -> a gain that the
    unpaired rule (row sds 0.0252 and 0.0208: spread 0.0327) calls within the spread."""
    from scipy.stats import ttest_1samp

    from align3gr_kit.report.ledger import json_record
    from align3gr_kit.report.statistics import SEED_GAIN, SEED_WITHIN, seed_paired, seed_paired_verdicts

    runs = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3 + ["c"] * 2,
                         "seed": [0, 1, 2, 0, 1, 2, 0, 5],
                         "recall@10": [0.10, 0.15, 0.12, 0.13, 0.18, 0.14, 0.50, 0.90],
                         "ndcg@10": [0.05, 0.05, 0.05, 0.06, 0.04, 0.05, 0.05, 0.05]})
    res = seed_paired(runs.to_dict("records"), "b", "a", "recall@10")
    assert res["seeds"] == 3 and res["up"] == 3 and res["down"] == 0
    assert res["d"] == pytest.approx(0.08 / 3) and res["sd"] == pytest.approx(math.sqrt(1 / 3) / 100)
    assert res["p"] == pytest.approx(ttest_1samp([0.03, 0.03, 0.02], 0.0).pvalue) and res["verdict"] == SEED_GAIN
    # +0.01, -0.01, 0: mean 0 -> within the spread
    assert seed_paired(runs.to_dict("records"), "b", "a", "ndcg@10")["verdict"] == SEED_WITHIN
    # one shared seed (c ran seeds 0 and 5): no paired verdict; a failed run does not count
    assert seed_paired(runs.to_dict("records"), "c", "a", "recall@10") is None
    failed = runs.assign(error=["", "", "", "", "", "boom", "", ""]).to_dict("records")
    assert seed_paired(failed, "b", "a", "recall@10")["seeds"] == 2

    out = seed_paired_verdicts(verdicts(summarise(runs[runs.method != "c"]), "previous"), runs).set_index("method")
    assert out.loc["b", "recall@10 verdict"] == "within spread"  # the unpaired rule
    assert out.loc["b", "recall@10 paired verdict"] == SEED_GAIN and out.loc["b", "recall@10 paired up"] == "3/3"
    assert out.loc["b", "recall@10 paired sd"] == pytest.approx(0.005774, abs=1e-6)

    doc = {"table": "dpo", "rows": [{**json_record(r), "budget": {}, "note": ""} for r in out.reset_index().to_dict("records")],
           "runs": runs.to_dict("records"), "seeds": [0, 1, 2], "title": "t", "source": "s", "dataset": "d",
           "config": "c", "overrides": {}, "fingerprint": "f", "upto": "rf", "commit": "x", "date": "now",
           "wall_seconds": 1.0, "failed": []}
    md = table_markdown(doc)
    assert "paired by seed (R@10 / N@10) |" in md and "gain (3/3 up) / within spread (1/3 up)" in md
    assert all(line.count("|") == md.splitlines()[4].count("|") for line in md.splitlines()[4:] if line.startswith("| "))


def test_dpo_beta_table_rows_differ_only_in_beta():
    """Issue 37: ``ablate --table dpo-beta`` is SP-DPO Easy at a grid of dpo.beta, nothing else changes."""
    rows = _cfgs("dpo-beta")
    assert [c.dpo.beta for _, c in rows] == [0.1, 0.5, 1.0, 2.0]
    assert all(r.last_stage == "05_sp_dpo" and c.dpo.sp_stages == ["easy"] for r, c in rows)
    flat = [{k: v for k, v in reaching_fields(c, r.stages).items() if k != "dpo.beta"} for r, c in rows]
    assert all(f == flat[0] for f in flat)
    assert len({json.dumps(reaching_fields(c, r.stages), sort_keys=True, default=str) for r, c in rows}) == 4


def _fake_dpo_pipeline(test_of_beta=None):
    """A pipeline whose DPO stages record rounds as the real ones do (``<round>/run/...``,
    ``<round>/pairs/...``), and whose validation and test metrics can disagree (``test_of_beta``)."""
    def fake(cfg, config_path, stages=None, resume=False, overrides=None, kernel_name="python3", render=True,
             reports_dir=None):
        last = stages[-1]
        valid = 0.1 + 0.1 * cfg.dpo.beta + 0.001 * cfg.seed  # validation rises with beta
        test = test_of_beta(cfg.dpo.beta) if test_of_beta else valid
        metrics = {s: {"recall@5": v, "recall@10": v, "ndcg@5": v / 2, "ndcg@10": v / 2}
                   for s, v in (("valid", valid), ("test", test))}
        if last in ("05_sp_dpo", "06_rf_dpo"):
            for r, name in enumerate(("easy", "hard"), start=1):
                metrics.update({f"{name}/run/round": float(r), f"{name}/run/rounds": 2.0, f"{name}/run/prompts": 8.0,
                                f"{name}/run/steps": 2.0 + cfg.seed, f"{name}/pairs/n_examples": 8.0,
                                f"{name}/pairs/mean_rejected": 3.0 * r, f"{name}/pairs/margin_before": 0.1 * r,
                                f"{name}/pairs/margin_after": 0.5 * r, f"{name}/pairs/margin_up_share": 0.5 + 0.1 * r})
        StageRun(cfg, last).finish(metrics)
        return {"ok": True, "stages": []}
    return fake


def test_dpo_rows_record_and_show_what_each_round_trained(tmp_path, monkeypatch):
    """Issue 37: every DPO row file keeps its rounds (prompts, steps, examples, rejected per example,
    margins before/after, share up), and the table shows their sums and means over seeds."""
    monkeypatch.setattr(runner, "run_pipeline", _fake_dpo_pipeline())
    base = RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "runs"))
    doc = run_table(base, SMOKE, "dpo", [0, 1], upto="sp")
    rows = {r["method"]: r for r in doc["rows"]}
    assert "dpo" not in rows["SFT"]
    d = rows["Progressive SP-DPO"]["dpo"]
    assert d["stage"] == "05_sp_dpo" and d["round_names"] == ["easy", "hard"] and d["seeds"] == 2
    # steps: 2 rounds of (2 + seed) -> 4 and 6, mean 5; examples 2 x 8; rejected mean of 3 and 6
    assert (d["rounds"], d["prompts"], d["steps"], d["n_examples"]) == (2, 16, 5, 16)
    assert d["mean_rejected"] == pytest.approx(4.5) and d["margin_before"] == pytest.approx(0.15)
    assert d["margin_after"] == pytest.approx(0.75) and d["margin_up_share"] == pytest.approx(0.65)
    assert "judge_kappa" not in d  # SP-DPO has no oracle
    row_files = list((tmp_path / "runs" / "tables" / "synthetic" / "rows").glob("*-05_sp_dpo.json"))
    ran = json.loads(row_files[0].read_text())["ran"]["05_sp_dpo"]["rounds"]
    assert set(ran) == {"easy", "hard"} and ran["hard"]["mean_rejected"] == 6.0
    md = table_markdown(doc)
    assert "What each row's last DPO stage trained" in md
    line = next(x for x in md.splitlines() if x.startswith("| Progressive SP-DPO | 05_sp_dpo"))
    assert "| 2 | 16 | 5 | 16 | 4.50 | +0.150 | +0.750 | 0.65 | – |" in line

    # a row read back from its committed file keeps what it trained
    again = run_table(base, SMOKE, "dpo", [0, 1], upto="sp")
    assert {r["method"]: r.get("dpo") for r in again["rows"]} == {r["method"]: r.get("dpo") for r in doc["rows"]}


def test_the_beta_table_chooses_on_validation_not_on_test(tmp_path, monkeypatch):
    """Issue 37: dpo.beta is chosen by validation Recall@10; here test prefers the smallest beta and
    validation the largest, and the reading names the largest."""
    monkeypatch.setattr(runner, "run_pipeline", _fake_dpo_pipeline(test_of_beta=lambda b: 0.9 - 0.1 * b))
    base = RunConfig.from_yaml(SMOKE, run_name="b", runs_dir=str(tmp_path / "runs"))
    doc = run_table(base, SMOKE, "dpo-beta", [0])
    rows = {r["method"]: r for r in doc["rows"]}
    assert rows["beta 2.0"]["valid recall@10"] == pytest.approx(0.3)
    assert max(rows.values(), key=lambda r: r["recall@10"])["method"] == "beta 0.1"
    md = table_markdown(doc)
    assert "Chosen on validation: **beta 2.0** (validation Recall@10 0.3000" in md and "above the next, 1 seed(s)" in md
    assert "its test Recall@10 is 0.7000" in md
    assert "Chosen on validation" not in table_markdown(run_table(base, SMOKE, "dpo", [0], upto="sp"))
