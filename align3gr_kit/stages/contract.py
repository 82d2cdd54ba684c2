"""The stage contract: what a stage is, where it writes, when it is current, how it is reused.

A run lives in ``<runs_dir>/<run_name>/``, one folder per stage (``00_data``, ``01_tokenize``…).
Every stage module (``align3gr_kit.stages.sNN_<name>``) has one function, ``run(cfg, stage) ->
metrics``, called alike by its notebook and the command line. ``stage`` is a :class:`StageRun`:

* ``stage.input("01_tokenize")`` returns the typed artifacts of a finished earlier stage (their
  class, with ``save``/``load``, lives in its domain package; nobody outside it knows file names);
* ``stage.dir`` is where this stage writes: a fresh temporary folder beside the final one
  (``.<stage>.partial``), so a finished stage is never written into;
* ``stage.checkpoint_dir`` is where a long stage (SFT) keeps resumable checkpoints: it outlives a
  kill (``<run>/.checkpoints/<stage>-<fingerprint>``), so a re-run of the *same* stage continues
  from it; ``finish`` deletes it, and ``run`` without ``--resume`` starts afresh;
* ``stage.finish(metrics)`` writes ``manifest.json`` (parameters, seed, fingerprint, versions,
  commit, wall time, metrics) into it and then renames it into place, so a stage exists whole or
  not at all. A kill at any point leaves the previous finished stage (or nothing) in place.

The ``fingerprint`` chains the stage's config sections and its upstream stages' fingerprints, and
:func:`is_current` is the one place that decides whether a finished stage may be skipped
(``--resume``). :func:`reuse_stage` copies an identical stage of another run (never hard links:
a later in-place write in one run must not change another run's files).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.utils import git_commit, machine_info, package_versions, read_json, write_json

MANIFEST = "manifest.json"
PARTIAL = ".partial"  # suffix of a stage's temporary folder: ``.<stage>.partial``
RETIRED = ".retired"  # suffix of a finished folder being replaced: ``.<stage>.retired``
CHECKPOINTS = ".checkpoints"  # ``<run>/.checkpoints/<stage>-<fingerprint>``: resumable mid-stage state


@dataclass(frozen=True)
class Stage:
    """A pipeline stage.

    Attributes:
        name: folder and notebook name (``01_tokenize``).
        sections: the config sections it depends on.
        upstream: earlier stages whose artifacts it reads (02 only draws, so nothing depends on it).
        artifacts: ``module:Class`` of its typed outputs (``load(folder)``), or ``""`` for none.
        unread: ``section.field`` names inside ``sections`` that the stage never reads; they are left out
            of its fingerprint, so two runs that differ only there share the stage (05 and the RF fields).
    """

    name: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...] = ()
    artifacts: str = ""
    unread: tuple[str, ...] = ()

    @property
    def notebook(self) -> str:
        return f"{self.name}.ipynb"

    @property
    def module(self) -> str:
        return f"align3gr_kit.stages.s{self.name}"

    def load_artifacts(self, folder: Path) -> Any:
        if not self.artifacts:
            raise ValueError(f"stage {self.name} has no artifacts for other stages to read")
        module, cls = self.artifacts.split(":")
        return getattr(importlib.import_module(module), cls).load(folder)


_ALL = ("data", "tokenizer", "prompts", "model", "sft", "decode", "dpo")
STAGES: tuple[Stage, ...] = (
    Stage("00_data", ("data",), (), "align3gr_kit.data.artifacts:DataArtifacts"),
    Stage("01_tokenize", ("tokenizer",), ("00_data",), "align3gr_kit.tokenizer.artifacts:TokenizeArtifacts"),
    Stage("02_codebooks", ("tokenizer",), ("01_tokenize",)),
    Stage("03_sft_prompts", ("prompts", "model"), ("01_tokenize",), "align3gr_kit.prompts.artifacts:SFTData"),
    Stage("04_sft", ("model", "sft", "decode"), ("03_sft_prompts",), "align3gr_kit.train.artifacts:SFTArtifacts"),
    Stage("05_sp_dpo", ("decode", "dpo"), ("04_sft",), "align3gr_kit.dpo.artifacts:DPOArtifacts",
          unread=("dpo.rf_stages", "dpo.rf_progressive", "dpo.rf_oracle")),
    Stage("06_rf_dpo", ("decode", "dpo"), ("05_sp_dpo",), "align3gr_kit.dpo.artifacts:DPOArtifacts"),
    Stage("07_report", _ALL, ("00_data", "01_tokenize", "04_sft", "05_sp_dpo", "06_rf_dpo")),
)
STAGE_BY_NAME = {s.name: s for s in STAGES}


def get_stage(name: str) -> Stage:
    """Look a stage up by full name (``01_tokenize``) or number (``01``/``1``)."""
    if name in STAGE_BY_NAME:
        return STAGE_BY_NAME[name]
    for s in STAGES:
        if s.name.split("_")[0] == str(name).zfill(2):
            return s
    raise ValueError(f"unknown stage {name!r}; stages are {[s.name for s in STAGES]}")


def stage_dir(cfg: RunConfig, stage: str) -> Path:
    """The final folder of ``stage`` in ``cfg``'s run (it may not exist)."""
    return cfg.run_dir / get_stage(stage).name


