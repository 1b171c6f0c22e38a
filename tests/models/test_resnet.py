"""ResNet-18 with GroupNorm: its size, that each example's logits depend on that example alone
(what keeps shards and padding isolated), and that it forgets exactly."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sisa import config, models
from sisa.data.datasets import Dataset
from sisa.models.resnet import ResNet18
from tests.test_framework import assert_exact

TINY = {"width": 4, "groups": 2}


def resnet18_params(width=64, in_channels=3, classes=10) -> int:
    """ResNet-18's parameter count from its architecture: bias-free convs, a norm's scale and bias
    per channel, a 1x1 projection where a stage widens, a dense head."""
    def conv_norm(k, cin, cout):
        return k * k * cin * cout + 2 * cout

    total, cin = conv_norm(3, in_channels, width), width
    for stage in range(4):
        cout = width * 2**stage
        for _ in range(2):
            total += conv_norm(3, cin, cout) + conv_norm(3, cout, cout) + (conv_norm(1, cin, cout) if cin != cout else 0)
            cin = cout
    return total + cin * classes + classes


def param_count(model) -> int:
    return sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_the_gpu_config_builds_resnet18_of_11_17m_parameters():
    cfg = config.load(Path(__file__).parents[2] / "experiments" / "cifar10_gpu.toml")
    assert cfg.data.dataset == "cifar10" and cfg.model.name == "resnet18"
    model = nnx.eval_shape(lambda: models.build(cfg.model, (32, 32, 3), 10, rngs=nnx.Rngs(0)))
    assert isinstance(model, ResNet18)
    assert param_count(model) == resnet18_params() == 11_173_962
    assert abs(param_count(model) / 11.17e6 - 1) < 0.01
    graphdef, params = nnx.split(model, nnx.Param)
    x = jax.ShapeDtypeStruct((7, 32, 32, 3), jnp.float32)
    out = jax.eval_shape(lambda p, x: nnx.merge(graphdef, p)(x), params, x)
    assert out.shape == (7, 10) and out.dtype == jnp.float32
    flat = nnx.eval_shape(lambda: ResNet18((64,), 3, **TINY, rngs=nnx.Rngs(0)))  # flat square -> 8x8x1
    assert flat.shape == (8, 8, 1) and param_count(flat) == resnet18_params(4, 1, 3)
    with pytest.raises(ValueError, match="at least one block"):
        ResNet18((8, 8, 3), 3, blocks=(2, 0), rngs=nnx.Rngs(0))


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x, key):
    return nnx.merge(graphdef, state)(x, key=key)


def rows_independent(apply, shape, seeds=range(4)) -> bool:
    """Whether every row's output is bitwise unchanged when all the other rows of its batch change,
    over several random batches."""
    for seed in seeds:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=shape).astype(np.float32)
        out = np.asarray(apply(x))
        for row in range(shape[0]):
            other = rng.normal(size=shape).astype(np.float32)
            other[row] = x[row]
            if not np.array_equal(np.asarray(apply(other))[row], out[row]):
                return False
    return True


def test_each_example_is_normalised_alone():
    # Any parameter values will do: numpy's, which spares compiling twenty initialisers.
    model = nnx.eval_shape(lambda: ResNet18((8, 8, 3), 5, **TINY, dropout=0.2, rngs=nnx.Rngs(0)))
    graphdef, abstract = nnx.split(model)
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape), s.dtype), abstract)
    for key in (None, jax.random.key(3)):  # dropout masks do not depend on content either
        assert rows_independent(lambda x, key=key: _apply(graphdef, state, jnp.asarray(x), key), (4, 8, 8, 3))
    # The check has teeth: BatchNorm on batch statistics couples the rows.
    assert not rows_independent(nnx.BatchNorm(3, use_running_average=False, rngs=nnx.Rngs(0)), (4, 8, 8, 3), seeds=[0])


def images(n_train=90, n_test=30, side=8, classes=3, seed=0) -> Dataset:
    """uint8 RGB images (scale 1/255, as cifar10 loads): one noisy pattern per class."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, (classes, side, side, 3))
    y = rng.integers(0, classes, n_train + n_test)
    x = np.clip(patterns[y] + rng.normal(0, 40, (len(y), side, side, 3)), 0, 255).astype(np.uint8)
    return Dataset("images", x[:n_train], y[:n_train].astype(np.int32), np.arange(n_train) * 3 + 5,
                   x[n_train:], y[n_train:].astype(np.int32), classes, scale=1 / 255)


def test_resnet18_forgets_exactly(tmp_path, tiny_cfg):
    options = tuple(sorted({**TINY, "blocks": (1, 1)}.items()))
    cfg = tiny_cfg.replace(model={"name": "resnet18", "dropout": 0.1, "options": options}, train={"epochs": 1})
    assert_exact(tmp_path, cfg, images(), draws=2)
