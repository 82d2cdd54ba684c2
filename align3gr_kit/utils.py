"""Small shared helpers: seeding, atomic writes, project paths, versions."""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) from one integer; 0 is a valid seed."""
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch

        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    except ImportError:  # torch is a dependency; the data layer alone does not need it
        pass


def project_root() -> Path:
    """The repository root (the folder holding pyproject.toml), or the current directory."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


def resolve_path(path: str | os.PathLike, must_exist: bool = False) -> Path:
    """Resolve a user path: absolute as is; relative against the project root first, then the current
    directory. Root first, so that a path in a config (``tokenizer.cf_embeddings``, ``runs_dir``...)
    means the same file under ``run`` (whose kernels work in ``notebooks/``), the CLI and JupyterLab."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for base in (project_root(), Path.cwd()):
        if (base / p).exists():
            return (base / p).resolve()
    if must_exist:
        raise FileNotFoundError(f"{path}: not found relative to {Path.cwd()} or {project_root()}")
    return (project_root() / p).resolve()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file, and a failure leaves the previous file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented strict JSON, atomically.

    A float that is NaN or infinite (a metric that could not be computed) is written as ``null``:
    ``NaN``/``Infinity`` are not JSON, and strict readers (``jq``, JavaScript, ``json.loads`` with
    ``parse_constant``) refuse the file. Where a value may be missing, the writer says why beside it
    (e.g. stage 02's ``item_code_category_nmi_reason``). numpy scalars/arrays and paths are converted.
    """
    text = json.dumps(_strict(obj), indent=2, sort_keys=False, allow_nan=False, default=_json_default)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return Path(path)


def _strict(o: Any) -> Any:
    """``o`` with every non-finite float (numpy ones and those inside arrays too) replaced by None."""
    if isinstance(o, dict):
        return {k: _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    if isinstance(o, np.ndarray):
        return _strict(o.tolist())
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def git_commit() -> str | None:
    """The current git commit of the project, or None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour the results depend on."""
    from importlib import metadata

    import align3gr_kit

    names = ["torch", "transformers", "peft", "trl", "accelerate", "datasets",
             "sentence-transformers", "numpy", "pandas", "scikit-learn", "umap-learn"]
    versions = {"align3gr-kit": align3gr_kit.__version__}
    for n in names:
        try:
            versions[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            versions[n] = "not installed"
    import platform

    versions["python"] = platform.python_version()
    return versions


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix units (AMX tiles or AVX512-BF16).

    ``torch.backends.cpu.get_cpu_capability()`` only says "AVX512", so the private probes of
    ``torch.cpu`` are used (present in torch 2.13; absent ones count as "no"). Here, not in
    :mod:`align3gr_kit.model.precision` (which decides with it), so that :func:`machine_info` needs
    no import of the model package.
    """
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def machine_info() -> str:
    """The machine a time was measured on, in one line: cores, CPU model, the vector instructions
    torch's CPU kernels use (``AVX2``, ``AVX512``, ``AMX``...) and the GPU if one is visible. The same
    SmolLM2 SFT step (ml-100k, 16 x 256 tokens) took 8.4 s on one 2-core machine of this workplace and
    20.9 s on another (AVX2), so a stage time means little without it. A CPU with bf16 units (AMX or
    AVX512-BF16) is named as such: there ``model.dtype: auto`` trains in bf16 autocast, elsewhere in fp32,
    so the machine also says the precision a row was trained in."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = f"{os.cpu_count()} cores, {cpu}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    if cpu_supports_bf16():  # model.dtype auto trains in bf16 autocast here, in fp32 on CPUs without
        out += ", bf16 units (auto = bf16 autocast)"
    if torch.cuda.is_available():
        out += f", GPU {torch.cuda.get_device_name(0)}"
    return out
