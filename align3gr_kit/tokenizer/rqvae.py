"""RQ-VAE: an MLP auto-encoder whose latent is quantised by residual quantisation (Lee et al., 2022;
TIGER, LC-Rec). One per side (users, items) in Align3GR.

Level ``l`` picks the code nearest to the current residual ``r_l`` (``r_0 = z``) and passes on
``r_{l+1} = r_l - e_l``, so ``z = sum_l e_l + r_L`` exactly. The loss is

    ||x - dec(z_q)||^2  +  sum_l ( ||sg[r_l] - e_l||^2  +  beta * ||r_l - sg[e_l]||^2 )

(reconstruction, codebook, commitment), with the straight-through estimator
``z_q = z + sg[sum_l e_l - z]`` carrying the decoder's gradient to the encoder. Codebooks start
from k-means of the residuals (sklearn), level by level, which avoids dead codes at the start.

Hand-written: no maintained library on this stack provides residual VQ with k-means initialisation
in the form the method needs (per-level codes, codebook + commitment losses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def scaled_codebook_size(n: int, levels: int, max_size: int = 256, min_size: int = 8) -> int:
    """Codes per level for a catalogue of ``n`` entities (``tokenizer.auto_scale``).

    ``K = min(max_size, max(min_size, 2 ** (ceil(log2(n ** (1 / levels))) + 1)))``

    Why: a balanced code tree separates ``n`` entities with about ``n ** (1/levels)`` branches per
    level. RQ codes follow the density of the embeddings, not counts, so usage is uneven; rounding
    up to a power of two and doubling leaves that slack and keeps collisions rare. Going far beyond
    it (256 codes for 500 items) leaves most codes unused or used by one item, splits semantic
    clusters at the first level, and gives the LLM many rare tokens to learn. ``min_size`` keeps
    tiny test catalogues meaningful. Examples (3 levels): 500 items -> 16, 1,682 -> 32,
    9,922 -> 64, 100k -> 128, 10M -> 256 (the paper's size).
    """
    if n < 1 or levels < 1:
        raise ValueError(f"need n >= 1 and levels >= 1, got n={n}, levels={levels}")
    k = 2 ** (math.ceil(math.log2(max(n, 2) ** (1.0 / levels))) + 1)
    return int(min(max_size, max(min_size, k)))


@dataclass
class Quantized:
    """Output of :class:`ResidualQuantizer`.

    Attributes:
        z_q: ``[B, D]`` straight-through quantised latent (value = sum of chosen codes).
        quantized: ``[B, D]`` sum of the chosen code vectors (gradient reaches the codebooks).
        codes: ``[B, L]`` long, chosen code per level.
        residual: ``[B, D]`` what is left after the last level (``z - quantized``).
        codebook_loss: scalar, ``sum_l ||sg[r_l] - e_l||^2`` (mean over the batch and dims).
        commitment_loss: scalar, ``sum_l ||r_l - sg[e_l]||^2`` (before the weight ``beta``).
    """

    z_q: torch.Tensor
    quantized: torch.Tensor
    codes: torch.Tensor
    residual: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


class ResidualQuantizer(nn.Module):
    """``levels`` codebooks of ``codebook_size`` vectors of size ``dim`` (parameter ``[L, K, D]``)."""

    def __init__(self, levels: int = 3, codebook_size: int = 256, dim: int = 32):
        super().__init__()
        self.levels, self.codebook_size, self.dim = levels, codebook_size, dim
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, dim) * (1.0 / math.sqrt(dim)))

    def forward(self, z: torch.Tensor) -> Quantized:
        """Quantise ``z [B, D]`` level by level (nearest code in Euclidean distance)."""
        residual = z
        quantized = torch.zeros_like(z)
        codes, cb_loss, commit = [], z.new_zeros(()), z.new_zeros(())
        for lv in range(self.levels):
            book = self.codebooks[lv]
            idx = torch.cdist(residual.detach(), book.detach()).argmin(dim=1)
            e = book[idx]
            cb_loss = cb_loss + F.mse_loss(e, residual.detach())
            commit = commit + F.mse_loss(residual, e.detach())
            quantized = quantized + e
            # Detached: each level's codebook is fitted to its own residual, not pulled by later levels.
            residual = residual - e.detach()
            codes.append(idx)
        z_q = z + (quantized - z).detach()
        return Quantized(z_q, quantized, torch.stack(codes, dim=1), residual, cb_loss, commit)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the code vectors named by ``codes [B, L]``: ``[B, D]``."""
        return sum(self.codebooks[lv][codes[:, lv]] for lv in range(self.levels))

    @torch.no_grad()
    def kmeans_init(self, z: torch.Tensor, seed: int = 0) -> None:
        """Set each level's codebook to the k-means centres of that level's residuals of ``z [N, D]``.

        With fewer distinct residuals than codes, k-means runs with as many clusters as there are
        distinct points and the remaining codes copy random data points plus small noise.
        """
        from sklearn.cluster import KMeans

        residual = z.detach().cpu().double().numpy()
        rng = np.random.default_rng(seed)
        for lv in range(self.levels):
            k = self.codebook_size
            n_distinct = len(np.unique(residual.round(8), axis=0))
            kk = min(k, n_distinct)
            km = KMeans(n_clusters=kk, n_init=3, random_state=seed + lv).fit(residual)
            centres = km.cluster_centers_
            if kk < k:
                extra = residual[rng.integers(0, len(residual), k - kk)]
                centres = np.concatenate([centres, extra + rng.normal(0, 1e-3, extra.shape)])
            self.codebooks.data[lv] = torch.as_tensor(centres, dtype=self.codebooks.dtype, device=self.codebooks.device)
            residual = residual - centres[km.labels_]


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers with GELU between them (none after the last)."""
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.GELU()]
    return nn.Sequential(*layers[:-1])


@dataclass
class RQOutput:
    """Output of :class:`RQVAE`: ``recon [B, in_dim]``, ``codes [B, L]``, the total ``loss`` and its parts."""

    recon: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    recon_loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


class RQVAE(nn.Module):
    """Encoder MLP -> residual quantiser -> decoder MLP.

    Args:
        in_dim: input size (the SC embedding).
        hidden_dim: hidden width of encoder and decoder.
        code_dim: latent / code vector size.
        levels: quantisation levels.
        codebook_size: codes per level.
        commitment: ``beta``, the weight of the commitment loss.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 256, code_dim: int = 32, levels: int = 3,
                 codebook_size: int = 256, commitment: float = 0.25):
        super().__init__()
        self.encoder = mlp([in_dim, hidden_dim, code_dim])
        self.quantizer = ResidualQuantizer(levels, codebook_size, code_dim)
        self.decoder = mlp([code_dim, hidden_dim, in_dim])
        self.commitment = commitment

    def forward(self, x: torch.Tensor) -> RQOutput:
        """Reconstruct ``x [B, in_dim]`` through the quantised latent; loss as in the module docstring."""
        q = self.quantizer(self.encoder(x))
        recon = self.decoder(q.z_q)
        recon_loss = F.mse_loss(recon, x)
        loss = recon_loss + q.codebook_loss + self.commitment * q.commitment_loss
        return RQOutput(recon, q.codes, loss, recon_loss, q.codebook_loss, q.commitment_loss)

    @torch.no_grad()
    def codes(self, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        """Codes ``[N, L]`` of inputs ``x [N, in_dim]`` (no gradient)."""
        out = [self.quantizer(self.encoder(x[s:s + batch_size])).codes for s in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.quantizer.levels, dtype=torch.long)

    @torch.no_grad()
    def kmeans_init(self, x: torch.Tensor, seed: int = 0) -> None:
        """Initialise the codebooks by k-means over the encoder's latents of ``x [N, in_dim]``."""
        self.quantizer.kmeans_init(self.encoder(x), seed)
