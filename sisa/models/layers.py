import jax
import jax.numpy as jnp


def dropout(x, rate: float, key, index: int):
    """Inverted dropout with an explicit key (None or rate 0: identity, as at inference)."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(jax.random.fold_in(key, index), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)
