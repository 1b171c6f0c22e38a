"""Transformer classifier and causal LM over token ids: shapes, masking, dropout, and that they learn."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sisa.models.transformer import Transformer, TransformerLM

T, VOCAB, CLASSES, RATE = 16, 20, 3, 0.2
SMALL = {"vocab_size": VOCAB, "hidden": (32, 32), "heads": 4}


@pytest.fixture(scope="module")
def clf():
    return Transformer((T,), CLASSES, **SMALL, dropout=RATE, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def lm():
    return TransformerLM((T,), VOCAB, **SMALL, dropout=RATE, rngs=nnx.Rngs(0))


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, params, x, key):
    return nnx.merge(graphdef, params)(x, key=key)


@functools.partial(jax.jit, static_argnums=0)
def _grad_of_sum(graphdef, params, x):
    return jax.grad(lambda p: nnx.merge(graphdef, p)(x).sum())(params)


def run(model, x, key=None):
    """The model under jit (eager dispatch of every small op would make these tests slow)."""
    return _apply(*nnx.split(model), jnp.asarray(x), key)


def tokens(rng, lengths, t=T):
    """BOS, ordinary tokens, EOS, then padding (0) to length t, one row per length."""
    x = np.zeros((len(lengths), t), np.int32)
    for row, n in enumerate(lengths):
        if n:
            x[row, :n] = rng.integers(3, VOCAB, n)
            x[row, 0], x[row, n - 1] = 1, 2
    return x


def test_shapes_dtypes_and_token_dtypes(clf, lm):
    x = tokens(np.random.default_rng(0), [T, 5, 1, 0])
    for model, shape in ((clf, (4, CLASSES)), (lm, (4, T, VOCAB))):
        out = run(model, x)
        assert out.shape == shape and out.dtype == jnp.float32
        for dtype in (np.int64, np.float32):
            np.testing.assert_array_equal(run(model, x.astype(dtype)), out)


def test_eager_matches_jit(lm):
    x = tokens(np.random.default_rng(1), [T, 4, 9, 2])
    np.testing.assert_allclose(lm(jnp.asarray(x)), run(lm, x), atol=1e-5)


@pytest.mark.parametrize("with_key", [False, True])
def test_lm_is_causal_bitwise(lm, with_key):
    key = jax.random.key(7) if with_key else None  # dropout masks do not depend on content either
    for seed in range(6):
        rng = np.random.default_rng(seed)
        x = rng.integers(0, VOCAB, (4, T))
        t = int(rng.integers(0, T - 1))
        changed = x.copy()
        changed[:, t + 1:] = (x[:, t + 1:] + rng.integers(1, VOCAB, (4, T - t - 1))) % VOCAB
        before, after = run(lm, x, key), run(lm, changed, key)
        np.testing.assert_array_equal(before[:, : t + 1], after[:, : t + 1])
        assert not np.array_equal(before[:, t + 1:], after[:, t + 1:])  # the change did reach later positions


def test_lm_prefix_matches_shorter_input(lm):
    x = tokens(np.random.default_rng(2), [T, 9, 3, 0])
    np.testing.assert_allclose(run(lm, x[:, :7]), run(lm, x)[:, :7], atol=1e-5)


def test_classifier_ignores_padding(clf):
    """Rows of n real tokens padded to T score as the same rows with that padding cut off."""
    x = tokens(np.random.default_rng(3), [1, 5, 12, T - 1])
    np.testing.assert_allclose(run(clf, x), run(clf, x[:, : T - 1]), atol=1e-5)


def test_rows_are_independent_bitwise(clf, lm):
    rng = np.random.default_rng(4)
    x = tokens(rng, [7, T, 3, 0])
    other = x.copy()
    other[1:] = tokens(rng, [2, 11, T])
    for model in (clf, lm):
        np.testing.assert_array_equal(run(model, x)[0], run(model, other)[0])


def test_all_padding_rows_are_finite(clf, lm):
    x = jnp.zeros((4, T), jnp.int32)
    for model in (clf, lm):
        for key in (None, jax.random.key(0)):
            assert jnp.isfinite(run(model, x, key)).all()
        grads = _grad_of_sum(*nnx.split(model), x)
        assert all(jnp.isfinite(g).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("make", [Transformer, TransformerLM])
def test_hidden_validation(make):
    with pytest.raises(ValueError, match=r"equal widths, got hidden=\(32, 64\)"):
        make((T,), CLASSES, vocab_size=VOCAB, hidden=(32, 64), heads=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="width 30 is not divisible by heads=4"):
        make((T,), CLASSES, vocab_size=VOCAB, hidden=(30,), heads=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="at least one block"):
        make((T,), CLASSES, vocab_size=VOCAB, hidden=(), heads=4, rngs=nnx.Rngs(0))


def test_dropout_needs_a_key_and_a_rate(clf, lm):
    x = tokens(np.random.default_rng(5), [T, 6, 2, 9])
    k1, k2 = jax.random.key(1), jax.random.key(2)
    for model in (clf, lm):
        assert model.rate == RATE
        np.testing.assert_array_equal(run(model, x), run(model, x))
        np.testing.assert_array_equal(run(model, x, k1), run(model, x, k1))
        assert not np.allclose(run(model, x, k1), run(model, x))
        assert not np.allclose(run(model, x, k1), run(model, x, k2))
    for make, classes in ((Transformer, CLASSES), (TransformerLM, VOCAB)):
        plain = make((T,), classes, **SMALL, rngs=nnx.Rngs(0))
        np.testing.assert_array_equal(run(plain, x, k1), run(plain, x))


def test_lm_learns_a_fixed_sequence():
    seq = np.array([1, 5, 9, 3, 7, 11, 4, 2, 0, 0, 0, 0, 0, 0, 0, 0], np.int32)
    x = jnp.asarray(np.tile(seq, (4, 1)))
    inputs, targets, mask = x[:, :-1], x[:, 1:], (x[:, 1:] != 0)
    graphdef, params = nnx.split(TransformerLM((T - 1,), VOCAB, **SMALL, rngs=nnx.Rngs(0)), nnx.Param)
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def loss_fn(p):
        ce = optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(inputs), targets)
        return jnp.sum(ce * mask) / mask.sum()

    @jax.jit
    def step(p, o):
        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    first = float(loss_fn(params))
    for _ in range(60):
        params, opt, _ = step(params, opt)
    last = float(loss_fn(params))
    assert first > 2.0 and last < 0.1 * first, (first, last)