def read_manifest(cfg: RunConfig, stage: str) -> dict[str, Any] | None:
    """The manifest of a finished stage of ``cfg``'s run, or None."""
    m = stage_dir(cfg, stage) / MANIFEST
    return read_json(m) if m.exists() else None


def fingerprint(cfg: RunConfig, stage: Stage) -> str:
    """Hash of the stage's name, its config sections and its upstream stages' manifest fingerprints.

    Upstream fingerprints chain in everything earlier stages depended on, so a stage is "unchanged"
    exactly when nothing that fed it changed.
    """
    upstream = []
    for name in stage.upstream:
        m = read_manifest(cfg, name)
        upstream.append(m.get("fingerprint", "") if m else "missing")
    payload = f"{stage.name}|{cfg.section_hash(*stage.sections, unread=stage.unread)}|{','.join(upstream)}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def chain_fingerprint(cfg: RunConfig, last_stage: str) -> str:
    """12 hex digits of what a model at the end of ``last_stage`` depends on, from the config alone:
    the sections of that stage and of every stage upstream of it, each without its ``unread`` fields
    (as :func:`fingerprint` hashes them), not the seed or the run name.

    Unlike :func:`fingerprint`, it needs no run on disk, so a result recorded on one machine is found
    on another (:mod:`align3gr_kit.report.ledger`); unlike a hash of the whole config, a change to a
    later stage's settings (a DPO budget) leaves the SFT model's key as it was.
    """
    by_name = {s.name: s for s in STAGES}
    chain, todo = set(), [get_stage(last_stage).name]
    while todo:
        name = todo.pop()
        if name not in chain:
            chain.add(name)
            todo.extend(by_name[name].upstream)
    seedless = cfg.override({"seed": 0})
    payload = {n: seedless.section_hash(*by_name[n].sections, unread=by_name[n].unread) for n in sorted(chain)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def is_current(cfg: RunConfig, stage: Stage) -> bool:
    """True when ``stage`` finished in this run with the fingerprint it would have now (the one place
    that decides whether ``--resume`` may skip it)."""
    m = read_manifest(cfg, stage.name)
    return bool(m) and m.get("fingerprint") == fingerprint(cfg, stage)


def checkpoint_dir(cfg: RunConfig, stage: Stage) -> Path:
    """Where ``stage`` keeps resumable checkpoints while it runs: keyed by its fingerprint, so only a
    re-run with the same config and upstream stages continues from them."""
    return cfg.run_dir / CHECKPOINTS / f"{stage.name}-{fingerprint(cfg, stage)}"


def drop_checkpoints(cfg: RunConfig, stage: Stage) -> list[Path]:
    """Delete every checkpoint folder of ``stage`` in ``cfg``'s run (any fingerprint)."""
    folder = cfg.run_dir / CHECKPOINTS
    removed = sorted(folder.glob(f"{stage.name}-*")) if folder.is_dir() else []
    for p in removed:
        shutil.rmtree(p)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return removed


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove what killed runs left in a run folder (temporary stage folders and notebooks)."""
    removed = []
    if not run_dir.is_dir():
        return removed
    for p in run_dir.glob(".*"):
        if p.name.endswith((PARTIAL, RETIRED, ".reuse")) or ".tmp" in p.name:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
    return removed


def find_identical_stage(cfg: RunConfig, stage: Stage) -> Path | None:
    """Another run's folder for ``stage`` with the same fingerprint (same config sections, seed and
    upstream chain), so ablations and baselines that share their early stages compute them once.
    Folders holding the executed notebook come first."""
    want = fingerprint(cfg, stage)
    root = cfg.run_dir.parent
    if not root.is_dir():
        return None
    found: list[tuple[bool, str, Path]] = []
    for other in root.iterdir():
        folder = other / stage.name
        if other == cfg.run_dir or other.name.startswith((".", "_")) or not (folder / MANIFEST).exists():
            continue
        if read_json(folder / MANIFEST).get("fingerprint") == want:
            found.append((not (folder / stage.notebook).exists(), other.name, folder))
    return min(found)[2] if found else None


def reuse_stage(source: Path, dest: Path) -> None:
    """Copy a finished stage folder of another run into ``dest``, whole or not at all.

    A copy, never a hard link: the stages write files in place (``torch.save``, plotly's
    ``write_html``), and a shared inode would let one run change another run's artifacts.
    Symbolic links inside the folder (a DPO stage's ``model`` link) stay links.
    """
    tmp = dest.with_name(f".{dest.name}.reuse")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(source, tmp, symlinks=True)
    _swap_into_place(tmp, dest)


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` onto ``dest``; an existing ``dest`` is moved aside first and removed after."""
    old = dest.with_name(f".{dest.name}{RETIRED}")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old)


