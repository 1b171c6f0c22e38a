"""Small transformers over token ids (sisa.data.text): an encoder classifier and a causal LM."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sisa.models.layers import dropout

_MASKED = -1e9  # finite, so a row with every key masked softmaxes to uniform, not NaN


def model_width(hidden, heads) -> int:
    """The one width d shared by all blocks; `hidden` has one entry per block."""
    hidden = tuple(hidden)
    if not hidden:
        raise ValueError("a transformer needs at least one block, got hidden=()")
    if len(set(hidden)) != 1:
        raise ValueError(f"transformer blocks need equal widths, got hidden={hidden}")
    if hidden[0] % heads:
        raise ValueError(f"transformer width {hidden[0]} is not divisible by heads={heads}")
    return hidden[0]


class Attention(nnx.Module):
    """Multi-head self-attention; `mask[b, q, k]` says whether query q may see key k."""

    def __init__(self, d, heads, *, rngs: nnx.Rngs):
        self.q, self.k, self.v, self.o = (nnx.Linear(d, d, rngs=rngs) for _ in range(4))
        self.heads = heads

    def __call__(self, x, mask):
        b, t, d = x.shape
        q, k, v = (f(x).reshape(b, t, self.heads, d // self.heads) for f in (self.q, self.k, self.v))
        scores = jnp.einsum("bqhc,bkhc->bhqk", q, k).astype(jnp.float32) / math.sqrt(d // self.heads)
        # where, not add: a masked key's weight is exactly 0, whatever its content (bitwise causality).
        probs = jax.nn.softmax(jnp.where(mask[:, None], scores, _MASKED), axis=-1).astype(x.dtype)
        return self.o(jnp.einsum("bhqk,bkhc->bqhc", probs, v).reshape(b, t, d))


class Block(nnx.Module):
    """Pre-LayerNorm block: x + Attn(LN(x)), then x + MLP(LN(x)) with a 4d GELU MLP."""

    def __init__(self, d, heads, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = Attention(d, heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, rngs=rngs)
        self.up = nnx.Linear(d, 4 * d, rngs=rngs)
        self.down = nnx.Linear(4 * d, d, rngs=rngs)

    def __call__(self, x, mask, rate, key, index):
        x = x + dropout(self.attn(self.norm1(x), mask), rate, key, index)
        return x + dropout(self.down(jax.nn.gelu(self.up(self.norm2(x)))), rate, key, index + 1)


class _Stack(nnx.Module):
    """Token + learned position embeddings -> blocks -> final LayerNorm -> a linear head."""

    def __init__(self, input_shape, num_classes, *, vocab_size, hidden=(64, 64), heads=4, dropout=0.0,
                 rngs: nnx.Rngs):
        d = model_width(hidden, heads)
        (context,) = input_shape
        self.embed = nnx.Embed(vocab_size, d, rngs=rngs)
        self.pos = nnx.Embed(context, d, rngs=rngs)
        self.blocks = nnx.List([Block(d, heads, rngs=rngs) for _ in hidden])
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, num_classes, rngs=rngs)
        self.rate = dropout

    def features(self, tokens, mask, key):
        h = dropout(self.embed(tokens) + self.pos(jnp.arange(tokens.shape[1])), self.rate, key, 0)
        for i, block in enumerate(self.blocks):
            h = block(h, mask, self.rate, key, 1 + 2 * i)
        return self.norm(h)


class Transformer(_Stack):
    """Encoder text classifier: padding (id 0) is masked as a key and left out of the mean pool."""

    def __call__(self, x, *, key=None):
        tokens = x.astype(jnp.int32)
        real = tokens != 0
        h = self.features(tokens, real[:, None, :], key)
        pooled = jnp.sum(h * real[..., None], axis=1) / jnp.maximum(real.sum(1, keepdims=True), 1)
        return self.head(pooled)


class TransformerLM(_Stack):
    """Causal decoder: next-token logits at every position. Padding sits after the real tokens,
    so causality alone keeps it out of every real position's view."""

    def __call__(self, x, *, key=None):
        tokens = x.astype(jnp.int32)
        t = tokens.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))[None]
        return self.head(self.features(tokens, causal, key))
