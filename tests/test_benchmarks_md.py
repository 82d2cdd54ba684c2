"""BENCHMARKS.md's headline (the best model of each chain against SASRec) and its short table views,
from small result files written in the test."""

from __future__ import annotations

import json

import pytest

from align3gr_kit.report import benchmarks_md
from align3gr_kit.report.headline import headline_rows

MACHINE_BF16 = "2 cores, Test CPU, torch CPU capability AVX512, bf16 units (auto = bf16 autocast)"


def _model(name: str, valid: float, test: float, users: int = 100) -> dict:
    return {"stage": "05_sp_dpo", "model": name, "users": users, "valid recall@10": valid, "valid ndcg@10": valid / 2,
            "test recall@10": test, "test ndcg@10": test / 2, "test recall@5": test / 2, "test ndcg@5": test / 4}


def _pipeline(run: str, date: str, models: list[dict], baselines: bool = True) -> dict:
    return {
        "table": "pipeline", "title": f"Pipeline run `{run}`", "source": "python -m align3gr_kit run --config c.yaml",
        "dataset": "toy", "config": "c.yaml", "overrides": {"sft.max_steps": 7}, "fingerprint": "f", "run_name": run,
        "seeds": [0], "budget": {"model.base": "smollm2-135m"}, "stage_seconds": {"04_sft": 12.0}, "resumed": {},
        "wall_seconds": 12.0, "machines": [MACHINE_BF16], "commits": ["abc1234"], "date": date, "smoke": False,
        "rows": models, "paired": [],
        "baselines": [{"method": "Popularity", "source": "training counts", "recall@10": 0.05, "ndcg@10": 0.02},
                      {"method": "SASRec", "source": "stage 01", "recall@10": 0.40, "ndcg@10": 0.20}] if baselines else [],
    }


def _backbone_table(date: str) -> dict:
    def row(method, r10, base, stage="04_sft"):
        return {"method": method, "seeds": 1, "recall@10": r10, "ndcg@10": r10 / 2, "last_stage": stage,
                "budget": {"model.base": base, "decode.max_eval_users": 0} if base else {}, "vs": "" if not base else "SASRec"}
    return {"table": "backbone", "title": "Backbone", "source": "kit", "dataset": "toy", "config": "c.yaml",
            "upto": "sp", "seeds": [0], "date": date, "machine": "2 cores, Other CPU, torch CPU capability AVX2",
            "rows": [row("SASRec", 0.30, None, "baseline"), row("tiny SFT", 0.12, "tiny-llama"),
                     row("Pretrained SFT", 0.10, "smollm2-135m"), row("Pretrained after SP-DPO", 0.15, "smollm2-135m")]}


