import math

import jax
from flax import nnx

from sisa.models.layers import dropout


def image_shape(input_shape):
    """(H, W, C) for image-like inputs; flat square inputs (e.g. 784) become (28, 28, 1)."""
    if len(input_shape) == 3:
        return tuple(input_shape)
    if len(input_shape) == 2:
        return (*input_shape, 1)
    side = math.isqrt(input_shape[0])
    if side * side != input_shape[0]:
        raise ValueError(f"cnn needs image inputs or flat square ones, got shape {input_shape}")
    return (side, side, 1)


class CNN(nnx.Module):
    """[Conv3x3 -> ReLU -> avg-pool 2]* -> dense: a small CNN for MNIST/CIFAR-sized images."""

    def __init__(self, input_shape, num_classes, *, hidden=(16, 32), dropout=0.0, rngs: nnx.Rngs):
        self.shape = image_shape(input_shape)
        chans = [self.shape[-1], *hidden]
        self.convs = nnx.List(
            [nnx.Conv(a, b, kernel_size=(3, 3), rngs=rngs) for a, b in zip(chans[:-1], chans[1:])]
        )
        h, w = self.shape[0], self.shape[1]
        for _ in hidden:
            h, w = h // 2, w // 2
        self.out = nnx.Linear(max(h, 1) * max(w, 1) * chans[-1], num_classes, rngs=rngs)
        self.rate = dropout

    def __call__(self, x, *, key=None):
        x = x.reshape(x.shape[0], *self.shape)
        for i, conv in enumerate(self.convs):
            x = jax.nn.relu(conv(x))
            if min(x.shape[1:3]) >= 2:
                x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = dropout(x.reshape(x.shape[0], -1), self.rate, key, 0)
        return self.out(x)
