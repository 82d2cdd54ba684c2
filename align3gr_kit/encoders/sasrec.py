"""Collaborative encoder: SASRec (Kang & McAuley, 2018) trained on the training split only.

The model is the usual one: item + learned position embeddings, a causal Transformer encoder
(``torch.nn.TransformerEncoder``, post-LN, GELU, as in RecBole's SASRec), and the item embedding
matrix reused as the output layer; the next-item objective is a full softmax cross-entropy at every
position of every training window (RecBole's ``loss_type=CE``).

Leakage guard: training windows are cut from ``Split.train_sequences`` (``s[:n-2]`` per user), so a
user's validation and test items are never an input or a target. Validation targets are used only
to pick the best epoch (early stopping on NDCG@10), as every sequential-recommendation baseline does.
The softmax runs over the items that occur in the training sequences: an item seen only as a
held-out target gets no gradient at all (its row stays at its initial value), which both makes the
guard testable and keeps the model from learning "this item is never bought" from data it must
not see. On k-core data (every item has several interactions) this set is the whole catalogue.

Ranking for evaluation is always over all items (the protocol: full ranking).
"""

from __future__ import annotations

import copy
import pickle
import pickletools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from align3gr_kit.config import SASRecParams
from align3gr_kit.data.split import Split
from align3gr_kit.errors import DataError
from align3gr_kit.metrics import metrics_from_ranks, topk_from_scores


class SASRec(nn.Module):
    """Self-attentive sequential recommender.

    Item ids are shifted by one inside the model so that ``0`` can be the padding token;
    public methods take and return the dataset's 0-based item ids.
    """

    def __init__(self, n_items: int, dim: int = 64, layers: int = 2, heads: int = 2,
                 dropout: float = 0.2, max_len: int = 20):
        super().__init__()
        if dim % heads:
            raise ValueError(f"tokenizer.sasrec.dim ({dim}) must be divisible by tokenizer.sasrec.heads ({heads})")
        self.n_items, self.max_len = n_items, max_len
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, layer_norm_eps=1e-12)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # RecBole's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden states of right-padded windows.

        Args:
            seqs: ``[B, L]`` long, item id + 1 (``0`` = padding after the real items), ``L <= max_len``.
        Returns:
            ``[B, L, dim]``; position ``t`` has seen items ``0..t`` only.
        """
        L = seqs.shape[1]
        pos = torch.arange(L, device=seqs.device)
        x = self.drop(self.norm(self.item_emb(seqs) + self.pos_emb(pos)[None]))
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=seqs.device), diagonal=1)
        # Right padding keeps position 0 real, so no query row is fully masked (no NaNs).
        return self.encoder(x, mask=causal, src_key_padding_mask=seqs == 0)

    def item_embeddings(self) -> torch.Tensor:
        """``[n_items, dim]`` item embedding matrix (row ``i`` = item ``i``)."""
        return self.item_emb.weight[1:]

    def represent(self, histories: list, batch_size: int = 1024) -> torch.Tensor:
        """User representations: the hidden state after each history's last item.

        Args:
            histories: ``B`` lists of 0-based item ids, oldest first (the last ``max_len`` are used).
        Returns:
            ``[B, dim]`` float tensor on the model's device.
        """
        device = self.item_emb.weight.device
        out = []
        for start in range(0, len(histories), batch_size):
            chunk = histories[start:start + batch_size]
            seqs, lengths = pad_histories(chunk, self.max_len)
            seqs, lengths = seqs.to(device), lengths.to(device)
            h = self(seqs)
            out.append(h[torch.arange(len(chunk), device=device), lengths - 1])
        return torch.cat(out) if out else torch.zeros(0, self.item_emb.embedding_dim, device=device)

    @torch.no_grad()
    def scores(self, histories: list, batch_size: int = 1024) -> torch.Tensor:
        """Scores of every item for each history: ``[B, n_items]`` float (eval mode, no dropout)."""
        was_training = self.training
        self.eval()
        out = self.represent(histories, batch_size) @ self.item_embeddings().T
        self.train(was_training)
        return out

    @torch.no_grad()
    def target_ranks(self, histories: list, targets, batch_size: int = 1024) -> np.ndarray:
        """0-based rank of each target among all items (full ranking), ties broken by lower item id.

        Equivalent to ranking with :func:`align3gr_kit.metrics.topk_from_scores` and locating the
        target, but linear in the catalogue (no sort), which matters at 25k users x 10k items.

        Returns:
            ``[B]`` int array, for :func:`align3gr_kit.metrics.metrics_from_ranks`.
        """
        targets = torch.tensor(np.asarray(targets), dtype=torch.long)
        ids = torch.arange(self.n_items)
        out = []
        for start in range(0, len(histories), batch_size):
            s = self.scores(histories[start:start + batch_size], batch_size).float().cpu()
            t = targets[start:start + batch_size]
            st = s.gather(1, t[:, None])
            ahead = (s > st) | ((s == st) & (ids[None] < t[:, None]))
            out.append(ahead.sum(1))
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)

    @torch.no_grad()
    def topk(self, histories: list, k: int = 10, batch_size: int = 1024) -> np.ndarray:
        """Top-``k`` item ids over the whole catalogue for each history: ``[B, k]`` int array."""
        out = [topk_from_scores(self.scores(histories[start:start + batch_size], batch_size).float().cpu().numpy(), k)
               for start in range(0, len(histories), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def sasrec_ranks(model: "SASRec", split: Split, which: str) -> np.ndarray:
    """0-based full-ranking rank of each ``split.valid``/``split.test`` row's target, in row order."""
    samples = split.samples(which)
    with torch.no_grad():
        return model.target_ranks(samples.history.tolist(), samples.target.to_numpy())