def test_headline_picks_on_validation_the_newest_source_and_says_what_it_lacks():
    old = _pipeline("old", "2026-01-01 10:00 UTC", [_model("SFT", 0.3, 0.30)])
    # the best on validation (0.25) is not the best on test (0.20): the headline shows the validation pick
    new = _pipeline("new", "2026-01-02 10:00 UTC", [_model("SFT", 0.10, 0.20), _model("SP-DPO hard", 0.25, 0.16)])
    no_sasrec = _pipeline("late", "2026-01-09 10:00 UTC", [_model("SFT", 0.9, 0.9)], baselines=False)
    tables = {"toy/pipeline-old": old, "toy/pipeline-new": new, "toy/pipeline-late": no_sasrec,
              "toy/backbone": _backbone_table("2026-01-01 12:00 UTC")}
    rows = {(r["dataset"], r["backbone"]): r for r in headline_rows(tables)}
    assert list(rows) == [("toy", "smollm2-135m"), ("toy", "tiny-llama")]

    smol = rows[("toy", "smollm2-135m")]  # the newest file with SASRec wins over the table and the old run
    assert smol["file"] == "toy/pipeline-new" and smol["model"].startswith("SP-DPO hard (best of 2 on validation")
    assert (smol["recall@10"], smol["sasrec recall@10"], smol["popularity recall@10"]) == (0.16, 0.40, 0.05)
    assert smol["command"] == "python -m align3gr_kit run --config c.yaml --run-name new --set sft.max_steps=7"

    tiny = rows[("toy", "tiny-llama")]  # from the table: no Popularity row, all users
    assert tiny["file"] == "toy/backbone" and tiny["popularity recall@10"] is None and tiny["users"] == "all"
    assert tiny["command"] == "python -m align3gr_kit ablate --config c.yaml --table backbone --seeds 1 --upto sp"

    md = benchmarks_md.headline_markdown(tables)
    line = next(x for x in md.splitlines() if x.startswith("| toy | smollm2-135m |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:8] == ["0.1600", "0.0800", "0.4000 / 0.2000", "0.0500 / 0.0200", f"{0.16 / 0.40:.2f}x / {0.08 / 0.20:.2f}x"]
    assert cells[9] == "100" and cells[11] == "CPU, bf16 autocast"
    tiny_line = next(x for x in md.splitlines() if x.startswith("| toy | tiny-llama |"))
    assert "not measured / not measured" in tiny_line and "0.40x / 0.40x" in tiny_line
    assert "CPU, fp32" in tiny_line  # the table's own machine: its row was not read back from elsewhere


def test_headline_without_sasrec_says_how_to_make_one():
    md = benchmarks_md.headline_markdown({"toy/pipeline-x": _pipeline("x", "2026-01-01 10:00 UTC",
                                                                       [_model("SFT", 0.1, 0.1)], baselines=False)})
    assert md.startswith("No committed result file holds SASRec") and "report pipeline" in md


def test_benchmarks_headline_block_is_regenerated_and_a_stale_one_is_caught(tmp_path):
    root = tmp_path / "tables" / "toy"
    root.mkdir(parents=True)
    doc = _pipeline("new", "2026-01-02 10:00 UTC", [_model("SFT", 0.10, 0.20), _model("SP-DPO hard", 0.25, 0.16)])
    (root / "pipeline-new.json").write_text(json.dumps(doc))
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# B\n\n<!-- headline -->\n<!-- /headline -->\n\nhand reading\n\n"
                     "<!-- table:toy/pipeline-new -->\n<!-- /table -->\n")
    state, keys = benchmarks_md.update_benchmarks(bench, tmp_path / "tables")
    assert keys == ["toy/pipeline-new"] and sorted(state["changed"]) == ["headline", "toy/pipeline-new"]
    text = bench.read_text()
    assert "| toy | smollm2-135m | SP-DPO hard" in text and "hand reading" in text
    assert "`reports/tables/toy/pipeline-new.md`" in text  # the short view names the full file
    assert benchmarks_md.update_benchmarks(bench, tmp_path / "tables", check=True)[0]["changed"] == []
    bench.write_text(text.replace("| 0.1600 | 0.0800 | 0.4000", "| 0.1700 | 0.0800 | 0.4000"))  # typed by hand
    assert benchmarks_md.update_benchmarks(bench, tmp_path / "tables", check=True)[0]["changed"] == ["headline"]


@pytest.mark.parametrize("verdict, expect", [
    ("within spread", "No step of 1 is beyond the spread"),
    ("gain", "**B** vs A: Recall@10 +0.0500 (across seeds; the paper's way)"),
    ("loss (paired)", "**B** vs A: Recall@10 -0.0500 (on the same users; against the paper)"),
])
def test_beyond_spread_names_each_step_beyond_it_with_the_papers_direction(monkeypatch, verdict, expect):
    monkeypatch.setitem(benchmarks_md.PAPER_DIRECTION, "toy", {"B": 1})
    d = -0.05 if "loss" in verdict else 0.05
    doc = {"table": "toy", "rows": [{"method": "A", "recall@10": 0.1},
                                    {"method": "B", "vs": "A", "recall@10": 0.1 + d, "d recall@10": d,
                                     "recall@10 verdict": verdict, "ndcg@10 verdict": "within spread",
                                     "d ndcg@10": 0.0}]}
    assert expect in benchmarks_md.beyond_spread(doc)
