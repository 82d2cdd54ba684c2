"""Model FLOPs of one LoRA SFT step of a decoder-only LM, counted from its modules and a batch's real tokens.

Counting rule (one multiply-add = 2 FLOPs; Kaplan et al. 2020, "Scaling Laws for Neural Language
Models", section 2.1 and Table 1: forward ``2N`` per token plus ``2 n_layer n_ctx d_attn`` for
attention, backward twice the forward when every weight trains; Hoffmann et al. 2022, "Training
Compute-Optimal Large Language Models", Appendix F, the same terms counted per operation):

* **a base linear layer** ``[in -> out]`` on ``t`` real tokens: forward ``2·in·out·t``. Backward: the
  input's gradient ``2·in·out·t`` (needed in every layer here: the SCID rows of the input embedding
  train, so gradients flow down to layer 0), plus the weight's gradient ``2·in·out·t`` only when the
  weight itself trains. A frozen layer under LoRA therefore costs ``4·in·out·t`` a step, a trained one
  ``6·in·out·t`` (Kaplan's ``6N`` per token is the all-trained case; autograd skips the weight's
  gradient of a frozen weight, ``needs_input_grad``);
* **a LoRA adapter** of rank ``r`` on that layer (``A: in -> r``, ``B: r -> out``, both trained):
  ``6·r·(in + out)·t``;
* **the LM head** ``[d -> V]`` on the ``h`` real positions whose logits are computed (with
  ``logits_to_keep``, only the last ``K`` of each row): forward ``2·d·V·h``, the hidden state's
  gradient ``2·d·V·h``, the weight's gradient for the trainable rows only (the SCID rows)
  ``2·d·rows·h``. (peft's trainable-tokens wrapper in fact computes the gradient of the whole
  ``V x d`` matrix and then keeps the SCID rows; that extra ``2·d·(V - rows)·h`` is work done, not
  model FLOPs, and shows in the step's profile, not here);
* **attention** (scores ``QK^T`` and the weighted sum ``AV``, with ``d_attn`` = heads x head size):
  causal, so a row of ``t`` real tokens has ``t(t+1)/2`` query-key pairs: forward
  ``2·2·L·d_attn·t(t+1)/2``; backward twice that (gradients with respect to both operands of each
  product, none of them a weight). Kaplan counts the full ``n_ctx`` window; PaLM (Chowdhery et al.
  2022, Appendix B) likewise; the causal half is what a causal model needs;
* **not counted**: embedding look-ups, norms, activations, rotary embeddings, softmax, the loss and
  the optimiser (elementwise, a few FLOPs per parameter or activation: well under 1% here), and
  padding tokens (model FLOPs count real tokens, as MFU does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from torch import nn


@dataclass(frozen=True)
class LinearSpec:
    """One linear layer of the decoder body (the LM head excluded).

    Attributes:
        name: its module name (e.g. ``base_model.model.model.layers.0.self_attn.q_proj``).
        in_features, out_features: its weight's shape ``[out, in]``.
        weight_trains: whether its own weight gets a gradient.
        lora_rank: the rank of the LoRA adapter on it (0: none).
    """

    name: str
    in_features: int
    out_features: int
    weight_trains: bool
    lora_rank: int = 0


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step, per term of the module docstring (forward and backward)."""

    linear_forward: float
    linear_backward: float
    lora_forward: float
    lora_backward: float
    head_forward: float
    head_backward: float
    attention_forward: float
    attention_backward: float

    @property
    def forward(self) -> float:
        """All forward FLOPs."""
        return self.linear_forward + self.lora_forward + self.head_forward + self.attention_forward

    @property
    def total(self) -> float:
        """Forward and backward FLOPs of the step."""
        return (self.forward + self.linear_backward + self.lora_backward + self.head_backward
                + self.attention_backward)

    def as_dict(self) -> dict[str, float]:
        """Every term plus ``forward`` and ``total``."""
        return {**asdict(self), "forward": self.forward, "total": self.total}


def decoder_linears(model: nn.Module) -> list[LinearSpec]:
    """The body's linear layers of ``model`` (a plain or peft-wrapped causal LM), LM head excluded.

    A peft LoRA layer (a module with ``base_layer`` and ``lora_A``) counts once, with its base layer's
    shape and its adapter's rank (summed over adapters, for the rare model with several); the adapter's
    own ``nn.Linear`` modules are not listed separately. Returns the specs in module order.
    """
    head = model.get_output_embeddings()
    skip = {id(m) for m in head.modules()} if head is not None else set()
    specs, inside_lora = [], set()
    for name, module in model.named_modules():
        if id(module) in skip or id(module) in inside_lora:
            continue
        if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
            base = module.get_base_layer()
            rank = sum(int(a.out_features) for a in module.lora_A.values())
            specs.append(LinearSpec(name, int(base.in_features), int(base.out_features),
                                    bool(base.weight.requires_grad), rank))
            inside_lora |= {id(m) for m in module.modules()}
        elif isinstance(module, nn.Linear):
            specs.append(LinearSpec(name, int(module.in_features), int(module.out_features),
                                    bool(module.weight.requires_grad)))
    return specs


def lora_step_flops(linears: Sequence[LinearSpec], hidden: int, vocab: int, head_trainable_rows: int,
                    n_layers: int, attn_dim: int, row_lengths: Sequence[int], head_positions: int) -> StepFlops:
    """Model FLOPs of one training step under the module docstring's rule.

    Args:
        linears: the body's linear layers (:func:`decoder_linears`).
        hidden, vocab: the LM head's input size and number of output rows (``d``, ``V``).
        head_trainable_rows: rows of the head whose weight trains (the SCID rows; ``vocab`` when the
            whole head trains, 0 when none).
        n_layers: decoder layers (attention blocks).
        attn_dim: heads x head size of the queries (``d_attn``).
        row_lengths: real (non-padding) tokens of each row of the batch.
        head_positions: real positions whose logits are computed (``h``).
    Returns:
        :class:`StepFlops`.
    """
    t = float(sum(int(n) for n in row_lengths))
    base = sum(s.in_features * s.out_features for s in linears)
    trained = sum(s.in_features * s.out_features for s in linears if s.weight_trains)
    lora = sum(s.lora_rank * (s.in_features + s.out_features) for s in linears)
    pairs = float(sum(int(n) * (int(n) + 1) // 2 for n in row_lengths))
    attention_forward = 2 * 2 * n_layers * attn_dim * pairs
    return StepFlops(
        linear_forward=2 * base * t,
        linear_backward=2 * base * t + 2 * trained * t,
        lora_forward=2 * lora * t,
        lora_backward=4 * lora * t,
        head_forward=2.0 * hidden * vocab * head_positions,
        head_backward=2.0 * hidden * vocab * head_positions + 2.0 * hidden * head_trainable_rows * head_positions,
        attention_forward=attention_forward,
        attention_backward=2 * attention_forward,
    )
