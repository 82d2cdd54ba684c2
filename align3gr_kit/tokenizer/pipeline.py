"""The whole token level in one call: features -> SC encoders + RQ-VAEs -> unique user/item SCIDs.

``run_tokenize`` is what stage ``01_tokenize`` (notebook and command line) calls; what it writes is
:class:`align3gr_kit.tokenizer.artifacts.TokenizeArtifacts`.
"""

from __future__ import annotations

import time
import warnings
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from align3gr_kit.config import RunConfig, TokenizerConfig
from align3gr_kit.data.schema import RecDataset
from align3gr_kit.data.split import Split, leave_one_out
from align3gr_kit.encoders.sasrec import (
    load_item_cf,
    mean_item_embedding,
    sasrec_ranks,
    train_sasrec,
)
from align3gr_kit.encoders.semantic import check_texts, semantic_features
from align3gr_kit.metrics import metrics_from_ranks
from align3gr_kit.scid import ScidTable
from align3gr_kit.tokenizer.artifacts import FEATURES, TokenizeArtifacts
from align3gr_kit.tokenizer.sc_encoder import fuse_features
from align3gr_kit.tokenizer.trainer import TokenizerResult, train_dual_tokenizer
from align3gr_kit.tokenizer.unique import append_unique_level, collisions, perplexity, utilisation
from align3gr_kit.utils import resolve_path

@dataclass
class Features:
    """Frozen features of every item and user (``None`` where switched off).

    Attributes:
        item_semantic / user_semantic: ``[n, d_text]`` sentence embeddings (item-only runs: the user's
            is the mean over their training items, no user text is read).
        item_cf / user_cf: ``[n, d_cf]`` collaborative embeddings.
        sasrec_history: SASRec's epoch log when it was trained here.
        sasrec_metrics: ``{"valid": {...}, "test": {...}}`` of that SASRec (full ranking, the
            protocol of ``python -m align3gr_kit baseline sasrec``, which trains the same model).
    """

    item_semantic: np.ndarray | None = None
    user_semantic: np.ndarray | None = None
    item_cf: np.ndarray | None = None
    user_cf: np.ndarray | None = None
    sasrec_history: list | None = None
    sasrec_metrics: dict | None = None

    def fused(self) -> tuple[np.ndarray, np.ndarray]:
        """``(item [n_items, d], user [n_users, d'] or None)``: each block L2-normalised, then concatenated
        (user ``None`` when there is no user block: a catalogue)."""
        users = (self.user_semantic, self.user_cf)
        return fuse_features(self.item_semantic, self.item_cf), \
            fuse_features(*users) if any(u is not None for u in users) else None


def default_cache_dir(cfg: RunConfig, ds: RecDataset) -> Path:
    """Where sentence embeddings are cached by default: ``<runs_dir>/_embeddings/<dataset>/``.

    Files are keyed by a hash of the model name and the texts, so the runs of a batch (ablations,
    seeds) share them and a changed text or model never reads a stale file.
    """
    return cfg.run_dir.parent / "_embeddings" / ds.name


def cf_features(tcfg: TokenizerConfig, ds: RecDataset, split: Split, seed: int,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray, list | None, dict | None]:
    """Collaborative features ``(item [n_items, d], user [n_users, d], sasrec_history, sasrec_metrics)``
    (the last two ``None`` for given embeddings).

    Trains SASRec on the training split (user feature = its representation of the user's training
    history), or loads ``tcfg.cf_embeddings`` (user feature = mean of the user's training items).
    """
    seqs = split.train_sequences
    if tcfg.cf_embeddings:
        warnings.warn(
            f"tokenizer.cf_embeddings={tcfg.cf_embeddings}: using given item CF embeddings whose training data is "
            "unknown; if they were trained on all interactions, validation/test items leak into the SCIDs. "
            "Leave tokenizer.cf_embeddings empty to train SASRec on the training split instead.",
            stacklevel=2,
        )
        item = load_item_cf(str(resolve_path(tcfg.cf_embeddings, must_exist=True)), ds.n_items)
        return item, mean_item_embedding(item, seqs, ds.n_users), None, None
    missing = [u for u in range(ds.n_users) if u not in seqs]
    if missing:
        raise ValueError(f"{ds.name}: user {missing[0]} has no training sequence; the split must cover every user")
    result = train_sasrec(split, ds.n_items, tcfg.sasrec, seed, progress=progress)
    model = result.model
    with torch.no_grad():
        item = model.item_embeddings().float().cpu().numpy()
        user = model.represent([seqs[u].tolist() for u in range(ds.n_users)]).float().cpu().numpy()
    # The CF encoder is the SASRec baseline itself: its scores cost one full ranking per split. The
    # per-user target ranks are kept so that a report can score SASRec on exactly the users a
    # generative model was evaluated on (decode.max_eval_users), without training it again.
    ranks = {name: sasrec_ranks(model, split, name) for name in ("valid", "test")}
    scores: dict = {name: metrics_from_ranks(r) for name, r in ranks.items()}
    scores["ranks"] = ranks  # saved beside the summary (TokenizeArtifacts.sasrec_ranks), not in it
    return item, user, result.history, scores


