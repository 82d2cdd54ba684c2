"""`report full-test` (issue 38): the run's SFT and final models on every test user, beside SASRec on the
same users; checked against what the stages themselves recorded for the same users."""

import shutil

import pytest

from align3gr_kit.evaluate import read_target_ranks
from align3gr_kit.metrics import metrics_from_ranks
from align3gr_kit.report import full_test
from align3gr_kit.report.full_test import full_test_markdown, run_full_test
from align3gr_kit.stages.contract import get_stage, stage_dir
from align3gr_kit.utils import project_root

SMOKE = str(project_root() / "configs" / "smoke.yaml")


@pytest.fixture()
def run(smoke_run, tmp_path):
    """A copy of the finished smoke run (the command keeps its scores inside the run)."""
    cfg = smoke_run.override({"runs_dir": str(tmp_path / "runs")})
    shutil.copytree(smoke_run.run_dir, cfg.run_dir)
    return cfg


def test_the_sft_and_final_models_on_the_same_users_as_sasrec(run, tmp_path, monkeypatch):
    n = 12
    doc = run_full_test(run, SMOKE, users=n, out_dir=tmp_path / "tables")
    rows = {r["method"]: r for r in doc["rows"]}
    assert list(rows) == ["Popularity", "SASRec", "SFT", "after RF-DPO"] and doc["users"] == n
    # the SFT model's lists on the first n users are the ones stage 04 scored for them (same model, decoding)
    stage_ranks = read_target_ranks(stage_dir(run, "04_sft"))["SFT"]["test"][:n]
    want = metrics_from_ranks(stage_ranks)
    assert rows["SFT"]["recall@10"] == pytest.approx(want["recall@10"], abs=1e-6)
    assert rows["SFT"]["ndcg@10"] == pytest.approx(want["ndcg@10"], abs=1e-6)
    # SASRec: stage 01's kept ranks on the same n users
    sasrec = get_stage("01_tokenize").load_artifacts(stage_dir(run, "01_tokenize")).sasrec_ranks["test"][:n]
    assert rows["SASRec"]["recall@10"] == pytest.approx(metrics_from_ranks(sasrec)["recall@10"], abs=1e-6)
    if rows["SASRec"]["recall@10"]:
        assert rows["SFT"]["recall@10 / SASRec"] == pytest.approx(rows["SFT"]["recall@10"] / rows["SASRec"]["recall@10"])
    assert 0 <= rows["after RF-DPO"]["liked_share@10"] <= 1  # graded by the judge
    step = doc["paired"][0]
    assert (step["from"], step["to"]) == ("SFT", "after RF-DPO") and step["only_a"] + step["only_b"] <= n
    md = (tmp_path / "tables" / "full-test-smoke-view.md").read_text()
    assert md == full_test_markdown(doc) and f"the first {n} of" in md and "| SFT | 04_sft" in md

    # a second call reads the kept scores: no beam search; a retrained stage would be scored again
    monkeypatch.setattr("align3gr_kit.evaluate.evaluate", lambda *a, **k: pytest.fail("scored again"))
    again = run_full_test(run, SMOKE, users=n, out_dir=tmp_path / "tables")
    assert [r["recall@10"] for r in again["rows"]] == [r["recall@10"] for r in doc["rows"]]


def test_it_names_the_command_when_the_run_has_no_sft_model(tmp_path):
    from align3gr_kit.config import RunConfig

    cfg = RunConfig.from_yaml(SMOKE, run_name="nothing", runs_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run it first: python -m align3gr_kit run"):
        full_test.models_to_score(cfg)


def test_benchmarks_show_a_full_test_file_as_its_own_block(run, tmp_path):
    """A committed full-test file gets a BENCHMARKS block of its own (its table and the paired step);
    the headline, which compares each chain's best model with SASRec, is not drawn from it."""
    from align3gr_kit.report.benchmarks_md import render
    from align3gr_kit.report.headline import headline_rows

    doc = run_full_test(run, SMOKE, users=8, out_dir=tmp_path / "tables")
    key = "synthetic/full-test-smoke-view"
    out, changed = render("# B\n", {key: doc})
    assert changed == [key] and f"<!-- table:{key} -->" in out
    assert "| SFT | 04_sft: its final model |" in out and "Each model against the one before it" in out
    assert headline_rows({key: doc}) == []