def split_metrics(model: "SASRec", split: Split, which: str) -> dict[str, float]:
    """Recall@{5,10} / NDCG@{5,10} of ``model`` on ``split.valid`` or ``split.test`` (full ranking):
    the SASRec baseline's scores, also reported by the tokenizer whose CF encoder it is."""
    return metrics_from_ranks(sasrec_ranks(model, split, which))


def pad_histories(histories: list, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad the last ``max_len`` items of each history, ids shifted by one.

    Returns:
        ``(seqs [B, L] long, lengths [B] long)`` with ``L = min(max_len, longest history)``.
    """
    if any(len(h) == 0 for h in histories):
        raise ValueError("SASRec needs at least one history item per user (leave-one-out guarantees one)")
    cut = [list(h)[-max_len:] for h in histories]
    L = max(len(h) for h in cut)
    seqs = torch.zeros(len(cut), L, dtype=torch.long)
    for r, h in enumerate(cut):
        seqs[r, : len(h)] = torch.as_tensor(h, dtype=torch.long) + 1
    return seqs, torch.tensor([len(h) for h in cut], dtype=torch.long)


def training_windows(train_sequences: dict[int, np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut each training sequence into next-item windows; every training transition appears once.

    A sequence ``s`` of length ``m`` yields inputs ``s[a:e-1]`` and targets ``s[a+1:e]`` for window
    ends ``e = m, m - max_len, m - 2*max_len, ...`` (``a = max(0, e - 1 - max_len)``), so the
    most recent transitions see the longest context. Users with one training item yield nothing.

    Returns:
        ``(inputs [W, max_len], targets [W, max_len])`` int64, item id + 1, right-padded with 0.
    """
    inputs, targets = [], []
    for u in sorted(train_sequences):
        s = np.asarray(train_sequences[u], dtype=np.int64) + 1
        e = len(s)
        while e >= 2:
            a = max(0, e - 1 - max_len)
            inp, tgt = np.zeros(max_len, np.int64), np.zeros(max_len, np.int64)
            inp[: e - 1 - a], tgt[: e - 1 - a] = s[a:e - 1], s[a + 1:e]
            inputs.append(inp)
            targets.append(tgt)
            e = a + 1
    if not inputs:
        raise ValueError("no training transitions: every user's training sequence has a single item")
    return np.stack(inputs), np.stack(targets)


@dataclass
class SASRecResult:
    """A trained SASRec and its training log.

    Attributes:
        model: the model at its best validation epoch, in eval mode.
        history: one dict per epoch (``epoch``, ``loss``, validation metrics, ``seconds``).
        best_epoch: the epoch whose weights were kept (1-based).
        trained_items: bool ``[n_items]``, items occurring in the training sequences.
    """

    model: SASRec
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    trained_items: np.ndarray | None = None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_sasrec(
    split: Split,
    n_items: int,
    params: SASRecParams | None = None,
    seed: int = 0,
    model: SASRec | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> SASRecResult:
    """Train SASRec on ``split.train_sequences`` (never on validation/test items).

    Args:
        split: leave-one-out split; ``split.valid`` (history -> target) picks the best epoch.
        n_items: catalogue size.
        params: hyper-parameters (defaults of :class:`SASRecParams` when ``None``).
        seed: seeds the initialisation, the shuffling and dropout.
        model: an already built model to train in place (tests pass one to compare with its init).
        device: torch device; ``None`` = CUDA when available.
        progress: show a progress bar over epochs.
    Returns:
        :class:`SASRecResult` with the best-epoch model (eval mode).
    """
    p = params or SASRecParams()
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if model is None:
        model = SASRec(n_items, p.dim, p.layers, p.heads, p.dropout, split.max_history)
    model.to(device)
    inputs, targets = training_windows(split.train_sequences, split.max_history)
    trained = np.zeros(n_items + 1, dtype=bool)
    trained[np.unique(np.concatenate([inputs.ravel(), targets.ravel()]))] = True
    trained[0] = False
    # Logit mask over the catalogue (+1 shift): only items seen in training compete in the softmax.
    allowed = torch.as_tensor(trained[1:], device=device)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    inputs_t, targets_t = torch.as_tensor(inputs), torch.as_tensor(targets)
    valid_hist, valid_tgt = split.valid.history.tolist(), split.valid.target.to_numpy()

    best, best_state, best_epoch, bad, log = -1.0, None, 0, 0, []
    bar = tqdm(range(1, p.epochs + 1), desc="SASRec", disable=not progress)
    for epoch in bar:
        t0 = time.time()
        model.train()
        order = rng.permutation(len(inputs_t))
        total, count = 0.0, 0
        for start in range(0, len(order), p.batch_size):
            idx = torch.as_tensor(order[start:start + p.batch_size])
            seq, tgt = inputs_t[idx].to(device), targets_t[idx].to(device)
            width = int((seq > 0).sum(1).max())
            seq, tgt = seq[:, :width], tgt[:, :width]
            h = model(seq)[tgt > 0]
            logits = (h @ model.item_embeddings().T).masked_fill(~allowed, float("-inf"))
            loss = F.cross_entropy(logits, tgt[tgt > 0] - 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(h)
            count += len(h)
        metrics = metrics_from_ranks(model.target_ranks(valid_hist, valid_tgt, p.eval_batch_size))
        log.append({"epoch": epoch, "loss": total / max(count, 1), **{f"valid_{k}": v for k, v in metrics.items()},
                    "seconds": time.time() - t0})
        bar.set_postfix(loss=f"{log[-1]['loss']:.3f}", ndcg10=f"{metrics['ndcg@10']:.4f}")
        if metrics["ndcg@10"] > best:
            best, best_state, best_epoch, bad = metrics["ndcg@10"], copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if p.patience and bad >= p.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return SASRecResult(model, log, best_epoch, trained[1:].copy())


_CONVERT = ("save the tensor alone: where you trust the file's origin (e.g. in the program that made it), "
            "torch.save(tensor.detach().float().contiguous(), 'cf.pt'), or "
            "safetensors.torch.save_file({'embeddings': tensor.detach().float().contiguous()}, 'cf.safetensors')")


def _pickled_globals(p: Path) -> list[str] | None:
    """The Python objects a torch file (zip or bare pickle) refers to, read without running it;
    ``None`` when it is neither."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(p)))
    except (ValueError, RuntimeError):  # not a zip checkpoint: maybe a bare pickle (torch's legacy format)
        pass
    names, strings = [], []
    try:
        with p.open("rb") as fh:  # pickletools only decodes the opcodes: nothing is imported or called
            for op, arg, _ in pickletools.genops(fh):
                if op.name == "GLOBAL":
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL":  # module and name are the two strings pushed before it
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - a failure to decode ends the scan: "not a pickle" if nothing was named
        return names or None
    return names


def _read_cf_file(p: Path) -> object:
    """The object stored in a ``.npy``, ``.safetensors`` or torch file, loaded without running code."""
    if p.suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except ValueError as e:  # object arrays need pickle: not a plain numeric array
            raise DataError(f"{p}: tokenizer.cf_embeddings: not a plain numeric .npy array ({e}); "
                            f"np.save the float array [n_items, d] instead") from None
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(p))
        except SafetensorError as e:
            raise DataError(f"{p}: tokenizer.cf_embeddings: not a readable safetensors file ({e}); "
                            f"{_CONVERT}") from None
        return next(iter(tensors.values())) if len(tensors) == 1 else tensors
    try:
        return torch.load(p, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        # torch's own message here suggests weights_only=False, i.e. running the file's code: never
        # the advice to give for a file whose origin the kit does not know.
        objects = _pickled_globals(p)
        if objects:
            raise DataError(f"{p}: tokenizer.cf_embeddings: not a plain tensor file (it pickles Python objects: "
                            f"{', '.join(objects[:3])}, which safe loading refuses to run); {_CONVERT}") from None
        raise DataError(f"{p}: tokenizer.cf_embeddings: not a torch tensor file (safe loading cannot read it); "
                        "give a .pt written by torch.save, a .safetensors or a .npy file") from None
    except Exception as e:  # noqa: BLE001 - a foreign file fails torch.load as KeyError, EOFError, RuntimeError...
        first = (str(e).splitlines() or [""])[0][:120]
        raise DataError(f"{p}: tokenizer.cf_embeddings: not a torch tensor file ({type(e).__name__}: {first}); "
                        "give a .pt written by torch.save, a .safetensors or a .npy file") from None


def load_item_cf(path: str | Path, n_items: int) -> np.ndarray:
    """Given item CF embeddings ``[n_items, d]`` as float32 numpy, from any floating-point tensor.

    Reads ``.npy`` (``np.load``, no pickle), ``.safetensors`` (one tensor) or a torch file
    (``torch.load(path, weights_only=True)``: a file that pickles code is refused, never run). A tensor
    that requires grad, or of any float dtype (bf16, fp16, fp64), is detached and cast to float32.

    Raises:
        DataError: missing or unreadable file, not one float tensor, a shape other than
            ``[n_items, d]`` (row ``i`` = item ``i``), or non-finite values.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: tokenizer.cf_embeddings: no such file; give the path of a tensor [n_items, d] "
                        "or leave tokenizer.cf_embeddings empty to train SASRec on the training split")
    t = _read_cf_file(p)
    if isinstance(t, dict):
        entries = [f"{k} {list(v.shape)}" if hasattr(v, "shape") else str(k) for k, v in list(t.items())[:4]]
        raise DataError(f"{p}: tokenizer.cf_embeddings: found a dict of {len(t)} entries ({', '.join(entries)}), "
                        f"expected one tensor [{n_items}, d]; {_CONVERT}")
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(t) if t.dtype.kind in "fiub" else t
    if not isinstance(t, torch.Tensor):
        raise DataError(f"{p}: tokenizer.cf_embeddings: found a {type(t).__name__}, expected one float tensor "
                        f"[{n_items}, d]; {_CONVERT}")
    if not t.is_floating_point():
        raise DataError(f"{p}: tokenizer.cf_embeddings: the tensor holds {t.dtype}, expected floating-point "
                        f"embeddings [{n_items}, d] (not item ids); {_CONVERT}")
    if t.ndim != 2 or t.shape[0] != n_items:
        hint = (" (one row too many: a padding row 0? drop it with tensor[1:])"
                if t.ndim == 2 and t.shape[0] == n_items + 1 else "")
        raise DataError(
            f"{p}: tokenizer.cf_embeddings: shape {list(t.shape)}, expected [n_items, d] = [{n_items}, d]{hint}; "
            "the file must hold one row per item of this dataset, in item-id order"
        )
    emb = t.detach().to("cpu", torch.float32).contiguous().numpy()
    bad = ~np.isfinite(emb).all(1)
    if bad.any():
        raise DataError(f"{p}: tokenizer.cf_embeddings: row {int(np.flatnonzero(bad)[0])} (and "
                        f"{int(bad.sum()) - 1} more) holds NaN or infinity; re-export finite embeddings")
    return emb


def mean_item_embedding(item_emb: np.ndarray, train_sequences: dict[int, np.ndarray], n_users: int) -> np.ndarray:
    """User CF features when only item embeddings are given: the mean over the user's training items.

    Returns:
        ``[n_users, d]`` float32 (zeros for a user with no training item).
    """
    out = np.zeros((n_users, item_emb.shape[1]), dtype=np.float32)
    for u, seq in train_sequences.items():
        if len(seq):
            out[u] = item_emb[np.asarray(seq)].mean(0)
    return out