def build_features(tcfg: TokenizerConfig, ds: RecDataset, split: Split, seed: int,
                   cache_dir: str | Path | None = None, progress: bool = True) -> Features:
    """Frozen semantic and collaborative features as switched on in ``tcfg`` (``cache_dir``: sentence
    embeddings; ``None`` = no cache).

    User text is embedded only for dual SCIDs. Item-only runs (``tokenizer.dual: false``) read no
    user text: the user side that L_U2I and the held-out AUC still need is the user's CF feature and,
    for the text block, the mean of the text embeddings of the user's training items.
    Missing text raises (:func:`check_texts`) before SASRec or any embedding runs.
    """
    if tcfg.use_semantic:
        check_texts(ds, users=tcfg.dual, cf_available=tcfg.use_cf)
    f = Features()
    if tcfg.use_semantic:
        f.item_semantic, f.user_semantic = semantic_features(
            ds, tcfg.semantic_model, cache_dir, users=tcfg.dual, progress=progress)
        if not tcfg.dual and ds.n_users:
            f.user_semantic = mean_item_embedding(f.item_semantic, split.train_sequences, ds.n_users)
    if tcfg.use_cf:
        f.item_cf, f.user_cf, f.sasrec_history, f.sasrec_metrics = cf_features(tcfg, ds, split, seed, progress)
    return f


def training_pairs(split: Split) -> np.ndarray:
    """``[P, 2]`` (user, item) pairs of the training sequences, users ascending, chronological."""
    rows = [np.stack([np.full(len(s), u), s], 1) for u, s in sorted(split.train_sequences.items()) if len(s)]
    return np.concatenate(rows).astype(np.int64)


def code_stats(raw: np.ndarray, resolved: np.ndarray | None, codebook_size: int) -> dict:
    """Collisions before/after resolution, per-level utilisation and perplexity of raw codes."""
    return {
        "collisions_before": collisions(raw),
        "collisions": collisions(resolved if resolved is not None else raw),
        "utilisation": [round(x, 4) for x in utilisation(raw, codebook_size)],
        "perplexity": [round(x, 4) for x in perplexity(raw)],
        "codebook_size": codebook_size,
    }


