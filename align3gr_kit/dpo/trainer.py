"""Softmax-DPO training: a data collator, a small ``transformers.Trainer`` subclass, and the frozen
reference model.

Why not ``trl.DPOTrainer``: its loss internals (``_compute_loss``, the concatenated forward, the old
``get_batch_logps``/``dpo_loss``) are private and changed in nearly every release, and trl declined
support for several rejected responses per prompt (huggingface/trl issue 1831). Subclassing
``transformers.Trainer`` with our own collator and ``compute_loss`` keeps everything the Trainer
gives (optimiser, scheduler, gradient accumulation, ``accelerate launch`` / DDP / DeepSpeed, logging,
saving) and leaves only the method's own parts here.

One prompt with one chosen and N rejected responses is scored in ONE forward pass per model, in one
of two layouts (``DPOConfig.share_prompt``):

* shared prompt (default): one packed row per prompt, ``prompt + response_0 + ... + response_N``,
  with a tree attention mask, so the prompt is run once for its ``1 + N`` responses
  (:mod:`align3gr_kit.dpo.shared_prompt`);
* full sequences: ``1 + N`` sequences ``prompt + response``; a batch of B prompts is one left-padded
  batch of ``B + sum(N_b)`` sequences, labels masked to the response tokens.

Both give the same log-probs; in both the flat order of the ``B + sum(N_b)`` responses is the chosen
ones first, then each prompt's rejected ones.

Reference log-probs are precomputed once per stage by default (:func:`precompute_reference_logps`):
the reference is frozen, so its log-probs never change during a stage; scoring them once costs one
forward pass over the stage's data instead of one per step and epoch, and the reference model can
be freed before training (half the model memory, which matters more than the compute on a GPU).
``DPOConfig.precompute_ref = False`` scores them on the fly under ``no_grad`` instead.

Imports of the kit: ``model`` (prompt encoding, precision) and ``dpo.shared_prompt``/``dpo.softmax_dpo``;
never ``dpo.negatives`` or ``dpo.pipeline``, which import this module.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, Trainer

from align3gr_kit.model.encoding import fit_prompt, prompt_encoder, prompt_frame
from align3gr_kit.model.precision import autocast
from align3gr_kit.dpo.shared_prompt import pack_shared, shared_prompt_logps
from align3gr_kit.dpo.softmax_dpo import (
    IGNORE_INDEX,
    batched_logps,
    implicit_rewards,
    preference_stats,
    softmax_dpo_loss,
)


@dataclass
class SoftmaxDPOCollator:
    """Turn preference examples into one batch: packed rows (``share_prompt``) or ``B + sum(N_b)`` sequences.

    Each example is a dict with ``prompt`` (str), ``chosen`` (str) and ``rejected`` (list[str], at
    least one), optionally ``ref_chosen_logps`` (float) and ``ref_rejected_logps`` (list[float]).
    The prompt goes through ``encode_prompt`` (default: the kit's one prompt encoding, BOS + text or
    the chat template's user turn,
    :mod:`align3gr_kit.model.encoding`, as in SFT, evaluation and the self-play beam search); the
    response is the SCID text without special tokens, appended. The response is scored without the
    EOS that SFT completions end with: the log-probability DPO moves is then exactly the score the
    constrained beam search ranks items by.

    Examples that already carry ``prompt_ids`` (list[int]), ``chosen_ids`` (list[int]) and
    ``rejected_ids`` (list[list[int]]), as :meth:`tokenize` adds them, are collated from those ids
    without touching the tokenizer: :class:`SoftmaxDPOTrainer` tokenizes its dataset once, so no step
    renders the chat template or tokenizes a response again. Both paths give the same batch.

    With ``share_prompt`` (default) the batch holds one packed row per prompt
    (:func:`align3gr_kit.dpo.shared_prompt.pack_shared`): ``input_ids``, ``position_ids``,
    ``segment_ids`` ``[R, L]`` and the flat ``score_row``/``score_pos``/``score_token``/``score_seq``
    ``[K]``. Responses of one prompt share a row when their cut prompts are equal (always, unless a
    too-long prompt is cut differently for responses of different lengths).
    Without it: ``input_ids``, ``attention_mask``, ``position_ids``, ``labels`` (``[S, T]``,
    S = B + sum(N_b), chosen rows first). Both: ``rejected_mask`` (``[B, N_max]`` bool), and
    ``ref_chosen_logps`` ``[B]`` / ``ref_rejected_logps`` ``[B, N_max]`` when the examples carry them.
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int = 256
    encode_prompt: Callable[[str], list[int]] | None = None
    share_prompt: bool = True
    # Rendered / tokenized once per collator: the chat-template frame, the default prompt encoder and
    # every distinct response string (responses are SCIDs, a small set repeated across examples).
    _frame_lens: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)
    _encoder: Callable[[str], list[int]] | None = field(default=None, init=False, repr=False, compare=False)
    _response_ids: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def fit_pair(self, prompt_ids: list[int], response: str | list[int]) -> tuple[list[int], list[int]]:
        """``(prompt ids, response ids)`` of one sequence of at most ``max_length`` tokens; a too-long
        prompt loses its oldest text tokens (its frame, BOS or the chat template's head and assistant
        header, is kept). ``response``: its text, or its ids from :meth:`tokenize`."""
        resp = self._tokenize_responses([response])[0] if isinstance(response, str) else list(response)
        if not resp:
            raise ValueError(f"response {response!r} tokenizes to nothing; the tokenizer lacks its SCID tokens")
        room = self.max_length - len(resp)
        if room < 2:
            raise ValueError(f"max_length={self.max_length} leaves no room for a prompt before {len(resp)} response tokens")
        if self._frame_lens is None:
            head, tail = prompt_frame(self.tokenizer)
            self._frame_lens = (len(head), len(tail))
        return fit_prompt(list(prompt_ids), *self._frame_lens, room), resp

    def tokenize(self, examples: Mapping[str, list] | list[dict[str, Any]]) -> dict[str, list] | list[dict[str, Any]]:
        """Add the token ids the collator needs, so that training tokenizes nothing at any step.

        Args:
            examples: a list of example dicts, or a columnar batch (``{"prompt": [...], "chosen": [...],
                "rejected": [[...], ...], ...}``, what ``datasets.Dataset.map(batched=True)`` passes).
        Returns:
            ``prompt_ids`` (the encoded prompt, before any cut), ``chosen_ids`` and ``rejected_ids``:
            for a list, new dicts with them added; for a batch, the three new columns (``map`` merges them in).
        """
        columnar = isinstance(examples, Mapping)
        if columnar:
            prompts, chosen, rejected = examples["prompt"], examples["chosen"], examples["rejected"]
        else:
            prompts = [e["prompt"] for e in examples]
            chosen = [e["chosen"] for e in examples]
            rejected = [e["rejected"] for e in examples]
        encode = self._prompt_encoder()
        prompt_ids = [list(encode(p)) for p in prompts]
        chosen_ids = self._tokenize_responses(chosen)
        rejected_ids = [self._tokenize_responses(r) for r in rejected]
        if columnar:
            return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}
        return [{**e, "prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
                for e, p, c, r in zip(examples, prompt_ids, chosen_ids, rejected_ids)]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not all("prompt_ids" in ex for ex in examples):
            examples = self.tokenize(list(examples))
        pairs, n_rej = [], []  # pairs[b] = [(prompt ids, response ids)], chosen first
        for ex in examples:
            if len(ex["rejected_ids"]) == 0:
                raise ValueError(f"preference example for prompt {ex['prompt'][:60]!r} has no rejected response")
            pairs.append([self.fit_pair(ex["prompt_ids"], y) for y in [ex["chosen_ids"], *ex["rejected_ids"]]])
            n_rej.append(len(ex["rejected_ids"]))
        B = len(examples)
        # flat output slot of each response: the chosen ones first, then every prompt's rejected ones
        first_rej = B + torch.tensor([0] + n_rej[:-1]).cumsum(0)
        slots = [[b] + [int(first_rej[b]) + j for j in range(n_rej[b])] for b in range(B)]
        if self.share_prompt:
            rows: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
            for b in range(B):
                for slot, (p, resp) in zip(slots[b], pairs[b]):
                    rows.setdefault(tuple(p), []).append((slot, resp))
            batch = pack_shared([(list(p), resp) for p, resp in rows.items()], self._pad_id())
        else:
            flat = [None] * (B + sum(n_rej))
            for b in range(B):
                for slot, (p, resp) in zip(slots[b], pairs[b]):
                    flat[slot] = (p + resp, [IGNORE_INDEX] * len(p) + resp)
            batch = _left_pad(flat, self._pad_id())
        n_max = max(n_rej)
        mask = torch.zeros(len(examples), n_max, dtype=torch.bool)
        for b, n in enumerate(n_rej):
            mask[b, :n] = True
        batch["rejected_mask"] = mask
        if all("ref_chosen_logps" in ex for ex in examples):
            batch["ref_chosen_logps"] = torch.tensor([float(ex["ref_chosen_logps"]) for ex in examples])
            ref_rej = torch.zeros(len(examples), n_max)
            for b, ex in enumerate(examples):
                ref_rej[b, : n_rej[b]] = torch.tensor([float(x) for x in ex["ref_rejected_logps"]])
            batch["ref_rejected_logps"] = ref_rej
        return batch

    def _prompt_encoder(self) -> Callable[[str], list[int]]:
        if self.encode_prompt is not None:
            return self.encode_prompt
        if self._encoder is None:
            self._encoder = prompt_encoder(self.tokenizer)
        return self._encoder

    def _tokenize_responses(self, responses: list[str]) -> list[list[int]]:
        """Ids of each response text (no special tokens), through the collator's cache."""
        new = [r for r in dict.fromkeys(responses) if r not in self._response_ids]
        if new:
            for r, ids in zip(new, self.tokenizer(new, add_special_tokens=False)["input_ids"]):
                self._response_ids[r] = list(ids)
        return [list(self._response_ids[r]) for r in responses]

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
        return int(pad)


def tokenize_dataset(dataset, collator: SoftmaxDPOCollator):
    """``dataset`` with ``prompt_ids``/``chosen_ids``/``rejected_ids`` added once (:meth:`SoftmaxDPOCollator.tokenize`).

    A ``datasets.Dataset`` goes through ``map(batched=True)`` (in memory for a dataset built from a
    list), a list through one plain pass; a dataset that already carries the ids is returned as is.
    """
    from datasets import Dataset

    if isinstance(dataset, Dataset):
        if "prompt_ids" in dataset.column_names:
            return dataset
        # the fingerprint names the result without hashing the collator (and its tokenizer)
        from datasets.fingerprint import generate_random_fingerprint

        return dataset.map(collator.tokenize, batched=True, batch_size=1000,
                           new_fingerprint=generate_random_fingerprint(), desc="DPO tokenization")
    if isinstance(dataset, list) and dataset and not all("prompt_ids" in ex for ex in dataset):
        return collator.tokenize(dataset)
    return dataset


def _left_pad(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    # Left padding puts every response at the end, so the forward pass only needs logits for the
    # last few positions (see softmax_dpo.batched_logps); position_ids undo the padding offset.
    T = max(len(ids) for ids, _ in rows)
    S = len(rows)
    input_ids = torch.full((S, T), pad_id, dtype=torch.long)
    labels = torch.full((S, T), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((S, T), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        n = len(ids)
        input_ids[i, T - n:] = torch.tensor(ids)
        labels[i, T - n:] = torch.tensor(lab)
        attention[i, T - n:] = 1
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids, "labels": labels}


def split_logps(logps: torch.Tensor, rejected_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo the collator's flattening: ``[B + sum(N_b)]`` -> chosen ``[B]``, rejected ``[B, N_max]``.

    Masked (absent) rejected slots hold 0 and must be ignored through ``rejected_mask``.
    """
    B = rejected_mask.shape[0]
    chosen = logps[:B]
    rejected = logps.new_zeros(rejected_mask.shape).masked_scatter(rejected_mask.bool(), logps[B:])
    return chosen, rejected


def score_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen ``[B]`` and rejected ``[B, N_max]`` response log-probs of a collated batch, one forward
    (packed rows when the collator shared the prompt, else full sequences)."""
    mask = batch["rejected_mask"]
    if "segment_ids" in batch:
        logps = shared_prompt_logps(model, batch, mask.shape[0] + int(mask.sum()))
    else:
        logps = batched_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], batch["position_ids"])
    return split_logps(logps, mask)


def make_reference(policy: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``policy``: deep copy, ``requires_grad=False``, eval mode.

    A copy, not ``peft``'s ``disable_adapter()``: that would also drop the trained copies of the
    SCID embeddings (``modules_to_save``) and give the base model with untrained new rows.
    """
    ref = copy.deepcopy(policy)
    ref.requires_grad_(False)
    return ref.eval()


def parameter_fingerprint(model: torch.nn.Module) -> str:
    """sha256 (16 hex digits) over every parameter's name, dtype, shape and raw bytes: equal iff the
    weights are equal (same names, dtypes, shapes and bits).

    One parameter at a time, in its own dtype: no fp32 copy and never the whole model on the CPU at
    once (a bf16 tensor has no numpy dtype, so every tensor is hashed through a byte view).
    """
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        t = p.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def precompute_reference_logps(
    ref_model: torch.nn.Module,
    examples: list[dict[str, Any]],
    collator: SoftmaxDPOCollator,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    precision: str = "auto",
) -> list[dict[str, Any]]:
    """Score every example under the frozen reference once.

    Args:
        ref_model: the frozen reference (eval mode).
        examples: preference examples (see :class:`SoftmaxDPOCollator`).
        precision: ``model.dtype`` (:mod:`align3gr_kit.model.precision`); use the training's, so
            reference and policy log-probs are computed alike.
    Returns:
        New dicts with ``ref_chosen_logps`` (float) and ``ref_rejected_logps`` (list[float], one per
        rejected response) added, and the token ids of :meth:`SoftmaxDPOCollator.tokenize` (so training
        does not tokenize them again).
    """
    device = device or next(ref_model.parameters()).device
    ref_model.eval()
    examples = collator.tokenize(list(examples))
    out: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="reference log-probs", leave=False):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collator(chunk).items()}
        with autocast(precision, device):
            chosen, rejected = score_batch(ref_model, batch)
        chosen, rejected = chosen.float().cpu(), rejected.float().cpu()  # one transfer per batch
        for b, ex in enumerate(chunk):
            n = len(ex["rejected"])
            out.append({**ex, "ref_chosen_logps": float(chosen[b]), "ref_rejected_logps": rejected[b, :n].tolist()})
    return out


#: The statistics :class:`SoftmaxDPOTrainer` logs besides the loss, in the order of its stacked tensor.
STAT_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
             "logps/chosen", "logps/rejected")


def check_reference_placement(ref_model: torch.nn.Module | None, deepspeed_plugin: Any = None) -> None:
    """Refuse an on-the-fly reference where it cannot be scored: under DeepSpeed ZeRO-3.

    The reference is a plain frozen module, not prepared by accelerate: under DDP (and FSDP) each rank
    holds a whole copy on its device, which is right since it never changes. Under ZeRO-3 the policy's
    parameters are partitioned across ranks, so a copy made from it holds empty shards (and a whole
    copy per rank would undo what ZeRO-3 is for); the precomputed reference log-probs are the way.

    Raises:
        ValueError: ``ref_model`` is given and ``deepspeed_plugin.zero_stage`` is 3.
    """
    if ref_model is not None and deepspeed_plugin is not None and getattr(deepspeed_plugin, "zero_stage", None) == 3:
        raise ValueError("DPO under DeepSpeed ZeRO-3 cannot score the reference model on the fly: set "
                         "dpo.precompute_ref: true (the default) so reference log-probs are computed before training")


class SoftmaxDPOTrainer(Trainer):
    """``transformers.Trainer`` with the Softmax-DPO loss.

    Args:
        model: the policy.
        args: ``TrainingArguments`` (``remove_unused_columns=False`` is required: the collator reads
            the raw ``prompt``/``chosen``/``rejected`` columns).
        beta: DPO temperature.
        ref_model: frozen reference scored on the fly; may be None when every example carries
            precomputed ``ref_*_logps``. Refused under DeepSpeed ZeRO-3 (:func:`check_reference_placement`).
        **kwargs: passed to ``Trainer`` (``train_dataset``, ``data_collator``, ``processing_class``...).
            With a :class:`SoftmaxDPOCollator`, the train and eval datasets are tokenized once here
            (:func:`tokenize_dataset`), not at every step.

    Logged every ``logging_steps`` (averaged over the steps since the last log, across processes):
    ``loss``, ``rewards/chosen``, ``rewards/rejected`` (mean over a prompt's rejected), ``rewards/margins``,
    ``rewards/accuracies`` (chosen beats every rejected), ``logps/chosen``, ``logps/rejected``. They are
    summed on the device at every step and gathered as one tensor only when logged: no step waits
    for the device to read them.
    """

    def __init__(self, model: torch.nn.Module, args, beta: float, ref_model: torch.nn.Module | None = None, **kwargs):
        if getattr(args, "remove_unused_columns", False):
            raise ValueError("SoftmaxDPOTrainer needs TrainingArguments(remove_unused_columns=False): the collator reads raw text columns")
        collator = kwargs.get("data_collator")
        if isinstance(collator, SoftmaxDPOCollator):
            for key in ("train_dataset", "eval_dataset"):
                if kwargs.get(key) is not None:
                    kwargs[key] = tokenize_dataset(kwargs[key], collator)
        super().__init__(model=model, args=args, **kwargs)
        self.beta = float(beta)
        check_reference_placement(ref_model, getattr(self.accelerator.state, "deepspeed_plugin", None))
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.requires_grad_(False)
            # Not prepared by accelerate: a whole frozen copy on this rank's device (DDP: cuda:local_rank).
            self.ref_model = ref_model.eval().to(self.args.device)
        # compute_loss returns a per-batch mean: let the Trainer divide it by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        # per mode: the sum of the per-step statistics [len(STAT_KEYS)] (on the device) and the step count
        self._stat_sums: dict[str, torch.Tensor] = {}
        self._stat_steps: dict[str, int] = {"train": 0, "eval": 0}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mask = inputs["rejected_mask"]
        policy_chosen, policy_rejected = score_batch(model, inputs)
        if "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        elif self.ref_model is not None:
            # the policy runs inside accelerate's autocast (args.bf16); the reference is not prepared
            # by accelerate, so it gets the same autocast explicitly
            with torch.no_grad(), self.accelerator.autocast():
                ref_chosen, ref_rejected = score_batch(self.ref_model, inputs)
        else:
            raise ValueError("no reference: pass ref_model or precompute ref_chosen_logps/ref_rejected_logps")
        losses = softmax_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta, mask)
        loss = losses.mean()

        chosen_r, rejected_r = implicit_rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta)
        stats = preference_stats(chosen_r, rejected_r, mask)
        n = mask.sum(-1).clamp(min=1)
        stats["logps/chosen"] = policy_chosen.detach().mean()
        stats["logps/rejected"] = ((policy_rejected.detach() * mask).sum(-1) / n).mean()
        mode = "train" if model.training else "eval"
        step = torch.stack([stats[k].detach().float() for k in STAT_KEYS])
        self._stat_sums[mode] = step if mode not in self._stat_sums else self._stat_sums[mode] + step
        self._stat_steps[mode] += 1
        return (loss, {"chosen_logps": policy_chosen, "rejected_logps": policy_rejected}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        sums, steps = self._stat_sums.pop(mode, None), self._stat_steps[mode]
        self._stat_steps[mode] = 0
        stored: dict[str, float] = {}
        if sums is not None:
            # Every rank ran the same number of steps: the mean over ranks of each rank's mean over
            # its steps is the mean over steps of the per-step means over ranks.
            means = self.accelerator.gather(sums[None]).mean(0) / steps
            stored = dict(zip(STAT_KEYS, means.tolist()))
        if mode == "eval":
            stored = {f"eval_{k}": v for k, v in stored.items()}
        super().log({**logs, **stored}, start_time)
