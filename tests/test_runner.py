"""The papermill runner: stage 00 end to end, manifests, reports, --resume, a failing stage."""

import json

import pytest

from align3gr_kit.config import RunConfig
from align3gr_kit.runner import run_pipeline
from align3gr_kit.runs import StageRun, fingerprint, get_stage
from align3gr_kit.utils import project_root

SMOKE = str(project_root() / "configs" / "smoke.yaml")


@pytest.fixture()
def cfg(tmp_path):
    return RunConfig.from_yaml(SMOKE, run_name="t", runs_dir=str(tmp_path / "runs"))


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
    assert "dataset/items.parquet" in manifest["artifacts"] and manifest["wall_seconds"] > 0
    assert (stage_dir / "00_data.ipynb").exists() and (stage_dir / "figures" / "popularity.html").exists()
    html = (reports / "t" / "00_data.html").read_text()
    assert "plotly" in html.lower() and "Split leave-one-out" in html
    assert json.loads((reports / "t" / "metrics.json").read_text())["00_data"]["items"] == 120
    assert "00_data" in (reports / "t" / "summary.md").read_text()
    # papermill recorded the injected parameters in the executed notebook
    nb = json.loads((stage_dir / "00_data.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"]["run_name"] == "t"

    again = run_pipeline(cfg, SMOKE, stages=["00"], resume=True, reports_dir=reports)
    assert again["stages"][0]["status"].startswith("skipped")
    changed = cfg.override({"data.max_history": 5})
    rerun = run_pipeline(changed, SMOKE, stages=["00"], resume=True, reports_dir=reports,
                         overrides={"data.max_history": 5})
    assert rerun["stages"][0]["status"] == "ok"


def test_failing_stage_stops_and_keeps_the_error_notebook(cfg, tmp_path):
    bad = cfg.override({"data.dataset": "no-such-dataset"})
    res = run_pipeline(bad, SMOKE, stages=["00"], reports_dir=tmp_path / "r",
                       overrides={"data.dataset": "no-such-dataset"})
    assert not res["ok"]
    failure = res["stages"][0]
    assert failure["status"] == "failed" and "unknown dataset 'no-such-dataset'" in failure["error"]
    assert (bad.run_dir / "00_data" / "00_data.failed.ipynb").exists()
    assert not (bad.run_dir / "00_data" / "manifest.json").exists()
    assert not (bad.run_dir / "00_data" / "00_data.ipynb").exists()


def test_stage_input_error_says_how_to_run_it(cfg):
    st = StageRun(cfg, "01")
    with pytest.raises(FileNotFoundError, match=r"stage 00_data has not finished.*--stages 00"):
        st.input("00_data")


def test_resume_reuses_an_identical_stage_of_another_run(cfg, tmp_path):
    first = run_pipeline(cfg, SMOKE, stages=["00"], render=False)
    assert first["ok"]
    other = cfg.override({"run_name": "t2", "dpo.beta": 0.3})  # differs only downstream of stage 00
    res = run_pipeline(other, SMOKE, stages=["00"], resume=True, render=False, overrides={"dpo.beta": 0.3})
    assert res["stages"][0]["status"] == "reused from t"
    src, dst = cfg.run_dir / "00_data" / "dataset" / "items.parquet", other.run_dir / "00_data" / "dataset" / "items.parquet"
    assert dst.read_bytes() == src.read_bytes()
    changed = cfg.override({"run_name": "t3", "data.max_history": 4})
    res = run_pipeline(changed, SMOKE, stages=["00"], resume=True, render=False, overrides={"data.max_history": 4})
    assert res["stages"][0]["status"] == "ok"
