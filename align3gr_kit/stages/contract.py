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
:func:`check_stage` is the one place that decides whether a finished stage may be skipped
(``--resume``): its manifest must be readable, its fingerprint the one the stage would have now, and
every artifact the manifest lists present with its size (and its sha256 where that is cheap, or with
``run --verify``). :func:`reuse_stage` copies an identical stage of another run (never hard links:
a later in-place write in one run must not change another run's files).

Who may write a run at once (the locks live in ``<runs_dir>/.locks/``, outside the run):

* a *command* (``run``, ``train``, ``tokenize``, :func:`ensure_stage`) holds the run lock
  ``<run_name>.lock`` for its whole length (:func:`run_lock`), and is refused at once, naming the holder,
  when another command holds it or when a notebook has a stage of the run open in run mode;
* a *notebook* in run mode (:class:`StageRun` made by ``start_stage``) holds only its own stage's lock
  ``<run_name>.stages/<stage>.lock`` until ``stage.finish`` (or its kernel ends); it takes the run lock for
  an instant first, so it is refused while a command writes the run. Two notebooks of one run (04 and 05)
  are open together, each writing only its own ``.<stage>.partial`` folder; two notebooks of one stage are not;
* a notebook that ``run`` executes (papermill) finds the run lock held by its parent and takes nothing;
* a *view* (:class:`StageView`) takes no lock and writes nothing under the run.

Only the command-line runner removes what stopped commands left (:func:`clean_leftovers`, naming each
path); starting a stage removes its own partial folder and nothing else.
"""

from __future__ import annotations

import contextlib
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
from typing import Any, Callable, Iterator

from align3gr_kit.config import RunConfig
from align3gr_kit.errors import InputError
from align3gr_kit.utils import git_commit, machine_info, package_versions, read_json, sha256_file, write_json

MANIFEST = "manifest.json"
PARTIAL = ".partial"  # suffix of a stage's temporary folder: ``.<stage>.partial``
RETIRED = ".retired"  # suffix of a finished folder being replaced: ``.<stage>.retired``
CHECKPOINTS = ".checkpoints"  # ``<run>/.checkpoints/<stage>-<fingerprint>``: resumable mid-stage state
LOCKS = ".locks"  # ``<runs_dir>/.locks/<run_name>.lock`` (+ ``.json``, the holder): one command per run
STAGE_LOCKS = ".stages"  # ``<runs_dir>/.locks/<run_name>.stages/<stage>.lock``: one notebook per stage
#: Artifacts up to this size are hashed on every ``--resume`` check (a few ms each); bigger ones (a
#: model's weights: seconds) are checked by size, and by hash with ``run --verify``.
HASH_CHEAP_BYTES = 16 * 2**20


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


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """Print ``warning: <message>`` on stderr, once per process (a manifest is read many times)."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr)


def load_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at ``path``; None when there is none, or when it cannot be read (truncated by a full
    disk, not JSON, not an object): then its stage counts as not finished, with one warning naming the
    file, so that one damaged run never stops another run or the report."""
    if not path.exists():
        return None
    try:
        m = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warn_once(f"{path}: unreadable manifest ({type(e).__name__}: {e}); its stage counts as not finished "
                  "and is re-run by the next command that needs it")
        return None
    if not isinstance(m, dict):
        warn_once(f"{path}: unreadable manifest (a JSON {type(m).__name__}, not an object); its stage counts as "
                  "not finished and is re-run by the next command that needs it")
        return None
    return m


def read_manifest(cfg: RunConfig, stage: str) -> dict[str, Any] | None:
    """The manifest of a finished stage of ``cfg``'s run, or None (none, or unreadable: :func:`load_manifest`)."""
    return load_manifest(stage_dir(cfg, stage) / MANIFEST)


def list_artifacts(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``folder`` but the manifest and executed notebooks: relative path ->
    ``{"bytes", "sha256"}``; a symbolic link (a DPO stage's ``model``) -> ``{"link": target}``, not followed."""
    out: dict[str, dict[str, Any]] = {}
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = {"link": os.readlink(p)}
            elif name in files and name != MANIFEST and not name.endswith(".ipynb"):
                out[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return dict(sorted(out.items()))


def verify_artifacts(folder: Path, manifest: dict[str, Any], full: bool = False) -> str | None:
    """None when every artifact ``manifest`` lists is in ``folder`` as it was written; else what is not,
    in words (``04_sft/model/model.safetensors is missing``).

    Sizes are always compared, hashes for files up to :data:`HASH_CHEAP_BYTES` or all with ``full``.
    A manifest of the older format (a list of paths, no sizes) can only be checked for presence.
    """
    listed = manifest.get("artifacts") or {}
    entries = listed.items() if isinstance(listed, dict) else ((rel, {}) for rel in listed)
    for rel, want in entries:
        p = folder / rel
        where = f"{folder.name}/{rel}"
        if "link" in want:
            if not p.is_symlink() or not p.exists():
                return f"{where} (a link to {want['link']}) is missing or points nowhere"
            continue
        if not p.is_file():
            return f"{where} is missing"
        if "bytes" in want and p.stat().st_size != want["bytes"]:
            return f"{where} has {p.stat().st_size} bytes, its manifest says {want['bytes']}"
        if "sha256" in want and (full or want.get("bytes", 0) <= HASH_CHEAP_BYTES) and sha256_file(p) != want["sha256"]:
            return f"{where} changed since the stage finished (its sha256 differs from the manifest's)"
    return None


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
    chain = {*upstream_chain(last_stage), get_stage(last_stage).name}
    seedless = cfg.override({"seed": 0})
    payload = {n: seedless.section_hash(*STAGE_BY_NAME[n].sections, unread=STAGE_BY_NAME[n].unread)
               for n in sorted(chain)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def check_stage(cfg: RunConfig, stage: Stage, full: bool = False) -> tuple[str, str]:
    """Whether ``stage`` of ``cfg``'s run may be skipped (the one place that decides it for ``--resume``).

    Returns ``(state, detail)``: ``("current", "")``; ``("missing", "")`` when it has not finished (or
    its manifest is unreadable, with a warning); ``("changed", "")`` when its settings or upstream
    stages changed; ``("damaged", what)`` when an artifact its manifest lists is missing or changed
    (:func:`verify_artifacts`, ``full``: hash every file).
    """
    m = read_manifest(cfg, stage.name)
    if not m:
        return "missing", ""
    if m.get("fingerprint") != fingerprint(cfg, stage):
        return "changed", ""
    problem = verify_artifacts(stage_dir(cfg, stage.name), m, full=full)
    return ("damaged", problem) if problem else ("current", "")


def is_current(cfg: RunConfig, stage: Stage, full: bool = False) -> bool:
    """True when ``stage`` finished in this run with the fingerprint it would have now and its artifacts
    are as its manifest lists them (:func:`check_stage`)."""
    return check_stage(cfg, stage, full=full)[0] == "current"


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


def drop_stale_checkpoints(cfg: RunConfig, stage: Stage) -> list[Path]:
    """When ``--resume`` skips ``stage`` because it is current: delete its checkpoints of that same
    fingerprint (a killed re-run of the finished stage left them, and this command will not resume from
    them). Checkpoints of other settings stay, for a re-run with those settings."""
    folder = checkpoint_dir(cfg, stage)
    if not folder.is_dir():
        return []
    shutil.rmtree(folder)
    print(f"[{stage.name}] removed {folder} (checkpoints of a re-run that was stopped; the stage is finished)",
          file=sys.stderr)
    if not any(folder.parent.iterdir()):
        folder.parent.rmdir()
    return [folder]


def clean_leftovers(run_dir: Path, report: bool = True) -> list[Path]:
    """Remove what stopped commands left in one run folder: temporary stage folders and notebooks (not
    checkpoints: a re-run continues from them; :func:`drop_stale_checkpoints`). Call it only while
    holding the run's :func:`run_lock` (a command's, which no notebook of the run shares): a notebook's
    partial folder is work in progress. ``report``: one line on stderr per removed path (at start-up;
    not when a command cleans up after its own failure)."""
    removed = []
    if not run_dir.is_dir():
        return removed
    for p in run_dir.glob(".*"):
        if p.name.endswith((PARTIAL, RETIRED, ".reuse")) or ".tmp" in p.name:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
    for p in removed if report else ():
        print(f"removed {p} (left by a stopped command)", file=sys.stderr)
    return removed


class RunInUse(InputError):
    """Another live command holds the run's lock (:func:`run_lock`)."""


_HELD: dict[str, list] = {}  # lock path -> [FileLock, depth]: a command re-enters its own lock
_LOCK_ENV = "ALIGN3GR_RUN_LOCKS"  # the lock paths a parent process holds (papermill's kernel inherits it)


def lock_path(cfg: RunConfig) -> Path:
    """The lock file of ``cfg``'s run: ``<runs_dir>/.locks/<run_name>.lock`` (outside the run folder, so
    that locking neither creates the run nor shows in it)."""
    return cfg.run_dir.parent / LOCKS / f"{cfg.run_name}.lock"


def _lock_key(cfg: RunConfig) -> tuple[Path, str]:
    """The lock file (its folder made) and its resolved path, the same string in every process."""
    path = lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, str(path.resolve())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take_lock(path: Path, refused: str, where: str) -> Any:
    """Take the file lock at ``path`` at once and write its holder file (``.json`` beside it); returns the
    ``FileLock``. Raises :class:`RunInUse` (``refused``, then who holds it and the lock's path) when a live
    process holds it. A lock whose holder died is released by the system; its leftover holder file is
    reported as taken over (``where``: the run or stage, for that message)."""
    from filelock import FileLock, Timeout

    holder = path.with_suffix(".json")
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        info = load_holder(holder)
        who = (f"PID {info.get('pid')} ({info.get('command', '?')}, started {info.get('started', '?')})"
               if info else "another process (it has not written its PID yet)")
        raise RunInUse(refused.format(who=who) + f" (lock: {path})") from None
    old = load_holder(holder)
    if old and old.get("pid") != os.getpid():
        state = "no longer running" if not _pid_alive(int(old.get("pid", 0) or 0)) else "no longer holding it"
        print(f"warning: {where}: taking over the lock of PID {old.get('pid')} (started "
              f"{old.get('started', '?')}), which is {state}", file=sys.stderr)
    write_json(holder, {"pid": os.getpid(), "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                        "command": _command_line()})
    return lock


def _command_line() -> str:
    """What this process is, for a holder file: the command line, or ``a Jupyter kernel`` in a notebook."""
    if "ipykernel" in sys.modules and "ipykernel" in " ".join(sys.argv[:1]):
        return "a Jupyter kernel"
    return " ".join(["python -m align3gr_kit", *sys.argv[1:]])[:200]


def stage_lock_path(cfg: RunConfig, stage: str) -> Path:
    """The lock of one stage of ``cfg``'s run that a notebook in run mode holds:
    ``<runs_dir>/.locks/<run_name>.stages/<stage>.lock``."""
    return cfg.run_dir.parent / LOCKS / f"{cfg.run_name}{STAGE_LOCKS}" / f"{get_stage(stage).name}.lock"


def _open_notebook_stage(cfg: RunConfig) -> tuple[str, dict[str, Any]] | None:
    """A stage of ``cfg``'s run that a notebook of another process holds open in run mode (its name and
    holder file), or None. Call it while holding the run lock: no notebook can open a stage meanwhile."""
    from filelock import FileLock, Timeout

    folder = cfg.run_dir.parent / LOCKS / f"{cfg.run_name}{STAGE_LOCKS}"
    for path in sorted(folder.glob("*.lock")) if folder.is_dir() else ():
        if str(path.resolve()) in _HELD:  # this process's own notebook stage (ensure_stage inside a notebook)
            continue
        probe = FileLock(path, timeout=0)
        try:
            probe.acquire()
        except Timeout:
            return path.stem, load_holder(path.with_suffix(".json"))
        probe.release()
    return None


def acquire_run(cfg: RunConfig, notebooks: bool = True) -> bool:
    """Take ``cfg``'s run lock for this process at once (a command's), or raise :class:`RunInUse` naming
    the holder: another command, or (``notebooks``) a notebook that has a stage of the run open in run mode.

    Returns False (and takes nothing) when a parent process holds it (the runner, for the notebooks its
    kernel executes), True otherwise; each True needs one :func:`release_run`.
    """
    path, key = _lock_key(cfg)
    if key in os.environ.get(_LOCK_ENV, "").split(os.pathsep) and key not in _HELD:
        return False
    if key in _HELD:
        _HELD[key][1] += 1
        return True
    lock = _take_lock(path, f"{cfg.run_dir}: run {cfg.run_name!r} is in use by {{who}}; wait for it to finish or "
                            "stop it, or give this command another --run-name", str(cfg.run_dir))
    _HELD[key] = [lock, 1]
    os.environ[_LOCK_ENV] = os.pathsep.join(p for p in [*os.environ.get(_LOCK_ENV, "").split(os.pathsep), key] if p)
    if notebooks and (open_stage := _open_notebook_stage(cfg)) is not None:
        release_run(cfg)
        name, info = open_stage
        who = f"PID {info.get('pid')}, started {info.get('started', '?')}" if info else "a process"
        raise RunInUse(f"{cfg.run_dir}: stage {name} of run {cfg.run_name!r} is open in run mode in a notebook "
                       f"({who}); finish it there (stage.finish) or stop that kernel, or give this command another "
                       f"--run-name (lock: {stage_lock_path(cfg, name)})")
    return True


def release_run(cfg: RunConfig) -> None:
    """Undo one :func:`acquire_run` that returned True; the last one removes the holder file and unlocks."""
    path, key = _lock_key(cfg)
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _HELD[key]
        os.environ[_LOCK_ENV] = os.pathsep.join(
            p for p in os.environ.get(_LOCK_ENV, "").split(os.pathsep) if p and p != key)
        with contextlib.suppress(FileNotFoundError):
            path.with_suffix(".json").unlink()
        entry[0].release()


def acquire_stage(cfg: RunConfig, stage: str) -> bool:
    """Open ``stage`` of ``cfg``'s run for writing by a notebook (see the module's note on locks).

    Returns False (takes nothing) when this process or its parent holds the run lock (a command, which
    excludes every notebook already); else takes the run lock for an instant (:class:`RunInUse` when a
    command holds it) and then the stage's own lock (:class:`RunInUse` when another notebook has that
    stage open), and returns True; each True needs one :func:`release_stage`.
    """
    _, run_key = _lock_key(cfg)
    if run_key in _HELD or run_key in os.environ.get(_LOCK_ENV, "").split(os.pathsep):
        return False
    path = stage_lock_path(cfg, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return True
    acquire_run(cfg, notebooks=False)
    try:
        name = get_stage(stage).name
        lock = _take_lock(path, f"{cfg.run_dir}: stage {name} of run {cfg.run_name!r} is open in run mode by "
                                "{who}; finish or stop it there, or open this notebook with mode = \"view\"",
                          f"{cfg.run_dir} (stage {name})")
    finally:
        release_run(cfg)
    _HELD[key] = [lock, 1]
    return True


def release_stage(cfg: RunConfig, stage: str) -> None:
    """Undo one :func:`acquire_stage` that returned True; the last one removes the holder file and unlocks."""
    path = stage_lock_path(cfg, stage)
    entry = _HELD.get(key := str(path.resolve()))
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            path.with_suffix(".json").unlink()
        entry[0].release()


def load_holder(path: Path) -> dict[str, Any]:
    """The holder file of a run lock (``pid``, ``started``, ``command``), ``{}`` when absent or half-written."""
    try:
        info = read_json(path)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


@contextlib.contextmanager
def run_lock(cfg: RunConfig, take: bool = True) -> Iterator[None]:
    """Hold ``cfg``'s run lock for the block (one writer per run; re-entrant within a command).

    ``take=False`` holds nothing: the other ranks of a distributed launch, whose rank 0 holds it.
    Raises :class:`RunInUse` at once when another live command holds it.
    """
    took = take and acquire_run(cfg)
    try:
        yield
    finally:
        if took:
            release_run(cfg)


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
        m = load_manifest(folder / MANIFEST)  # unreadable: that run's stage is not offered, nothing fails
        if m and m.get("fingerprint") == want:
            if problem := verify_artifacts(folder, m):
                warn_once(f"{folder}: not reused, {problem}")
                continue
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

    Create it at the start of a notebook or command (the wall clock starts then). It removes its own
    stage's partial folder (left by a stopped attempt) and nothing else of the run. Outside a command
    it holds the stage's lock until ``finish`` (:func:`acquire_stage`): other stages of the run may be
    open in other notebooks meanwhile. With ``all_processes`` (a stage every process of ``torchrun`` /
    ``accelerate launch`` runs together), only the main process prepares and finishes the folder, the
    others wait for it, and every process sees the same ``dir``; otherwise the calling process alone
    does everything.
    """

    #: False: this object writes the stage (:class:`StageView` is the read-only twin)
    viewing = False
    #: stage lock path -> the StageRun of this process that holds that stage's lock (see ``__init__``)
    _open: dict[str, "StageRun"] = {}

    def __init__(self, cfg: RunConfig, stage: str, all_processes: bool = False):
        self.cfg = cfg
        self.stage = get_stage(stage)
        self.final_dir = cfg.run_dir / self.stage.name
        self.dir = cfg.run_dir / f".{self.stage.name}{PARTIAL}"
        self.t0 = time.time()
        self.all_processes = all_processes
        self._inputs: dict[str, Any] = {}
        self._took_lock = False
        if self._is_main():
            # the stage's lock first (a notebook run by hand; a command holds the run's lock already and a
            # notebook that ``run`` executes finds it held by its parent), then a fresh private folder
            self._took_lock = acquire_stage(cfg, self.stage.name)
            if self._took_lock:
                # a notebook's setup cell run again in the same kernel after a failed cell: the earlier,
                # abandoned StageRun of this stage hands its hold over, so the lock does not stay taken
                # once this one finishes
                key = str(stage_lock_path(cfg, self.stage.name).resolve())
                previous = StageRun._open.pop(key, None)
                if previous is not None and previous._took_lock:
                    previous._took_lock = False
                    release_stage(cfg, self.stage.name)
                StageRun._open[key] = self
            if self.dir.exists():
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True)
        self._barrier()

    def execute(self, fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """Do the stage's work: ``fn(cfg, self, **kwargs)`` (a stage module's ``run``); returns its metrics."""
        return fn(self.cfg, self, **kwargs)

    def _is_main(self) -> bool:
        from align3gr_kit.distributed import process_state

        return not self.all_processes or process_state().is_main_process

    def _barrier(self) -> None:
        from align3gr_kit.distributed import process_state

        if self.all_processes:
            process_state().wait_for_everyone()

    def path(self, name: str) -> Path:
        """A path inside this stage's (temporary) folder, parents created."""
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def input(self, stage: str) -> Any:
        """The typed artifacts of a finished earlier stage of the same run (loaded once)."""
        return _load_input(self.cfg, self._inputs, stage)

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
                "artifacts": list_artifacts(self.dir),
                "wall_seconds": round(time.time() - self.t0, 2),
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "git_commit": git_commit(),
                "versions": package_versions(),
                "machine": machine_info(),
            }
            write_json(self.dir / MANIFEST, manifest)
            _swap_into_place(self.dir, self.final_dir)
            drop_checkpoints(self.cfg, self.stage)
            self._release()
        self._barrier()
        self.dir = self.final_dir
        return self.final_dir

    def abandon(self) -> None:
        """After a failure or an interrupt: remove the partial folder (the checkpoints stay, for
        ``--resume``) and give the run's lock back if this stage took it. No collective: a failing rank
        must not wait for the others."""
        if self._is_main():
            if self.dir != self.final_dir and self.dir.exists():
                shutil.rmtree(self.dir, ignore_errors=True)
            self._release()

    def _release(self) -> None:
        if self._took_lock:
            self._took_lock = False
            if StageRun._open.get(key := str(stage_lock_path(self.cfg, self.stage.name).resolve())) is self:
                del StageRun._open[key]
            release_stage(self.cfg, self.stage.name)


def _load_input(cfg: RunConfig, cache: dict[str, Any], stage: str) -> Any:
    """The typed artifacts of finished ``stage`` of ``cfg``'s run, kept in ``cache``; FileNotFoundError
    naming the stage and the command that makes it when it has not finished."""
    s = get_stage(stage)
    if s.name not in cache:
        folder = cfg.run_dir / s.name
        if load_manifest(folder / MANIFEST) is None:
            raise FileNotFoundError(
                f"{folder}: stage {s.name} has not finished for run {cfg.run_name!r}; run it first: "
                f"python -m align3gr_kit run --config <your config> --stages {s.name.split('_')[0]} "
                f"(or execute notebooks/{s.notebook})"
            )
        cache[s.name] = s.load_artifacts(folder)
    return cache[s.name]


def make_command(stage: str, config: str = "<your config>") -> str:
    """The command that makes ``stage`` and the stages it needs, skipping those already current:
    ``python -m align3gr_kit run --config <config> --stages 00,01,03,04 --resume``."""
    chain = [*upstream_chain(stage), get_stage(stage).name]
    return f"python -m align3gr_kit run --config {config} --stages {','.join(n.split('_')[0] for n in chain)} --resume"


class StageNotFinished(InputError):
    """A view of a stage that has not finished (or whose files changed since): nothing to draw from."""


class StageView:
    """A finished stage of a run, read back for a notebook in view mode: the same surface as
    :class:`StageRun` (``cfg``, ``stage``, ``input``, ``output``, ``path``, ``execute``, ``finish``,
    ``dir``, ``final_dir``) that trains nothing, takes no lock and writes nothing under the run.

    ``dir`` is the finished folder (read it, never write it); ``path(name)`` is a scratch folder outside
    the run (a figure or cache a cell writes goes there and is dropped with the process); ``execute``
    returns the manifest's metrics without calling anything; ``finish`` writes nothing.

    Raises :class:`StageNotFinished` (one line: the stage and the command that makes it) when the stage
    has no readable manifest or a file it lists is missing or changed. A stage finished with other
    settings than ``cfg``'s is still viewed (``current`` is then False: the caller says so).
    """

    viewing = True

    def __init__(self, cfg: RunConfig, stage: str, config: str = "<your config>"):
        self.cfg = cfg
        self.stage = get_stage(stage)
        self.final_dir = self.dir = cfg.run_dir / self.stage.name
        self._inputs: dict[str, Any] = {}
        self._scratch: Any = None  # a tempfile.TemporaryDirectory, made by the first path()
        state, problem = check_stage(cfg, self.stage)
        if state in ("missing", "damaged"):
            why = "has not finished" if state == "missing" else f"changed since it finished ({problem})"
            raise StageNotFinished(f"{self.final_dir}: stage {self.stage.name} of run {cfg.run_name!r} {why}, so there "
                                   f"is nothing to view; make it with: {make_command(self.stage.name, config)} "
                                   "(or set mode = \"run\" in the notebook)")
        self.current = state == "current"
        self.manifest: dict[str, Any] = read_manifest(cfg, self.stage.name) or {}

    def execute(self, fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """Call nothing; the metrics the stage recorded when it finished (its manifest's)."""
        return dict(self.manifest.get("metrics") or {})

    def input(self, stage: str) -> Any:
        """The typed artifacts of a finished earlier stage of the same run (loaded once)."""
        return _load_input(self.cfg, self._inputs, stage)

    @property
    def output(self) -> Any:
        """This stage's typed artifacts, read from its finished folder."""
        return _load_input(self.cfg, self._inputs, self.stage.name)

    def path(self, name: str) -> Path:
        """A path in a scratch folder outside the run (made on first use, parents created)."""
        if self._scratch is None:
            import tempfile

            # removed when this view is garbage-collected or the process ends
            self._scratch = tempfile.TemporaryDirectory(prefix=f"align3gr-view-{self.stage.name}-")
        p = Path(self._scratch.name) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def finish(self, metrics: dict[str, Any] | None = None) -> Path:
        """Write nothing; the finished folder."""
        return self.final_dir

    def abandon(self) -> None:
        """Nothing to undo: a view holds no lock and wrote nothing under the run."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while a stage ran: which stage, after how long (the command line's one line)."""

    def __init__(self, stage: str, seconds: float, hint: str = "run again with --resume"):
        self.stage, self.seconds = stage, seconds
        self.result: dict[str, Any] | None = None  # the runner's result so far, for the command's JSON
        super().__init__(f"interrupted in stage {stage} after {seconds:.0f} s; {hint}")


def run_stage(cfg: RunConfig, stage: str, all_processes: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Run one stage the way the command line does: a :class:`StageRun`, the stage module's
    ``run(cfg, stage)``, then ``finish``. Returns the metrics. ``all_processes``: every process of a
    distributed launch runs it together (see :class:`StageRun`)."""
    from align3gr_kit.distributed import process_state

    s = get_stage(stage)
    if all_processes:  # the kit's state comes first (the process group gets the config's timeout)
        process_state(cfg)
    run = StageRun(cfg, s.name, all_processes=all_processes)  # takes the lock, cleans leftovers
    try:
        metrics = importlib.import_module(s.module).run(cfg, run, **kwargs)
        run.finish(metrics)
    except KeyboardInterrupt:
        run.abandon()
        # `train` and `tokenize` have no --resume: the same command continues (SFT from its checkpoints)
        raise Interrupted(s.name, time.time() - run.t0, "run the same command again") from None
    except BaseException:
        run.abandon()
        raise
    return metrics


def ensure_stage(cfg: RunConfig, stage: str) -> None:
    """Make ``stage`` (and, first, every upstream stage) current: nothing when it is; a copy of another
    run's identical stage when one exists (as ``run --resume`` does, so a bench or a notebook that
    needs a stage never recomputes what an ablation already made); else run it."""
    s = get_stage(stage)
    with run_lock(cfg):
        for up in s.upstream:
            ensure_stage(cfg, up)
        state, problem = check_stage(cfg, s)
        if state == "current":
            drop_stale_checkpoints(cfg, s)
            return
        if problem:
            print(f"[{s.name}] re-running: {problem}", file=sys.stderr)
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
