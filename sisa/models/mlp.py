import math

import jax
from flax import nnx

from sisa.models.layers import dropout


class MLP(nnx.Module):
    """Flatten -> [Linear -> ReLU -> dropout]* -> Linear."""

    def __init__(self, input_shape, num_classes, *, hidden=(128,), dropout=0.0, rngs: nnx.Rngs):
        sizes = [math.prod(input_shape), *hidden]
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = nnx.Linear(sizes[-1], num_classes, rngs=rngs)
        self.rate = dropout

    def __call__(self, x, *, key=None):
        x = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.hidden):
            x = dropout(jax.nn.relu(layer(x)), self.rate, key, i)
        return self.out(x)
