"""The HTML reports read offline (issue 36): equations with a MathJax beside them, no progress bars frozen
as text; summary.md leads with one row per model. An HTML check (no headless browser in the environment)."""

from __future__ import annotations

import re

import nbformat
import pandas as pd

from align3gr_kit.report.pipeline_report import summary_table
from align3gr_kit.report.stage_metrics import pipeline_stage_metrics
from align3gr_kit.stages.contract import read_manifest
from align3gr_kit.stages.runner import MATHJAX_DIR, drop_progress_bars, notebook_parameters, render_report
from align3gr_kit.utils import project_root

BARS = ("Loading weights:   0%|          | 0/21 [00:00<?, ?it/s]\rLoading weights: 100%|##########| 21/21 "
        "[00:00<00:00, 3896.33it/s]\n 12%|#2        | 5/40 [00:02<00:14,  2.42it/s]\x1b[A\n123it [00:01, 5.0it/s]\n")


def _executed_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 00\n$$\\mathcal{L}_{\\text{S-DPO}} = -\\log \\sigma(x)$$"),
                nbformat.v4.new_code_cell("train()", outputs=[
                    nbformat.v4.new_output("stream", name="stderr", text=BARS + "UserWarning: kept\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="metrics printed\n")])]
    nbformat.write(nb, path)
    return path


def test_reports_load_a_local_mathjax_and_drop_frozen_progress_bars(smoke_run, tmp_path):
    nb = _executed_notebook(tmp_path / "00_data.ipynb")
    out = render_report(smoke_run, tmp_path / "reports", notebooks={"00_data": nb})
    html = (out / "00_data.html").read_text()
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', html)
    math = [s for s in scripts if "mathjax" in s.lower()]
    assert math and not any(s.startswith(("http:", "https:", "//")) for s in math), math
    local = out / math[0].split("?")[0]
    assert local == out / MATHJAX_DIR / "MathJax.js" and local.stat().st_size > 50_000
    # the combined config the URL names (TeX input and HTML-CSS output inside), ours, and the STIX-Web fonts
    # it points HTML-CSS at (the package ships no TeX fonts)
    assert (out / MATHJAX_DIR / "config" / "TeX-AMS-MML_HTMLorMML-full.js").stat().st_size > 100_000
    assert "STIX-Web" in (out / MATHJAX_DIR / "config" / "align3gr-offline.js").read_text()
    assert (out / MATHJAX_DIR / "jax" / "output" / "HTML-CSS" / "fonts" / "STIX-Web" / "fontdata.js").exists()
    assert list((out / MATHJAX_DIR / "fonts" / "HTML-CSS" / "STIX-Web").rglob("*.woff"))
    assert "\\mathcal{L}_{\\text{S-DPO}}" in html  # the TeX is there for MathJax to typeset
    assert "it/s]" not in html and "UserWarning: kept" in html and "metrics printed" in html


def test_drop_progress_bars_keeps_other_lines():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output("stream", name="stderr", text=BARS)])]
    assert drop_progress_bars(nb).cells[0].outputs == []


def test_summary_leads_with_one_row_per_model(smoke_run, tmp_path):
    out = render_report(smoke_run, tmp_path / "reports")
    summary = (out / "summary.md").read_text().splitlines()
    header = next(i for i, line in enumerate(summary) if line.startswith("| model |"))
    assert summary[header - 4] == "## Models" and summary.index("## Stages") > header
    body = summary[header + 2:]
    rows = [line.split(" | ") for line in body[: body.index("")]]
    stages = pipeline_stage_metrics(smoke_run)
    assert [r[0].lstrip("| ") for r in rows] == list(stages["model"])  # no 07 in the fixture: no baselines
    sft = rows[0]
    assert float(sft[1]) == round(stages.iloc[0]["test recall@10"], 4)
    assert float(sft[2]) == round(stages.iloc[0]["test ndcg@10"], 4)
    assert sft[4] == "-"  # without stage 07 there is no SASRec row to divide by
    assert float(sft[6].rstrip(" |")) == round(read_manifest(smoke_run, "04_sft")["wall_seconds"], 1)
    assert len(summary) < 40 and "=" not in "".join(summary)  # no key=value dump; metrics.json has them


def test_summary_ratio_to_sasrec_from_stage_07(smoke_run, tmp_path):
    """With stage 07's SASRec row, each model's ratio is its Recall@10 over SASRec's (computed here by hand)."""
    import shutil

    from align3gr_kit.report.pipeline_report import save_comparison
    from align3gr_kit.utils import write_json

    shutil.copytree(smoke_run.run_dir, tmp_path / smoke_run.run_name, symlinks=True)
    cfg = smoke_run.override({"runs_dir": str(tmp_path)})
    (folder := cfg.run_dir / "07_report").mkdir()
    write_json(folder / "manifest.json", {"stage": "07_report", "wall_seconds": 1.5})
    save_comparison(folder, pd.DataFrame([
        {"method": "Popularity", "recall@10": 0.2, "ndcg@10": 0.1, "liked_share@10": None},
        {"method": "SASRec", "recall@10": 0.25, "ndcg@10": 0.1, "liked_share@10": None}]))
    table = summary_table(cfg).set_index("model")
    assert list(table.index[:3]) == ["Popularity", "SASRec", "SFT"]
    assert table.loc["Popularity", "recall@10 / SASRec"] == 0.2 / 0.25
    sft = table.loc["SFT"]
    assert abs(sft["recall@10 / SASRec"] - sft["recall@10"] / 0.25) < 1e-12


def test_injected_parameters_are_relative_to_the_project(smoke_run):
    params = notebook_parameters(smoke_run, str(project_root() / "configs" / "smoke.yaml"), {}, "view")
    assert params["config"] == "configs/smoke.yaml" and params["mode"] == "view"
    assert params["runs_dir"] == str(smoke_run.run_dir.parent)  # outside the project: stays absolute
    inside = smoke_run.override({"runs_dir": "runs"})
    assert notebook_parameters(inside, "configs/smoke.yaml", {}, "run")["runs_dir"] == "runs"


def test_drop_progress_bars_drops_tqdm_widgets_and_keeps_other_displays():
    """A tqdm widget saved in a notebook is only its text frozen at 0%: it goes; other displays stay."""
    bar = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2, "version_minor": 0},
        "text/plain": "beam search:   0%|          | 0/5 [00:00<?, ?it/s]"})
    table = nbformat.v4.new_output("display_data", data={"text/plain": "a table"})
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[bar, table])]
    assert drop_progress_bars(nb).cells[0].outputs == [table]