class StageRun:
    """One stage of one run while it runs: typed inputs, a private folder, the manifest at the end.

    Create it at the start of a notebook or command (the wall clock starts then). With
    ``all_processes`` (a stage every process of ``torchrun`` / ``accelerate launch`` runs together),
    only the main process prepares and finishes the folder, the others wait for it, and every
    process sees the same ``dir``; otherwise the calling process alone does everything.
    """

    def __init__(self, cfg: RunConfig, stage: str, all_processes: bool = False):
        self.cfg = cfg
        self.stage = get_stage(stage)
        self.final_dir = cfg.run_dir / self.stage.name
        self.dir = cfg.run_dir / f".{self.stage.name}{PARTIAL}"
        self.t0 = time.time()
        self.all_processes = all_processes
        self._inputs: dict[str, Any] = {}
        if self._is_main():
            if self.dir.exists():
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True)
        self._barrier()

    def _is_main(self) -> bool:
        from align3gr_kit.utils import process_state

        return not self.all_processes or process_state().is_main_process

    def _barrier(self) -> None:
        from align3gr_kit.utils import process_state

        if self.all_processes:
            process_state().wait_for_everyone()

    def path(self, name: str) -> Path:
        """A path inside this stage's (temporary) folder, parents created."""
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def input(self, stage: str) -> Any:
        """The typed artifacts of a finished earlier stage of the same run (loaded once)."""
        s = get_stage(stage)
        if s.name not in self._inputs:
            folder = self.cfg.run_dir / s.name
            if not (folder / MANIFEST).exists():
                raise FileNotFoundError(
                    f"{folder}: stage {s.name} has not finished for run {self.cfg.run_name!r}; run it first: "
                    f"python -m align3gr_kit run --config <your config> --stages {s.name.split('_')[0]} "
                    f"(or execute notebooks/{s.notebook})"
                )
            self._inputs[s.name] = s.load_artifacts(folder)
        return self._inputs[s.name]

    @property
    def checkpoint_dir(self) -> Path:
        """Resumable mid-stage checkpoints of this stage (see :func:`checkpoint_dir`); not created here."""
        return checkpoint_dir(self.cfg, self.stage)

    @property
    def output(self) -> Any:
        """This stage's typed artifacts as written so far into :attr:`dir`."""
        return self.stage.load_artifacts(self.dir)

    def finish(self, metrics: dict[str, Any] | None = None) -> Path:
        """Write ``manifest.json`` and move the folder into place; returns the final folder.

        With ``all_processes``, only the main process writes; the others wait for it.
        """
        self._barrier()
        if self._is_main():
            manifest = {
                "stage": self.stage.name,
                "run_name": self.cfg.run_name,
                "seed": self.cfg.seed,
                "fingerprint": fingerprint(self.cfg, self.stage),
                "parameters": self.cfg.to_dict(),
                "metrics": metrics or {},
                "artifacts": sorted(str(p.relative_to(self.dir)) for p in self.dir.rglob("*")
                                    if p.is_file() and p.name != MANIFEST and not p.name.endswith(".ipynb")),
                "wall_seconds": round(time.time() - self.t0, 2),
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "git_commit": git_commit(),
                "versions": package_versions(),
                "machine": machine_info(),
            }
            write_json(self.dir / MANIFEST, manifest)
            _swap_into_place(self.dir, self.final_dir)
            drop_checkpoints(self.cfg, self.stage)
        self._barrier()
        self.dir = self.final_dir
        return self.final_dir