def run_tokenize(cfg: RunConfig, dataset: RecDataset, split: Split, out_dir: str | Path,
                 cache_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Run the token level end to end and write its artifacts (:class:`TokenizeArtifacts`) into ``out_dir``.

    Args:
        cfg: run config (``cfg.tokenizer``, ``cfg.seed``).
        dataset: the dataset in canonical form; without interactions it is a catalogue, tokenized
            as :func:`tokenize_catalogue` says (no user files, no CF files are written).
        split: its leave-one-out split; only ``train_sequences`` trains anything, ``valid`` steers
            early stopping and the phase switch.
        out_dir: folder for the artifacts (created).
        cache_dir: sentence-embedding cache; ``None`` = :func:`default_cache_dir`.
        progress: progress bars.
    Returns:
        Summary: ``item_collisions`` (after resolution, always 0), ``user_collisions``,
        ``item_collisions_before``, ``user_collisions_before``, ``item_utilisation`` /
        ``user_utilisation`` and ``item_perplexity`` / ``user_perplexity`` (per level, raw codes),
        ``item_codebook_size`` / ``user_codebook_size``, ``item_levels`` / ``user_levels`` (SCID
        length), ``u2i_auc`` (held-out AUC of the final SC embeddings; ``None`` for a catalogue),
        ``phase_switch_epoch``, ``epochs``, ``seconds``. User entries are ``None`` for item-only runs.
    """
    t0 = time.time()
    out = Path(out_dir)
    tcfg = cfg.tokenizer
    catalogue = dataset.interactions.empty
    if catalogue:
        tcfg = catalogue_config(tcfg, dataset)
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir(cfg, dataset)
    feats = build_features(tcfg, dataset, split, cfg.seed, cache_dir, progress)
    item_x, user_x = feats.fused()
    heldout = None if catalogue else split.valid[["user_id", "target"]].to_numpy(dtype=np.int64)
    result: TokenizerResult = train_dual_tokenizer(item_x, user_x, None if catalogue else training_pairs(split),
                                                   heldout, tcfg, cfg.seed, progress)
    model = result.model
    device = model.item_rq.quantizer.codebooks.device
    items_t = torch.as_tensor(item_x, device=device)
    users_t = torch.as_tensor(user_x, device=device) if user_x is not None else None
    item_raw = model.codes(items_t, "item").cpu().numpy()
    item_codes = append_unique_level(item_raw)
    item_stats = code_stats(item_raw, item_codes, model.item_codebook_size)
    art = TokenizeArtifacts(
        items=ScidTable(item_codes, "item"), users=None, item_raw=item_raw, user_raw=None,
        item_sc=model.embed(items_t, "item").cpu().numpy(),
        user_sc=model.embed(users_t, "user").cpu().numpy() if users_t is not None else None,
        history=result.history, summary={},
        item_codebooks=model.item_rq.quantizer.codebooks.detach().cpu().numpy(),
        features={n: getattr(feats, n) for n in FEATURES if getattr(feats, n) is not None},
        sasrec_history=feats.sasrec_history, state_dict=model.state_dict(),
        sasrec_ranks=(feats.sasrec_metrics or {}).get("ranks"),
    )
    user_stats: dict = {k: None for k in ("collisions_before", "collisions", "utilisation", "perplexity", "codebook_size")}
    user_levels = None
    if model.user_rq is not None:
        art.user_raw = model.codes(users_t, "user").cpu().numpy()
        user_codes = append_unique_level(art.user_raw) if tcfg.unique_users else art.user_raw
        art.users = ScidTable(user_codes, "user")
        art.user_codebooks = model.user_rq.quantizer.codebooks.detach().cpu().numpy()
        user_stats = code_stats(art.user_raw, user_codes, model.user_codebook_size)
        user_levels = int(user_codes.shape[1])

    summary = {
        "n_items": dataset.n_items,
        "n_users": dataset.n_users,
        "item_collisions": item_stats["collisions"],
        "user_collisions": user_stats["collisions"],
        "item_collisions_before": item_stats["collisions_before"],
        "user_collisions_before": user_stats["collisions_before"],
        "item_utilisation": item_stats["utilisation"],
        "user_utilisation": user_stats["utilisation"],
        "item_perplexity": item_stats["perplexity"],
        "user_perplexity": user_stats["perplexity"],
        "item_codebook_size": item_stats["codebook_size"],
        "user_codebook_size": user_stats["codebook_size"],
        "item_levels": int(item_codes.shape[1]),
        "user_levels": user_levels,
        "u2i_auc": None if catalogue else round(result.history[-1]["auc"], 4),
        "phase_switch_epoch": result.switch_epoch,
        "epochs": len(result.history),
        "sasrec": {k: v for k, v in feats.sasrec_metrics.items() if k != "ranks"} if feats.sasrec_metrics else None,
        "seconds": round(time.time() - t0, 2),
    }
    art.summary = summary
    art.save(out)
    return summary


def catalogue_config(tcfg: TokenizerConfig, dataset: RecDataset) -> TokenizerConfig:
    """The settings a catalogue (items, no interactions) is tokenized with: text only, items only.

    With nobody to learn from there is no CF feature, no U2I alignment and no user SCID; those
    switches are turned off with a one-line notice (a warning) when ``tcfg`` has them on.

    Raises:
        ValueError: ``tokenizer.use_semantic`` is off or the items have no text (nothing else can
            describe an item without interactions), before anything is embedded.
    """
    src = dataset.source or dataset.name
    if not tcfg.use_semantic:
        raise ValueError(f"{src}: a catalogue without interactions can only be tokenized from item text; set "
                         "tokenizer.use_semantic: true (or give the interactions file for CF SCIDs)")
    if not dataset.has_item_text:
        raise ValueError(f"{src}: a catalogue without interactions is tokenized from item text, and these items "
                         "have no title or description; give the items text, or add the interactions file")
    on = [name for name in ("use_cf", "u2i_align", "dual") if getattr(tcfg, name)]
    if on:
        warnings.warn(f"{dataset.name}: no interactions (a catalogue): {', '.join('tokenizer.' + n for n in on)} "
                      "switched off; item SCIDs come from item text alone", stacklevel=3)
    return dataclasses.replace(tcfg, use_cf=False, u2i_align=False, dual=False)


def tokenize_catalogue(dataset: RecDataset, tcfg: TokenizerConfig, seed: int, out_dir: str | Path,
                       cache_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Item SCIDs of a catalogue (items with text, no interactions): an RQ-VAE over the text embeddings.

    The settings are :func:`catalogue_config`'s. The SC encoder is then the identity (as for Table 3
    "w/o U-I"), so this is TIGER's item tokenizer: k-means-initialised RQ-VAE codes of the sentence
    embeddings (``phase2_epochs`` epochs over batches of items), made unique by
    :func:`align3gr_kit.tokenizer.unique.append_unique_level`.

    Args:
        dataset: the catalogue (``items`` with a title or description; its interactions are ignored).
        tcfg: tokenizer settings (sizes, epochs).
        seed: seeds k-means, initialisation and batch order.
        out_dir: folder for the artifacts: those of :func:`run_tokenize` without the user files and
            without ``item_cf.npy``/``sasrec_history.json``.
        cache_dir: sentence-embedding cache; ``None`` = :func:`default_cache_dir`.
        progress: progress bars.
    Returns:
        The summary of :func:`run_tokenize` (user entries, ``u2i_auc`` and ``sasrec`` ``None``).
    """
    items_only = dataclasses.replace(dataset, users=dataset.users.iloc[:0], interactions=dataset.interactions.iloc[:0])
    cfg = RunConfig(seed=seed, tokenizer=tcfg)
    return run_tokenize(cfg, items_only, leave_one_out(items_only), out_dir, cache_dir, progress)
