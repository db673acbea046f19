"""Composition attention (CrabNet/Roost-like): a composition as a set of element tokens.

Input: the `elements` featurizer's rows, K atomic numbers (0 = padding) then K atomic fractions,
as float32, unscaled. Each element is embedded by a trainable linear map of its standardised
pymatgen properties (so an element rare in the source still starts from chemistry, not from a
random vector), its fraction is added as a sinusoidal encoding of the fraction and of its
logarithm (dopant levels and majority elements both resolved), a small pre-norm transformer
encoder lets the elements see each other, and the fraction-weighted mean of the tokens goes
through an MLP head. Nothing depends on token order, so the prediction is a function of the
composition alone; padding is masked out of attention and weighted 0 in the pooling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from s2r_ray.data.dataset import Rows
from s2r_ray.data.featurizers.elements import embedding_table
from s2r_ray.models import base
from s2r_ray.models.torch_family import (
    StackedForward,
    TorchFamily,
    stacked_affine,
    stacked_dropout,
    stacked_linear,
)

FRACTION_FREQUENCIES = 8  # sin/cos pairs per encoded quantity: resolution ~1/2^8 of its range
LOG_FRACTION_FLOOR = 1e-5  # below the featurizer's smallest fraction (5e-5)


def split_inputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(atomic numbers as long, fractions) from (batch, 2K) featurizer rows."""
    if x.dim() != 2 or x.shape[1] % 2:
        raise ValueError(f"expected (batch, 2K) rows of K Z then K fractions, got {tuple(x.shape)}")
    k = x.shape[1] // 2
    return x[:, :k].round().long(), x[:, k:]


def _compact(z: torch.Tensor, frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elements moved before padding (stable), then padding-only slots cut: attention cost
    follows the widest composition of the batch, not K."""
    padding = z == 0
    order = torch.argsort(padding.to(torch.uint8), dim=1, stable=True)
    width = max(int((~padding).sum(dim=1).max()), 1)
    order = order[:, :width]
    return z.gather(1, order), frac.gather(1, order)


class Head(nn.Sequential):
    """Pooled composition -> one value: the part fine-tuning re-initialises."""

    def __init__(self, d_model: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(d_model, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def reset_parameters(self) -> None:
        for layer in self:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()


class CompositionAttention(nn.Module):
    """Element-property embedding + fraction encoding -> transformer encoder -> pooled -> head."""

    def __init__(
        self,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        ff_width: int = 128,
        head_hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        properties = torch.from_numpy(embedding_table())
        self.register_buffer("properties", properties, persistent=False)  # rebuilt, not shipped
        self.register_buffer(
            "frequencies",
            math.pi * 2.0 ** torch.arange(FRACTION_FREQUENCIES, dtype=torch.float32),
            persistent=False,
        )
        self.element = nn.Linear(properties.shape[1], d_model)
        self.fraction = nn.Linear(4 * FRACTION_FREQUENCIES, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            ff_width,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.head = Head(d_model, head_hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 2K) featurizer rows -> (batch,) predictions."""
        z, frac = _compact(*split_inputs(x))
        tokens = self.element(self.properties[z]) + self.fraction(self._encode_fraction(frac))
        h = self.encoder(tokens, src_key_padding_mask=z == 0)
        pooled = (h * frac.unsqueeze(-1)).sum(dim=1)  # fractions sum to 1 and are 0 on padding
        return self.head(pooled).squeeze(-1)

    def _encode_fraction(self, frac: torch.Tensor) -> torch.Tensor:
        """sin/cos of the fraction and of its log rescaled to [0, 1], at octave frequencies."""
        log = torch.log(frac.clamp_min(LOG_FRACTION_FLOOR)) / math.log(LOG_FRACTION_FLOOR)
        angles = torch.stack([frac, log], dim=-1).unsqueeze(-1) * self.frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)

    def freeze(self, k: int) -> None:
        """Freeze the embedding (k >= 1) and the first k - 1 encoder layers, as `MLP.freeze`
        freezes its first k blocks: the lowest layers carry the most generic features."""
        stages = [nn.ModuleList([self.element, self.fraction]), *self.encoder.layers]
        for i, stage in enumerate(stages):
            for p in stage.parameters():
                p.requires_grad_(i >= k)


def _stacked_norm(norms: Sequence[nn.LayerNorm], x: torch.Tensor) -> torch.Tensor:
    """K LayerNorms on (K, rows, d), each with its own scale and shift."""
    w = torch.stack([n.weight for n in norms]).unsqueeze(1)
    b = torch.stack([n.bias for n in norms]).unsqueeze(1)
    return torch.addcmul(b, nn.functional.layer_norm(x, (x.shape[-1],), eps=norms[0].eps), w)