def run_stage(cfg: RunConfig, stage: str, all_processes: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Run one stage the way the command line does: a :class:`StageRun`, the stage module's
    ``run(cfg, stage)``, then ``finish``. Returns the metrics. ``all_processes``: every process of a
    distributed launch runs it together (see :class:`StageRun`)."""
    from align3gr_kit.utils import process_state

    s = get_stage(stage)
    # with all_processes, the kit's state comes first (the process group gets the config's timeout)
    if not all_processes or process_state(cfg).is_main_process:
        clean_leftovers(cfg.run_dir)
    run = StageRun(cfg, s.name, all_processes=all_processes)
    metrics = importlib.import_module(s.module).run(cfg, run, **kwargs)
    run.finish(metrics)
    return metrics


def ensure_stage(cfg: RunConfig, stage: str) -> None:
    """Make ``stage`` (and, first, every upstream stage) current: nothing when it is; a copy of another
    run's identical stage when one exists (as ``run --resume`` does, so a bench or a notebook that
    needs a stage never recomputes what an ablation already made); else run it."""
    s = get_stage(stage)
    for up in s.upstream:
        ensure_stage(cfg, up)
    if is_current(cfg, s):
        return
    if (source := find_identical_stage(cfg, s)) is not None:
        reuse_stage(source, cfg.run_dir / s.name)
        print(f"[{s.name}] identical to {source}, copied", file=sys.stderr)
        return
    run_stage(cfg, s.name)


#: The command that builds a stage in one process (``{how}``: ``--config C`` and its overrides); the
#: data stages run as notebooks, the training stages through ``train``.
BUILD_COMMANDS = {
    "05_sp_dpo": "python -m align3gr_kit train dpo --stage sp {how}",
    "04_sft": "python -m align3gr_kit train sft {how}",
}


def build_command(stages: list[str], how: str = "--config <your config>") -> str:
    """One line that builds ``stages`` (names) in one process: ``run --stages ... --resume`` for the data
    stages, then ``train sft`` / ``train dpo --stage sp`` for the training stages, joined by ``then``."""
    prep = [s.split("_")[0] for s in stages if s not in BUILD_COMMANDS]
    steps = [f"python -m align3gr_kit run --stages {','.join(prep)} --resume {how}"] if prep else []
    steps += [BUILD_COMMANDS[s].format(how=how) for s in stages if s in BUILD_COMMANDS]
    return " then ".join(steps)


def upstream_chain(stage: str) -> list[str]:
    """Every stage ``stage`` depends on, directly or through its upstream stages, in pipeline order."""
    todo, chain = list(get_stage(stage).upstream), set()
    while todo:
        name = todo.pop()
        if name not in chain:
            chain.add(name)
            todo.extend(STAGE_BY_NAME[name].upstream)
    return [s.name for s in STAGES if s.name in chain]


def ensure_upstream(cfg: RunConfig, stage: str, how: str = "--config <your config>") -> None:
    """Make every upstream stage of ``stage`` current before it runs.

    In one process, build the ones that are not (:func:`ensure_stage`). Inside a distributed launch
    (:func:`align3gr_kit.distributed.launched`), never: building a stage there would run one rank's
    Trainer or data code while the others wait at a collective that times out (or pairs with the
    wrong one). Every rank checks the files alone (no collective), and when a stage of the chain is
    missing or stale, every rank stops at once with the command that builds it in one process.

    Args:
        how: ``--config C`` plus the overrides of this command (``--set``, ``--run-name``, ``--seed``),
            for the command in the message: the upstream stages must be built with the same settings.
    Raises:
        LaunchError: inside a launch, naming the stages that are not current and the command.
    """
    from align3gr_kit.distributed import LaunchError, launched

    if not launched():
        for up in get_stage(stage).upstream:
            ensure_stage(cfg, up)
        return
    stale = [s for s in upstream_chain(stage) if not is_current(cfg, get_stage(s))]
    if stale:
        raise LaunchError(f"{cfg.run_dir}: stage(s) {', '.join(stale)} of run {cfg.run_name!r} are missing or stale, "
                          f"and a distributed launch of {stage} does not build them; build them first in one process: "
                          f"{build_command(stale, how)}")


def stage_artifacts(cfg: RunConfig, stage: str) -> Any:
    """The typed artifacts of a finished stage of ``cfg``'s run, built first when not current."""
    ensure_stage(cfg, stage)
    s = get_stage(stage)
    return s.load_artifacts(cfg.run_dir / s.name)
