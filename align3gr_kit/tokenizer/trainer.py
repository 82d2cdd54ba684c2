"""Joint training of the SC encoders and the user/item RQ-VAEs (Align3GR token level).

``L = alpha * L_U2I + gamma * (L_UserRQ + L_ItemRQ)`` in two phases:

1. ``alpha = 1, gamma = 0``: only the SC encoders learn, aligning users with the items they bought.
   After every epoch the U2I AUC on held-out pairs (each user's validation item against random
   items) is measured; the phase ends when it has not improved for ``phase1_patience`` epochs (or after
   ``phase1_max_epochs``), and the SC encoders go back to their best-AUC weights.
2. ``alpha = phase2_alpha, gamma = phase2_gamma`` (0.1, 1): the RQ-VAEs start from k-means codebooks and train
   with the SC encoders, which keep a little of the alignment loss so the codes stay aligned.

With ``u2i_align`` off (Table 3 "w/o U-I") there is no phase 1 and ``alpha = 0``; the SC encoders
are then identities (see :class:`SCEncoder`). With ``dual`` off (item-only) there is no user RQ-VAE.
Held-out pairs only steer the schedule; no gradient ever comes from them.

A catalogue (items, no users, no interactions: ``user_feat``, ``pairs`` and ``heldout`` all ``None``)
trains the item RQ-VAE alone over batches of items; it needs ``dual`` and ``u2i_align`` off.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from align3gr_kit.config import TokenizerConfig
from align3gr_kit.tokenizer.losses import heldout_negatives, u2i_auc, u2i_loss
from align3gr_kit.tokenizer.rqvae import RQVAE, scaled_codebook_size
from align3gr_kit.tokenizer.sc_encoder import SCEncoder
from align3gr_kit.tokenizer.unique import collisions

MIN_AUC_GAIN = 1e-4  # an AUC change below this is noise, not an improvement


class DualTokenizer(nn.Module):
    """The trainable part of dual SCID tokenization.

    Attributes:
        item_sc / user_sc: SC encoders (features -> unit-norm SC embeddings).
        item_rq: the item RQ-VAE.
        user_rq: the user RQ-VAE, ``None`` for item-only tokenization.
    """

    def __init__(self, item_in: int, user_in: int, tcfg: TokenizerConfig, n_items: int, n_users: int):
        super().__init__()
        identity = not tcfg.u2i_align
        if identity and item_in != user_in:
            raise ValueError(
                f"without U-I alignment the SC embedding is the fused feature itself, so users ({user_in}-d) and "
                f"items ({item_in}-d) must have the same feature size; use the same encoders for both sides"
            )
        self.item_sc = SCEncoder(item_in, tcfg.hidden_dim, tcfg.sc_dim, identity)
        self.user_sc = SCEncoder(user_in, tcfg.hidden_dim, tcfg.sc_dim, identity)
        self.item_codebook_size = codebook_size_for(n_items, tcfg)
        self.user_codebook_size = codebook_size_for(n_users, tcfg) if tcfg.dual else None
        self.item_rq = RQVAE(self.item_sc.out_dim, tcfg.hidden_dim, tcfg.code_dim, tcfg.levels,
                             self.item_codebook_size, tcfg.rq_commitment)
        self.user_rq = RQVAE(self.user_sc.out_dim, tcfg.hidden_dim, tcfg.code_dim, tcfg.levels,
                             self.user_codebook_size, tcfg.rq_commitment) if tcfg.dual else None

    @torch.no_grad()
    def embed(self, feats: torch.Tensor, side: str, batch_size: int = 8192) -> torch.Tensor:
        """SC embeddings ``[N, sc_dim]`` of all ``feats [N, in]`` of ``side`` (``item``/``user``)."""
        enc = self.item_sc if side == "item" else self.user_sc
        return torch.cat([enc(feats[s:s + batch_size]) for s in range(0, len(feats), batch_size)])

    @torch.no_grad()
    def codes(self, feats: torch.Tensor, side: str) -> torch.Tensor:
        """RQ codes ``[N, levels]`` (before collision resolution)."""
        rq = self.item_rq if side == "item" else self.user_rq
        if rq is None:
            raise ValueError("tokenizer.dual is off: there is no user RQ-VAE, hence no user codes")
        return rq.codes(self.embed(feats, side))


def codebook_size_for(n: int, tcfg: TokenizerConfig) -> int:
    """``tcfg.codebook_size``, or its scaled-down value for ``n`` entities when ``auto_scale``."""
    return scaled_codebook_size(n, tcfg.levels, tcfg.codebook_size) if tcfg.auto_scale else tcfg.codebook_size


@dataclass
class TokenizerResult:
    """A trained :class:`DualTokenizer` and its log.

    Attributes:
        model: the trained model (eval mode).
        history: one dict per epoch: ``epoch``, ``phase``, ``alpha``, ``gamma``, ``loss``, ``u2i``,
            ``item_rq``, ``user_rq``, ``auc``, ``item_collisions``, ``user_collisions``, ``seconds``
            (``None`` where a quantity is not defined in that phase).
        switch_epoch: the first epoch of phase 2 (1 when U-I alignment is off).
        best_auc: the best held-out AUC of phase 1 (the AUC of the kept SC encoders).
    """

    model: DualTokenizer
    history: list[dict] = field(default_factory=list)
    switch_epoch: int = 1
    best_auc: float | None = None


def train_dual_tokenizer(
    item_feat: np.ndarray,
    user_feat: np.ndarray | None,
    pairs: np.ndarray | None,
    heldout: np.ndarray | None,
    tcfg: TokenizerConfig,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> TokenizerResult:
    """Train the SC encoders and RQ-VAEs with the two-phase schedule (module docstring).

    Args:
        item_feat: ``[n_items, d_i]`` fused item features.
        user_feat: ``[n_users, d_u]`` fused user features; ``None`` for a catalogue.
        pairs: ``[P, 2]`` training (user, item) interactions (from the training split only); ``None``
            for a catalogue (batches of items, no U2I loss).
        heldout: ``[H, 2]`` held-out (user, item) pairs for the AUC (the validation targets); ``None``
            for a catalogue (no AUC: ``auc`` is ``None`` in the history).
        tcfg: tokenizer settings (epochs, weights, sizes).
        seed: seeds initialisation, batch order, k-means and the AUC negatives.
        progress: progress bar over epochs.
        device: torch device; ``None`` = CUDA when available.
    Returns:
        :class:`TokenizerResult`.
    """
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    items = torch.as_tensor(np.asarray(item_feat, dtype=np.float32), device=device)
    catalogue = pairs is None
    if catalogue:
        if user_feat is not None or heldout is not None or tcfg.dual or tcfg.u2i_align:
            raise ValueError("a catalogue (pairs=None) trains item SCIDs only: pass user_feat=None, heldout=None "
                             "and set tokenizer.dual: false and tokenizer.u2i_align: false")
        # Batches of item ids: one column, read like the item column of (user, item) pairs.
        pairs, users = np.arange(len(items), dtype=np.int64)[:, None], None
        model = DualTokenizer(items.shape[1], items.shape[1], tcfg, len(items), 0).to(device)
    else:
        users = torch.as_tensor(np.asarray(user_feat, dtype=np.float32), device=device)
        pairs = np.asarray(pairs, dtype=np.int64)
        heldout = np.asarray(heldout, dtype=np.int64)
        if len(pairs) == 0 or len(heldout) == 0:
            raise ValueError("the tokenizer needs training pairs and held-out pairs (check the split)")
        model = DualTokenizer(items.shape[1], users.shape[1], tcfg, len(items), len(users)).to(device)
        negatives = heldout_negatives(heldout[:, 0], heldout[:, 1], len(items), 20, seed)

    def auc() -> float | None:
        if catalogue:
            return None
        model.eval()
        value = u2i_auc(model.embed(users, "user"), model.embed(items, "item"), heldout[:, 0], heldout[:, 1], negatives)
        model.train()
        return value

    def start_phase2() -> torch.optim.Optimizer:
        model.eval()
        model.item_rq.kmeans_init(model.embed(items, "item"), seed)
        if model.user_rq is not None:
            model.user_rq.kmeans_init(model.embed(users, "user"), seed)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=tcfg.lr)

    phase = 1 if tcfg.u2i_align else 2
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr) if phase == 1 else start_phase2()
    total_epochs = (tcfg.phase1_max_epochs if phase == 1 else 0) + tcfg.phase2_epochs
    best_auc, best_state, bad, switch_epoch, history = -1.0, None, 0, 1, []
    phase2_done = 0
    bar = tqdm(total=total_epochs, desc="SC tokenizer", disable=not progress)
    epoch = 0
    while phase == 1 or phase2_done < tcfg.phase2_epochs:
        epoch += 1
        t0 = time.time()
        alpha, gamma = (1.0, 0.0) if phase == 1 else (tcfg.phase2_alpha if tcfg.u2i_align else 0.0, tcfg.phase2_gamma)
        sums = {"loss": 0.0, "u2i": 0.0, "item_rq": 0.0, "user_rq": 0.0}
        order = rng.permutation(len(pairs))
        n_batches = 0
        model.train()
        for start in range(0, len(order), tcfg.batch_size):
            b = torch.as_tensor(pairs[order[start:start + tcfg.batch_size]], device=device)
            loss = items.new_zeros(())
            if alpha > 0:
                l_u2i = u2i_loss(model.user_sc(users[b[:, 0]]), model.item_sc(items[b[:, 1]]), tcfg.temperature)
                loss = loss + alpha * l_u2i
                sums["u2i"] += l_u2i.item()
            if gamma > 0:
                # Each entity of the batch counts once in its RQ loss (popular items are not over-weighted).
                l_item = model.item_rq(model.item_sc(items[torch.unique(b[:, -1])])).loss
                loss = loss + gamma * l_item
                sums["item_rq"] += l_item.item()
                if model.user_rq is not None:
                    l_user = model.user_rq(model.user_sc(users[torch.unique(b[:, 0])])).loss
                    loss = loss + gamma * l_user
                    sums["user_rq"] += l_user.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums["loss"] += loss.item()
            n_batches += 1
        value = auc()
        row = {"epoch": epoch, "phase": phase, "alpha": alpha, "gamma": gamma,
               "loss": sums["loss"] / n_batches,
               "u2i": sums["u2i"] / n_batches if alpha > 0 else None,
               "item_rq": sums["item_rq"] / n_batches if gamma > 0 else None,
               "user_rq": sums["user_rq"] / n_batches if gamma > 0 and model.user_rq is not None else None,
               "auc": value, "item_collisions": None, "user_collisions": None}
        if phase == 2:
            model.eval()
            row["item_collisions"] = collisions(model.codes(items, "item").cpu().numpy())
            if model.user_rq is not None:
                row["user_collisions"] = collisions(model.codes(users, "user").cpu().numpy())
            phase2_done += 1
        row["seconds"] = time.time() - t0
        history.append(row)
        bar.update(1)
        bar.set_postfix(phase=phase, loss=f"{row['loss']:.4f}", auc="-" if value is None else f"{value:.4f}")
        if phase == 1:
            if value > best_auc + MIN_AUC_GAIN:
                best_auc, best_state, bad = value, copy.deepcopy(model.state_dict()), 0
            else:
                bad += 1
            if bad >= tcfg.phase1_patience or epoch >= tcfg.phase1_max_epochs:
                model.load_state_dict(best_state)
                phase, switch_epoch = 2, epoch + 1
                opt = start_phase2()
                bar.total = epoch + tcfg.phase2_epochs
                bar.refresh()
    bar.close()
    model.eval()
    return TokenizerResult(model, history, switch_epoch, best_auc if tcfg.u2i_align else None)