def _stacked_attention(
    attns: Sequence[nn.MultiheadAttention],
    x: torch.Tensor,
    padding: torch.Tensor,
    rates: Sequence[float],
    noise: Sequence[torch.Generator],
    widths: Sequence[int],
) -> torch.Tensor:
    """K self-attentions on (K, batch, T, d) tokens, as `nn.MultiheadAttention` computes them
    (scaled dot products, `padding` (K, batch, T) masked out as keys, dropout on the attention
    weights, each member's mask drawn over its own `widths`)."""
    k, batch, t, d = x.shape
    heads = attns[0].num_heads
    weights, biases = [a.in_proj_weight for a in attns], [a.in_proj_bias for a in attns]
    qkv = stacked_affine(weights, biases, x.view(k, -1, d))
    q, key, v = qkv.view(k * batch, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    keep = ~padding.view(k * batch, 1, 1, t)
    if any(rates):
        scores = (q @ key.transpose(-1, -2)) / math.sqrt(d // heads)
        probs = scores.masked_fill(~keep, -math.inf).softmax(dim=-1).view(k, batch, heads, t, t)
        own = [(batch, heads, w, w) for w in widths]
        out = stacked_dropout(rates, probs, noise, own).view(k * batch, heads, t, t) @ v
    else:  # the fused kernel `nn.MultiheadAttention` runs
        out = nn.functional.scaled_dot_product_attention(q, key, v, attn_mask=keep)
    out = stacked_linear(
        [cast("nn.Linear", a.out_proj) for a in attns], out.transpose(1, 2).reshape(k, -1, d)
    )
    return out.view(k, batch, t, d)


def forward_stacked(
    modules: Sequence[nn.Module], x: torch.Tensor, noise: Sequence[torch.Generator]
) -> torch.Tensor:
    """K networks of one shape on (K, batch, 2E) rows -> (K, batch), trained together
    (`torch_family.train_members`): `CompositionAttention.forward` on each member's own
    parameters (the pre-norm encoder layer of `nn.TransformerEncoderLayer`, GELU). Each member's
    dropout masks come from its own generator, drawn over its own compositions' width, so they
    do not depend on its batch mates; they are not the masks its module draws alone (whose
    attention kernel draws inside itself), and one network alone runs its module's own
    forward, 10% faster at batch 32 than this one."""
    nets = cast("list[CompositionAttention]", list(modules))
    k, batch, _ = x.shape
    z, frac = _compact(*split_inputs(x.reshape(k * batch, -1)))  # one width for all
    t = z.shape[1]
    z, frac = z.view(k, batch, t), frac.view(k, batch, t)
    padding, first = z == 0, nets[0]
    widths = [max(int(w), 1) for w in (~padding).sum(dim=2).amax(dim=1)]

    def linear(layers: Sequence[nn.Linear], h: torch.Tensor) -> torch.Tensor:
        return stacked_linear(layers, h.reshape(k, -1, h.shape[-1])).view(*h.shape[:-1], -1)

    def norm(norms: Sequence[nn.Module], h: torch.Tensor) -> torch.Tensor:
        return _stacked_norm(cast("list[nn.LayerNorm]", norms), h.view(k, -1, h.shape[-1])).view(
            h.shape
        )

    def drop(modules: Sequence[nn.Module], h: torch.Tensor) -> torch.Tensor:
        rates = [m.p if m.training else 0.0 for m in cast("list[nn.Dropout]", modules)]
        own = [(batch, w, *h.shape[3:]) for w in widths] if h.dim() == 4 else None
        return stacked_dropout(rates, h, noise, own)

    h = linear([m.element for m in nets], first.properties[z])
    h = h + linear([m.fraction for m in nets], first._encode_fraction(frac))
    for i in range(len(first.encoder.layers)):
        layers = [cast("nn.TransformerEncoderLayer", m.encoder.layers[i]) for m in nets]
        attns = [lay.self_attn for lay in layers]
        rates = [a.dropout if a.training else 0.0 for a in attns]
        a = _stacked_attention(
            attns, norm([lay.norm1 for lay in layers], h), padding, rates, noise, widths
        )
        h = h + drop([lay.dropout1 for lay in layers], a)
        f = linear([lay.linear1 for lay in layers], norm([lay.norm2 for lay in layers], h))
        f = drop([lay.dropout for lay in layers], nn.functional.gelu(f))
        h = h + drop([lay.dropout2 for lay in layers], linear([lay.linear2 for lay in layers], f))
    h = norm([m.encoder.norm for m in nets], h)
    pooled = (h * frac.unsqueeze(-1)).sum(dim=2)  # fractions sum to 1 and are 0 on padding
    h = drop(
        [m.head[2] for m in nets], nn.functional.silu(linear([m.head[0] for m in nets], pooled))
    )
    return linear([m.head[3] for m in nets], h).squeeze(-1)


class AttentionOptions(base.Options):
    d_model: int = Field(64, ge=8)
    n_heads: int = Field(4, ge=1)
    n_layers: int = Field(2, ge=1)
    ff_width: int = Field(128, ge=8)
    head_hidden: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> AttentionOptions:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        return self


class Passthrough:
    """The `elements` rows are the network's inputs already: atomic numbers must stay exact."""

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float32)

    def state(self) -> dict:
        return {}


class AttentionFamily(TorchFamily):
    """`model.kind: attention`, on the `elements` featurizer's rows (data.*.featurizer)."""

    Options = AttentionOptions
    options: AttentionOptions

    def build(self, n_in: int, dropout: float) -> CompositionAttention:
        return CompositionAttention(**self.options.model_dump(), dropout=dropout)

    def stacked(self) -> StackedForward:
        return forward_stacked

    def stacks_pretraining(self, n_in: int, device: str) -> bool:
        """Not on a CPU, small or not: three pretrainings as one batch ran 0.67x (d_model 32,
        batch 64) and 0.69-0.90x (d_model 64, batch 256) the speed of one after another, as its
        steps are arithmetic (the fused attention kernel, token-wise products) rather than
        per-call cost. GPUs are unmeasured (benchmarks/gpu.py)."""
        return False

    def fit_encoder(self, X: np.ndarray | Rows) -> Passthrough:
        return Passthrough()

    def encoder_from_state(self, state: dict) -> Passthrough:
        return Passthrough()
