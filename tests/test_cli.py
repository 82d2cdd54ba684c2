"""The command line prints exactly one JSON object on stdout; whatever else a command prints
(trainer logs, progress lines) goes to stderr."""

from __future__ import annotations

import json

import yaml

import align3gr_kit.baselines as baselines
from align3gr_kit.cli import main as cli_main


def test_stdout_is_one_json_object(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"run_name": "cli", "runs_dir": str(tmp_path / "runs"),
                                   "data": {"dataset": "synthetic", "synthetic_users": 40, "synthetic_items": 30}}))
    real = baselines.run_popularity_baseline

    def noisy(*args, **kwargs):
        print({"loss": 1.0})  # what the HF Trainer's log callback does
        return real(*args, **kwargs)

    monkeypatch.setattr(baselines, "run_popularity_baseline", noisy)
    assert cli_main(["baseline", "popularity", "--config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1
    result = json.loads(out)
    assert set(result["test"]) >= {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert "{'loss': 1.0}" in err


def test_report_pipeline_without_a_finished_sft_says_how_to_make_one(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"run_name": "none", "runs_dir": str(tmp_path / "runs")}))
    assert cli_main(["report", "pipeline", "--config", str(cfg)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no finished 04_sft stage" in err and f"run --config {cfg}" in err
    assert not (tmp_path / "runs" / "tables").exists()
