"""The stage contract and the papermill runner: manifests, reports, --resume, reuse, integrity."""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from align3gr_kit.config import ConfigError, RunConfig
from align3gr_kit.stages.contract import (
    STAGES,
    StageRun,
    chain_fingerprint,
    checkpoint_dir,
    clean_leftovers,
    fingerprint,
    get_stage,
    is_current,
    reuse_stage,
    run_stage,
)
from align3gr_kit.stages.runner import run_pipeline
from align3gr_kit.utils import project_root

SMOKE = str(project_root() / "configs" / "smoke.yaml")


@pytest.fixture()
def cfg(tmp_path):
    return RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "runs"))


def _sha(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_stage_00_runs_writes_manifest_report_and_resumes(cfg, tmp_path):
    reports = tmp_path / "reports"
    res = run_pipeline(cfg, SMOKE, stages=["00"], reports_dir=reports)
    assert res["ok"], res
    stage_dir = cfg.run_dir / "00_data"
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["metrics"]["users"] == 150 and manifest["metrics"]["test_users"] == 150
    assert manifest["fingerprint"] == fingerprint(cfg, get_stage("00"))
    assert manifest["parameters"]["run_name"] == "t" and manifest["seed"] == 0
    assert {"torch", "transformers", "python"} <= set(manifest["versions"])
    assert f"{os.cpu_count()} cores" in manifest["machine"]  # where the wall time was measured
    assert "dataset/items.parquet" in manifest["artifacts"] and manifest["wall_seconds"] > 0
    assert (stage_dir / "00_data.ipynb").exists() and (stage_dir / "figures" / "popularity.html").exists()
    assert [p.name for p in cfg.run_dir.iterdir()] == ["00_data"]  # no temporary folder or notebook left
    html = (reports / "t" / "00_data.html").read_text()
    assert "plotly" in html.lower() and "Split leave-one-out" in html
    assert json.loads((reports / "t" / "metrics.json").read_text())["00_data"]["items"] == 120
    assert "00_data" in (reports / "t" / "summary.md").read_text()
    nb = json.loads((stage_dir / "00_data.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"]["run_name"] == "t"

    again = run_pipeline(cfg, SMOKE, stages=["00"], resume=True, reports_dir=reports)
    assert again["stages"][0]["status"].startswith("skipped")
    changed = cfg.override({"data.max_history": 5})
    rerun = run_pipeline(changed, SMOKE, stages=["00"], resume=True, reports_dir=reports,
                         overrides={"data.max_history": 5})
    assert rerun["stages"][0]["status"] == "ok"


def test_failing_stage_stops_keeps_the_error_notebook_and_reports_it(cfg, tmp_path, capsys):
    bad = cfg.override({"data.dataset": "ml-100k", "data.data_path": str(tmp_path / "nowhere")})
    res = run_pipeline(bad, SMOKE, stages=["00"], reports_dir=tmp_path / "r",
                       overrides={"data.dataset": "ml-100k", "data.data_path": str(tmp_path / "nowhere")})
    assert not res["ok"]
    failure = res["stages"][0]
    assert failure["status"] == "failed" and "nowhere" in failure["error"]
    assert (bad.run_dir / "00_data.failed.ipynb").exists()
    assert not (bad.run_dir / "00_data").exists()  # nothing half-written
    assert [p.name for p in bad.run_dir.iterdir()] == ["00_data.failed.ipynb"]
    summary = (tmp_path / "r" / "t" / "summary.md").read_text()
    assert "FAILED: stage 00_data" in summary and "00_data.failed.ipynb" in summary
    assert json.loads((tmp_path / "r" / "t" / "metrics.json").read_text())["failed"]["stage"] == "00_data"
    assert "\x1b[" not in capsys.readouterr().err  # plain text, no ANSI colour codes


def test_stage_input_error_says_how_to_run_it(cfg):
    st = StageRun(cfg, "01")
    with pytest.raises(FileNotFoundError, match=r"stage 00_data has not finished.*--stages 00"):
        st.input("00_data")


def test_killed_rerun_leaves_the_finished_stage_whole(cfg):
    run_stage(cfg, "00_data")
    folder = cfg.run_dir / "00_data"
    before = _sha(folder)
    changed = cfg.override({"data.max_history": 5})
    killed = StageRun(changed, "00_data")  # a re-run with other settings, killed half-way
    killed.path("dataset/items.parquet").write_bytes(b"half-written")
    assert _sha(folder) == before  # the finished stage was never written into
    assert is_current(cfg, get_stage("00")) and not is_current(changed, get_stage("00"))
    assert clean_leftovers(cfg.run_dir) == [killed.dir] and not killed.dir.exists()
    run_stage(changed, "00_data")  # --resume with the new settings re-runs it
    assert is_current(changed, get_stage("00")) and _sha(folder) != before


def test_checkpoints_outlive_a_kill_follow_the_fingerprint_and_go_with_finish_or_a_plain_run(cfg, tmp_path):
    """A killed stage's checkpoints survive the clean-up (the re-run continues from them); they are
    keyed by the fingerprint, deleted when the stage finishes, and a run without --resume starts afresh."""
    stage = get_stage("00")
    killed = StageRun(cfg, "00_data")
    ck = killed.checkpoint_dir
    assert ck == checkpoint_dir(cfg, stage) and ck.parent == cfg.run_dir / ".checkpoints"
    assert ck.name == f"00_data-{fingerprint(cfg, stage)}"
    assert checkpoint_dir(cfg.override({"data.max_history": 5}), stage) != ck  # other settings, other folder
    assert checkpoint_dir(cfg.override({"sft.save_steps": 7}), stage) == ck  # how often it saves: same result
    (ck / "checkpoint-3").mkdir(parents=True)
    assert clean_leftovers(cfg.run_dir) == [killed.dir] and ck.is_dir()  # the kill's leftovers go, not these
    run_stage(cfg, "00_data")  # the re-run finishes the stage, and its checkpoints are gone
    assert not (cfg.run_dir / ".checkpoints").exists()

    (ck / "checkpoint-3").mkdir(parents=True)
    fails = {"data.dataset": "ml-100k", "data.data_path": str(tmp_path / "nowhere")}  # a stage that fails
    bad = cfg.override(fails)
    assert not run_pipeline(bad, SMOKE, stages=["00"], resume=True, render=False, overrides=fails)["ok"]
    assert ck.is_dir()  # --resume keeps them for the re-run
    assert not run_pipeline(bad, SMOKE, stages=["00"], render=False, overrides=fails)["ok"]
    assert not ck.exists()  # a plain run deleted them before it started


def test_reuse_copies_so_other_runs_never_change(cfg):
    run_stage(cfg, "00_data")
    other = cfg.override({"run_name": "t2"})
    reuse_stage(cfg.run_dir / "00_data", other.run_dir / "00_data")
    before = _sha(cfg.run_dir / "00_data")
    for p in (other.run_dir / "00_data").rglob("*.parquet"):
        assert p.stat().st_ino != (cfg.run_dir / "00_data" / p.relative_to(other.run_dir / "00_data")).stat().st_ino
    run_stage(other.override({"data.max_history": 4}), "00_data")  # changes the reused stage of t2
    assert _sha(cfg.run_dir / "00_data") == before


def test_resume_reuses_an_identical_stage_of_another_run(cfg):
    first = run_pipeline(cfg, SMOKE, stages=["00"], render=False)
    assert first["ok"]
    other = cfg.override({"run_name": "t2", "dpo.beta": 0.3})  # differs only downstream of stage 00
    res = run_pipeline(other, SMOKE, stages=["00"], resume=True, render=False, overrides={"dpo.beta": 0.3})
    assert res["stages"][0]["status"] == "reused from t"
    assert _sha(other.run_dir / "00_data") == _sha(cfg.run_dir / "00_data")


def test_stage_artifacts_copy_an_identical_stage_instead_of_recomputing(cfg, monkeypatch):
    import align3gr_kit.stages.contract as contract

    run_stage(cfg, "00_data")
    other = cfg.override({"run_name": "t2", "dpo.beta": 0.3})  # differs only downstream of stage 00
    monkeypatch.setattr(contract, "run_stage", lambda *a, **k: pytest.fail("recomputed an identical stage"))
    contract.stage_artifacts(other, "00_data")
    assert is_current(other, get_stage("00_data"))
    assert _sha(other.run_dir / "00_data") == _sha(cfg.run_dir / "00_data")
    changed = cfg.override({"run_name": "t3", "data.max_history": 4})  # a different stage 00: must run
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        contract.stage_artifacts(changed, "00_data")


def test_ensure_upstream_builds_in_one_process_and_only_checks_inside_a_launch(cfg, monkeypatch):
    import align3gr_kit.stages.contract as contract
    from align3gr_kit.distributed import LaunchError

    built = []
    monkeypatch.setattr(contract, "run_stage", lambda c, name, **k: built.append(name))
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside a launch: a file check, nothing is built
    with pytest.raises(LaunchError) as e:
        contract.ensure_upstream(cfg, "05_sp_dpo", how="--config c.yaml --set sft.lr=0.01")
    assert built == []
    message = str(e.value)
    assert "00_data, 01_tokenize, 03_sft_prompts, 04_sft" in message and "\n" not in message
    assert message.endswith("python -m align3gr_kit run --stages 00,01,03 --resume --config c.yaml --set sft.lr=0.01 "
                            "then python -m align3gr_kit train sft --config c.yaml --set sft.lr=0.01")
    run_stage(cfg, "00_data")  # once stage 00 is current, a launch of 01 may start
    monkeypatch.setattr(contract, "run_stage", lambda c, name, **k: built.append(name))
    contract.ensure_upstream(cfg, "01_tokenize")
    assert built == []
    monkeypatch.delenv("WORLD_SIZE")  # one process: the missing stages are built, upstream first
    contract.ensure_upstream(cfg, "04_sft")
    assert built == ["01_tokenize", "03_sft_prompts"]


def test_chain_fingerprint_follows_what_each_stage_and_its_upstream_read(cfg):
    def fp(c):
        return {s: chain_fingerprint(c, s) for s in ("00_data", "01_tokenize", "03_sft_prompts", "04_sft", "05_sp_dpo",
                                                     "06_rf_dpo")}

    base = fp(cfg)
    assert len(set(base.values())) == 6 and all(re.fullmatch(r"[0-9a-f]{12}", v) for v in base.values())
    # the seed and the run name are not part of it (rows carry the seed in their key)
    assert fp(cfg.override({"seed": 3, "run_name": "other"})) == base
    # a DPO setting changes the DPO stages only; an RF-only field changes 06 only (05 never reads it)
    dpo = fp(cfg.override({"dpo.beta": cfg.dpo.beta * 2}))
    assert [dpo[s] == base[s] for s in base] == [True, True, True, True, False, False]
    rf = fp(cfg.override({"dpo.rf_progressive": not cfg.dpo.rf_progressive}))
    assert [rf[s] == base[s] for s in base] == [True, True, True, True, True, False]
    # an upstream change reaches every later stage: the tokenizer's levels change 01 and all after it
    tok = fp(cfg.override({"tokenizer.levels": cfg.tokenizer.levels + 1}))
    assert [tok[s] == base[s] for s in base] == [True, False, False, False, False, False]
    # 02 only draws: its settings are the tokenizer's, and nothing downstream depends on it
    assert chain_fingerprint(cfg, "02") != base["01_tokenize"]
    with pytest.raises(ValueError, match="unknown stage"):
        chain_fingerprint(cfg, "09_nothing")


@pytest.mark.parametrize("name", ["", "..", "../../evil", "/abs/path", "a/b", ".hidden", "sp ace"])
def test_bad_run_names_are_refused(name):
    with pytest.raises(ConfigError, match="run_name"):
        RunConfig.from_yaml(SMOKE, run_name=name)


def test_every_stage_runs_through_run_stage_and_a_finished_run_resumes_skipping_all(cfg, tmp_path):
    """Walk STAGES on the smoke config through the path the CLI uses; manifests record what ran."""
    for s in STAGES:
        metrics = run_stage(cfg, s.name, progress=False)
        assert isinstance(metrics, dict) and (cfg.run_dir / s.name / "manifest.json").exists()
    m = json.loads((cfg.run_dir / "04_sft" / "manifest.json").read_text())
    assert m["parameters"]["sft"]["max_steps"] == 40 == m["metrics"]["train_steps"]  # the smoke cap, recorded
    m = json.loads((cfg.run_dir / "01_tokenize" / "manifest.json").read_text())
    assert m["parameters"]["tokenizer"]["sasrec"]["epochs"] == 3
    # each DPO stage's starting metrics are the upstream stage's last evaluation of the same model...
    sft = json.loads((cfg.run_dir / "04_sft" / "results.json").read_text())
    sp = json.loads((cfg.run_dir / "05_sp_dpo" / "history.json").read_text())
    rf = json.loads((cfg.run_dir / "06_rf_dpo" / "history.json").read_text())
    assert sp["start"] == {s: sft[s] for s in ("valid", "test")}
    assert rf["start"] == sp["stages"][-1]["metrics"]
    # ...and evaluating the saved SFT model again gives those numbers (the reuse is not a shortcut)
    from align3gr_kit.dpo.pipeline import make_evaluator
    from align3gr_kit.feedback.evaluation import optional_judge
    from align3gr_kit.stages.contract import stage_artifacts

    data, tok = stage_artifacts(cfg, "00_data"), stage_artifacts(cfg, "01_tokenize")
    model, tokenizer, _, _ = stage_artifacts(cfg, "04_sft").load_model(cfg.model.dtype)
    users = tok.users if cfg.prompts.user_scid_in_prompt else None
    again = make_evaluator(cfg, tokenizer, tok.items, users, data.split, judge=optional_judge(data.dataset, cfg.seed))(model)
    def timeless(m):  # the evaluations' wall seconds differ from run to run
        return {split: {k: v for k, v in vals.items() if k != "seconds"} for split, vals in m.items()}

    assert timeless(json.loads(json.dumps(again))) == timeless(sp["start"])
    assert all(is_current(cfg, s) for s in STAGES)
    res = run_pipeline(cfg, SMOKE, resume=True, reports_dir=tmp_path / "reports")
    assert [r["status"] for r in res["stages"]] == ["skipped (unchanged)"] * len(STAGES)

    # the run's results file beside the tables: every model in training order, what each stage took
    from align3gr_kit.report.benchmarks_md import block_markdown, render
    from align3gr_kit.report.table_files import table_markdown

    assert not (tmp_path / "reports" / "tables").exists()  # the committed copy is report pipeline's
    doc = json.loads((tmp_path / "reports" / "t" / "pipeline-t.json").read_text())
    assert [r["model"] for r in doc["rows"]] == ["SFT", "SP-DPO easy", "SP-DPO medium", "SP-DPO hard",
                                                 "RF-DPO easy", "RF-DPO hard"]
    assert doc["rows"][0]["test recall@10"] == sft["test"]["recall@10"]
    assert doc["rows"][-1]["test liked_share@10"] == rf["stages"][-1]["metrics"]["test"]["liked_share@10"]
    assert list(doc["stage_seconds"]) == [s.name for s in STAGES] and doc["overrides"] == {}
    assert doc["wall_seconds"] == pytest.approx(sum(doc["stage_seconds"].values()), abs=0.1)
    assert [b["method"] for b in doc["baselines"]] == ["Popularity", "SASRec"] and doc["budget"]["sft.max_steps"] == 40
    md = (tmp_path / "reports" / "t" / "pipeline-t.md").read_text()
    assert md == table_markdown(doc) and f"| SFT | {doc['rows'][0]['users']} | " in md
    text, changed = render("<!-- table:synthetic/pipeline-t -->\nold\n<!-- /table -->\n", {"synthetic/pipeline-t": doc})
    assert changed == ["synthetic/pipeline-t"] and block_markdown("synthetic/pipeline-t", doc) in text


ARTIFACT_NAMES = ["item_scids.json", "user_scids.json", "item_sc.npy", "summary.json", "tokenizer.pt",
                  "sft_dataset", "log_history.json", "results.json", "history.json", "preferences.jsonl",
                  "manifest.json", "comparison.json"]


@pytest.mark.parametrize("name", ARTIFACT_NAMES)
def test_each_artifact_file_name_lives_in_one_module(name):
    root = project_root()
    quoted = [f'"{name}"'] + ([f'"{name[:-4]}"'] if name.endswith(".npy") else [])
    holders = [p for p in (root / "align3gr_kit").rglob("*.py") if any(q in p.read_text() for q in quoted)]
    assert len(holders) == 1, f"{name}: {holders}"


def _code(nb: Path) -> str:
    cells = json.loads(nb.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_no_notebook_builds_a_path_to_another_stage():
    for nb in sorted((project_root() / "notebooks").glob("*.ipynb")):
        code = _code(nb)
        assert not re.search(r"\.input\([^)]*\)\s*/", code), nb.name
        assert not re.search(r"run_dir\s*/", code) and "runs/" not in code, nb.name
