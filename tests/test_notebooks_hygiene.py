"""The committed notebooks: small, parameterised the same way, executed in order, calling the package."""

import json

import pytest

from align3gr_kit.stages.contract import STAGES
from align3gr_kit.utils import project_root

NOTEBOOKS = sorted((project_root() / "notebooks").glob("*.ipynb"))
PARAMETERS = ["config", "mode", "run_name", "seed", "smoke", "dataset", "data_path", "runs_dir", "overrides"]
#: The first two lines of every parameters cell (the view-mode API, align3gr_kit/stages/notebook.py).
PARAMETERS_HEAD = [
    'config = None  # None: $ALIGN3GR_CONFIG when set (`make lab` sets it), else ../configs/smoke.yaml',
    'mode = "auto"  # view: draw the finished stage from its artifacts, train nothing | run: (re)train it | '
    'auto: view when finished and current, else run',
]


def test_every_notebook_is_a_stage():
    names = {s.notebook for s in STAGES}
    assert NOTEBOOKS, "no notebooks found"
    assert {p.name for p in NOTEBOOKS} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shape(path):
    assert path.stat().st_size < 400_000, f"{path.name} is over 400 KB: strip volatile outputs"
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and cells[0]["source"][0].startswith("# ")
    code = [c for c in cells if c["cell_type"] == "code"]
    params = code[0]
    assert "parameters" in params["metadata"].get("tags", []), "first code cell must be tagged 'parameters'"
    src = "".join(params["source"])
    for name in PARAMETERS:
        assert f"\n{name} = " in "\n" + src, f"parameters cell lacks {name!r}"
    assert "nbval-ignore-output" in code[1]["metadata"].get("tags", []), "setup cell must be nbval-ignore-output"
    setup = "".join(code[1]["source"])
    assert "start_stage(" in setup and "mode=mode" in setup, "the setup cell passes the mode to start_stage"
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: commit it executed in order (refresh it)"
    for c in code:
        n = len("".join(c["source"]).splitlines())
        assert n <= 15, f"{path.name}: a cell of {n} lines; move logic into align3gr_kit/"
        assert "def " not in "".join(c["source"]), f"{path.name}: functions belong in the package"
    closing = "".join(code[-1]["source"])
    assert "stage.finish(" in closing or "_stage(stage" in closing, "the closing cell saves the stage (manifest)"
    assert set(nb["metadata"]) <= {"kernelspec", "language_info"}, "strip notebook metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_starts_with_config_and_mode(path):
    """Every notebook opens the same way: ``config = None`` (``$ALIGN3GR_CONFIG``, else smoke) and
    ``mode = "auto"``, so ``make lab`` and ``run --mode view`` drive them all alike."""
    params = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    assert "".join(params["source"]).splitlines()[:2] == PARAMETERS_HEAD


def test_the_parameters_head_is_what_start_stage_resolves(monkeypatch, tmp_path):
    """``config = None`` means $ALIGN3GR_CONFIG when set, else the smoke config; ``mode`` is checked."""
    from align3gr_kit.stages.notebook import CONFIG_ENV, notebook_config, start_stage

    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert notebook_config(None) == str(project_root() / "configs" / "smoke.yaml")
    monkeypatch.setenv(CONFIG_ENV, "configs/default.yaml")
    assert notebook_config(None) == "configs/default.yaml" and notebook_config("x.yaml") == "x.yaml"
    with pytest.raises(ValueError, match="mode = 'rerun'"):
        start_stage("00_data", None, mode="rerun", runs_dir=str(tmp_path))


def test_committed_outputs_carry_no_machine_path():
    """Outputs print paths relative to the runs folder, never this checkout's absolute path."""
    from align3gr_kit.utils import project_root

    root = str(project_root())
    for nb in sorted((project_root() / "notebooks").glob("*.ipynb")):
        outputs = [json.dumps(c.get("outputs", [])) for c in json.loads(nb.read_text())["cells"]]
        assert not any(root in o for o in outputs), nb.name


def test_notebooks_tables_makes_the_smoke_table_that_07_reads(monkeypatch, capsys):
    """`make test` runs `notebooks tables` before nbval, so that nbval executes notebook 07 over a real
    table: the DPO table up to SP-DPO on the smoke config, one seed, in the folder 07 reads."""
    from pathlib import Path

    from align3gr_kit.cli import main
    from align3gr_kit.report import tables

    calls = []

    def fake_run_table(cfg, config_path, name, seeds, upto=None, **kw):
        calls.append((cfg.run_name, Path(config_path).name, name, seeds, upto, kw.get("out_dir")))
        return {"table": name, "dataset": cfg.data.dataset, "seeds": seeds, "upto": upto, "wall_seconds": 1.0,
                "failed": [], "files": {}}

    monkeypatch.setattr(tables, "run_table", fake_run_table)
    assert main(["notebooks", "tables"]) == 0
    # out_dir None: run_table writes to tables_dir(cfg), the folder 07's tables_overview(cfg) reads
    assert calls == [("smoke", "smoke.yaml", "dpo", [0], "sp", None)]
    assert json.loads(capsys.readouterr().out)["table"] == "dpo"


#: The papers every notebook's opening names (issue 36: a class knows where the method comes from).
ARXIV = {"Align3GR": "2511.11255", "TIGER": "2305.05065", "LC-Rec": "2311.09049", "TS-Rec": "2602.22632"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_opens_for_a_class_and_ends_with_try_this(path):
    """The opening says what the notebook shows, what to know first and the papers (arXiv links); the last
    cell is a "Try this" list whose overrides name real config fields."""
    from align3gr_kit.config import RunConfig

    cells = json.loads(path.read_text())["cells"]
    intro = "".join(cells[0]["source"])
    assert "**What this notebook shows.**" in intro, path.name
    assert "**Know first.**" in intro or "**What to know first.**" in intro, path.name
    for paper, arxiv in ARXIV.items():
        assert f"arXiv:{arxiv}" in intro, (path.name, paper)
    last = "".join(cells[-1]["source"])
    assert cells[-1]["cell_type"] == "markdown" and last.startswith("## Try this"), path.name
    assert len([ln for ln in last.splitlines() if ln[:2] in {"1.", "2.", "3."}]) >= 2, path.name
    import re

    base = RunConfig.from_yaml(str(project_root() / "configs" / "smoke.yaml"))
    for key in re.findall(r'"([a-z_]+\.[a-z_0-9]+)": ', last):  # every override names a real field
        section, field = key.split(".")
        base.override({key: getattr(getattr(base, section), field)})
