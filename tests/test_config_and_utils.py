"""Config loading/overrides, atomic writes (the install files are checked in tests/test_install.py)."""

import pytest

from align3gr_kit.config import RunConfig
from align3gr_kit.utils import atomic_path, project_root, write_json


def test_yaml_sections_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run_name: r\nseed: 3\ndata: {dataset: ml-100k, max_history: 7}\ntokenizer: {levels: 2}\n")
    cfg = RunConfig.from_yaml(p, overrides={"tokenizer.code_dim": 8}, seed=None, run_name="other", dataset="synthetic")
    assert (cfg.run_name, cfg.seed, cfg.data.dataset, cfg.data.max_history) == ("other", 3, "synthetic", 7)
    assert (cfg.tokenizer.levels, cfg.tokenizer.code_dim) == (2, 8)
    assert cfg.seed == 3  # None keeps the YAML value; 0 would be a real seed
    assert RunConfig.from_yaml(p, seed=0).seed == 0


def test_unknown_keys_name_the_file_and_the_valid_keys(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data: {datset: ml-100k}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown key\(s\) data\.datset; valid keys here: .*dataset"):
        RunConfig.from_yaml(p)
    with pytest.raises(ValueError, match=r"unknown config field 'tokenizer\.nope'"):
        RunConfig().override({"tokenizer.nope": 1})
    p.write_text("data: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        RunConfig.from_yaml(p)


def test_section_hash_tracks_only_its_sections():
    a = RunConfig()
    b = a.override({"dpo.beta": 0.5})
    assert a.section_hash("data", "tokenizer") == b.section_hash("data", "tokenizer")
    assert a.section_hash("dpo") != b.section_hash("dpo")
    assert a.section_hash("data") != a.override({"seed": 1}).section_hash("data")
    rf = a.override({"dpo.rf_progressive": not a.dpo.rf_progressive})
    assert rf.section_hash("dpo") != a.section_hash("dpo")
    assert rf.section_hash("dpo", unread=("dpo.rf_progressive",)) == a.section_hash("dpo", unread=("dpo.rf_progressive",))
    with pytest.raises(KeyError, match="dpo.rf_typo"):
        a.section_hash("dpo", unread=("dpo.rf_typo",))


def test_shipped_configs_load():
    for p in sorted((project_root() / "configs").glob("*.yaml")):
        cfg = RunConfig.from_yaml(p)
        assert cfg.run_name, p


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind


@pytest.mark.parametrize("override, field, allowed", [
    ("sft.lr=abc", "sft.lr", "a number"),
    ("tokenizer.levels=three", "tokenizer.levels", "an integer"),
    ("sft.max_steps=-5", "sft.max_steps", ">= 0"),
    ("decode.beam_width=0", "decode.beam_width", ">= 1"),
    ("decode.topk=10", "decode.topk", "a list"),
    ("seed=abc", "seed", "an integer"),
    ("model.dtype=fp8", "model.dtype", "one of auto"),
    ("dpo.sp_negatives=beams", "dpo.sp_negatives", "selfplay"),
    ("decode.topk=[5, 50]", "decode.topk", "beam_width"),
])
def test_bad_set_values_stop_the_command_in_one_line(capsys, override, field, allowed):
    import time

    from align3gr_kit.cli import main

    t0 = time.time()
    assert main(["run", "--config", "configs/smoke.yaml", "--stages", "00", "--set", override]) == 2
    err = capsys.readouterr().err
    assert time.time() - t0 < 2 and "Traceback" not in err
    assert err.startswith("error: --set:") and field in err and allowed in err


def test_numbers_written_as_yaml_strings_are_numbers():
    from align3gr_kit.config import RunConfig

    cfg = RunConfig().override({"sft.lr": "1e-3", "tokenizer.sasrec.lr": "2e-4"})
    assert cfg.sft.lr == 0.001 and isinstance(cfg.sft.lr, float) and cfg.tokenizer.sasrec.lr == 0.0002
