"""Low-rank adapters on a frozen base model: parameter-efficient SISA (S3T-style).

With `train.adapter = "lora"` each shard trains, slice by slice, only a pair (A [in, r],
B [r, out]) per dense kernel W of the base; the model computes with W + A @ B. The base is
fixed, public input (trained on data never subject to deletion), named by `model.base`:

* a sisa workdir of one shard: its final model; or
* an orbax checkpoint directory holding the model's parameters (`ocp.StandardCheckpointer().
  save(path, params)`, params as `nnx.to_pure_dict(nnx.state(model, nnx.Param))`).

Checkpoints then hold only the adapters and their optimizer state; a deletion retrains only the
affected shard's adapters from its slice. The base's digest is in the manifest (and so in the
certificate): a later command refuses a base that changed. The base's arrays are constants of
the compiled programs, whose cache key holds that digest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sisa.errors import SisaError


def _leaves(tree, prefix=()):
    """(path, leaf) pairs of a nested dict, in sorted key order."""
    if isinstance(tree, dict):
        for k in sorted(tree, key=str):
            yield from _leaves(tree[k], (*prefix, str(k)))
    else:
        yield prefix, tree


def digest(params) -> str:
    """sha256 (16 hex) over a parameter tree's paths, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for path, leaf in _leaves(params):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{'/'.join(path)}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _adapted(path, leaf) -> bool:
    return path[-1] == "kernel" and np.ndim(leaf) == 2  # dense kernels (nnx.Linear); not embeddings or convs


def load_base(path: str, target) -> dict:
    """The base's parameters, restored to the structure and shapes of `target` (a model's
    abstract parameters: numpy zeros)."""
    root = Path(path)
    if not root.exists():
        raise SisaError(f"base model {path} does not exist (model.base: a sisa workdir or an orbax checkpoint)",
                        kind="bad_input")
    if (root / "sisa.json").exists():
        from sisa.workdir import Workdir

        wd = Workdir.open(root)
        if wd.config.partition.shards != 1:
            raise SisaError(f"base model {path} is a sisa run of {wd.config.partition.shards} shards; a base is one "
                            "model: train it with --shards 1", kind="bad_input")
        last = wd.stages() - 1
        if wd.checkpoints[0].latest() != last:
            raise SisaError(f"base model {path} has not finished training; run `sisa train --workdir {path}`",
                            kind="bad_input")
        params = wd.checkpoints[0].restore(last)[0]["params"]
    else:
        import orbax.checkpoint as ocp

        try:
            params = ocp.StandardCheckpointer().restore(root.resolve(), target)
        except Exception as e:
            raise SisaError(f"base model {path} is not an orbax checkpoint of this model's parameters: "
                            f"{type(e).__name__}: {str(e)[:300]}", kind="bad_input") from None
    want, got = dict(_leaves(target)), dict(_leaves(params))
    for p in sorted(want.keys() | got.keys()):
        a, b = want.get(p), got.get(p)
        if a is None or b is None or np.shape(a) != np.shape(b):
            raise SisaError(f"base model {path} does not match the model: parameter {'/'.join(p)} has shape "
                            f"{None if b is None else np.shape(b)} there, the model needs "
                            f"{None if a is None else np.shape(a)} (same model.name, hidden, options and data shape)",
                            kind="bad_input")
    return jax.tree.map(lambda t, a: np.asarray(a, np.asarray(t).dtype), target, params)


def describe_base(path: str) -> dict:
    """What the manifest records of a base: its absolute path and its parameters' digest (read
    as stored, without a model to shape them)."""
    root = Path(path).resolve()
    if (root / "sisa.json").exists():
        from sisa.workdir import Workdir

        wd = Workdir.open(root)
        target = wd.trainer.abstract_state["params"]
    else:
        target = None
    if target is None:
        import orbax.checkpoint as ocp

        try:
            params = ocp.StandardCheckpointer().restore(root)
        except Exception as e:
            raise SisaError(f"base model {path} is neither a sisa workdir nor an orbax checkpoint: "
                            f"{type(e).__name__}: {str(e)[:300]}", kind="bad_input") from None
    else:
        params = load_base(str(root), target)
    return {"path": str(root), "digest": digest(params)}


def check_base(path: str, recorded: dict) -> None:
    now = describe_base(path)
    if now["digest"] != recorded.get("digest"):
        raise SisaError(f"base model {path} changed since this run was trained (digest {recorded.get('digest')} then, "
                        f"{now['digest']} now): its adapters were trained on the other; restore that base",
                        kind="bad_input")


def init(base, rank: int, key) -> dict:
    """Adapters for every dense kernel of `base`: A random (scaled by 1/sqrt(in)), B zero, so
    that training starts from the base's own function."""
    out = {}
    for i, (path, leaf) in enumerate(_leaves(base)):
        if not _adapted(path, leaf):
            continue
        fan_in, fan_out = np.shape(leaf)
        a = jax.random.normal(jax.random.fold_in(key, i), (fan_in, rank), jnp.float32) / np.sqrt(fan_in)
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = {"a": a.astype(leaf.dtype), "b": jnp.zeros((rank, fan_out), leaf.dtype)}
    if not out:
        raise SisaError("the base model has no dense kernel to adapt (train.adapter = \"lora\" adapts nnx.Linear "
                        "layers)", kind="bad_input")
    return out


def merge(base, adapters) -> dict:
    """The base's parameters with W + A @ B for every adapted kernel."""
    def walk(b, a):
        if not isinstance(b, dict):
            return b if a is None else b + a["a"] @ a["b"]
        return {k: walk(v, (a or {}).get(str(k)) if isinstance(a, dict) else None) for k, v in b.items()}

    return walk(base, adapters)
