"""SC encoders: the MLPs that fuse [semantic, collaborative] features into one SC embedding.

One encoder for users and one for items (Align3GR, token level). Their outputs are L2-normalised:
L_U2I compares them by cosine, and a fixed scale keeps the RQ losses in phase 2 from being lowered
by simply shrinking the embeddings.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def fuse_features(*parts: np.ndarray | None) -> np.ndarray:
    """Concatenate feature blocks, each row L2-normalised first so that no block dominates by scale.

    Args:
        parts: ``[n, d_k]`` arrays (``None`` entries are skipped), same ``n``.
    Returns:
        ``[n, sum d_k]`` float32.
    """
    blocks = [p for p in parts if p is not None]
    if not blocks:
        raise ValueError("no features to fuse: enable tokenizer.use_semantic or tokenizer.use_cf")
    n = {len(b) for b in blocks}
    if len(n) != 1:
        raise ValueError(f"feature blocks have different row counts {sorted(n)}")
    out = []
    for b in blocks:
        b = np.asarray(b, dtype=np.float32)
        out.append(b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out, axis=1)


class SCEncoder(nn.Module):
    """``[n, in_dim]`` features -> ``[n, out_dim]`` unit-norm SC embeddings.

    Args:
        in_dim: fused feature size.
        hidden_dim: hidden width.
        out_dim: SC embedding size.
        identity: no trainable layers; the SC embedding is the (normalised) input itself. Used when
            U-I alignment is off (Table 3 "w/o U-I"): with no L_U2I there is no signal to train the
            fusion, and an MLP trained by the RQ losses alone can collapse every input to one point
            (a perfectly quantisable, useless embedding); the RQ-VAE's own encoder then does the work,
            as in TIGER / LC-Rec.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 256, out_dim: int = 64, identity: bool = False):
        super().__init__()
        self.identity = identity
        self.out_dim = in_dim if identity else out_dim
        self.net = nn.Identity() if identity else nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)
