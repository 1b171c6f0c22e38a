"""The shard ensemble: the single-shard functions mapped over a lane axis.

A lane holds one shard. Lanes run one after another (`lax.map`), each through the same
unbatched single-shard program, so a shard's bits cannot depend on how many shards train
with it: a `jax.vmap` over lanes compiles batched kernels whose float results change with
the width (training 8 shards together and retraining 2 of them gave different bits for
batch 32, hidden 16; tests/test_exactness_matrix.py). On a CPU a vmap bought little
(the sequential lanes keep a single-id deletion as fast and train ~10% slower end to end
on mnist5k), and a spare lane with nothing to train costs nothing.

With several devices the lane axis is laid along the mesh axis "ens" (`jax.shard_map`):
each device runs the same program on its own lanes, so shards train in parallel and a
shard's bits do not depend on how many devices share the work (tests/test_layout.py).

Lane counts are bucketed (per device a power of two, at least two when S >= 2, capped at the
device's share of S) so that a train and any number of deletions compile only a few
programs, all of which training compiles ahead (sisa.training.loop.compile_ahead); spare lanes
are inactive and their results dropped. Initial states are made at one width whatever the
number of shards, a few lanes a call: one init program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sisa.training.aot import Program
from sisa.training.step import ShardTrainer, seedless


def lane_bucket(width: int, shards: int, devices: int = 1) -> int:
    """Lanes to run `width` of `shards` shards on `devices`; the same count on every device.

    Per device: its lanes rounded up to a power of two, at least 2, capped at the device's
    share of S (ceil(S / devices)), but the cap is never under 2. So whenever S >= 2 no
    device runs a single lane, whatever the layout: with as many devices as shards each
    device runs one real lane and one spare. A lone shard (S = 1) runs unbatched at width 1
    on every layout (`runtime.device_count` gives it one device), so its bits do not depend
    on the layout either.
    """
    per_device = -(-width // devices)
    cap = max(-(-shards // devices), per_device, 2 if shards >= 2 else 1)
    return devices * min(1 << (max(per_device, 2) - 1).bit_length(), cap)


class Ensemble:
    def __init__(self, trainer: ShardTrainer, devices: int = 1):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        self.trainer = trainer
        self.devices = devices
        # Lanes run one after another (`lax.map`), each through the same unbatched program: a
        # vmap's kernels change with its width, and so did the bits of some shapes (batch 32,
        # hidden 16: training 8 shards together and retraining 2 of them disagreed).
        def init(shard_ids, seed):
            return jax.lax.map(lambda shard: trainer.init(shard, seed), shard_ids)

        def epoch(states, data, shard_ids, seed, stage, epoch, active):
            # The features stay whole and each batch is gathered from its lane in place: mapping
            # over them would copy every lane's rows out and back in on every epoch.
            x, rest = data["x"], {k: v for k, v in data.items() if k != "x"}

            def one(lane):
                state, rows, shard, on, at = lane
                return trainer.epoch(state, rows, shard, stage, epoch, on, seed, features=lambda idx: x[at, idx])

            return jax.lax.map(one, (states, rest, shard_ids, active, jnp.arange(x.shape[0])))
        self.mesh = Mesh(np.array(jax.local_devices()[:devices]), ("ens",))  # this process's own
        self.lane_sharding = NamedSharding(self.mesh, P("ens"))
        if devices > 1:
            lanes = P("ens")
            init = jax.shard_map(init, mesh=self.mesh, in_specs=(lanes, P()), out_specs=lanes, check_vma=False)
            epoch = jax.shard_map(
                epoch, mesh=self.mesh, in_specs=(lanes, lanes, lanes, P(), P(), P(), lanes), out_specs=(lanes, lanes),
                check_vma=False,  # per-lane loops; nothing crosses devices
            )
        # Fixed shardings in and out: a call with freshly placed inputs and a call with the
        # previous epoch's outputs hit the same compiled program.
        lane = self.lane_sharding
        key = trainer.identity  # devices: Program's own
        used = list(self.mesh.devices.flat)
        self.init = Program("init", jax.jit(init, in_shardings=(lane, None), out_shardings=lane), key, used)
        self.epoch = Program("epoch", jax.jit(
            epoch, in_shardings=(lane, lane, lane, None, None, None, lane), out_shardings=(lane, lane), donate_argnums=0),
            key, used)
        outputs = jax.vmap(trainer.outputs, in_axes=(0, None))  # the task's serving outputs, per lane
        self._probabilities = Program("probabilities", jax.jit(outputs), key, used[:1])
        self._serving = jax.sharding.SingleDeviceSharding(used[0])  # where predict's models live

    def width(self, shards_to_train: int, shards: int) -> int:
        return lane_bucket(shards_to_train, shards, self.devices)

    def place(self, tree):
        """Put lane-major arrays on the mesh, lane axis split over devices."""
        return jax.device_put(tree, self.lane_sharding)

    def init_width(self, shards: int) -> int:
        """Lanes per call of `init`: the fewest any training takes, whatever it trains."""
        return self.width(1, shards)

    def initial_states(self, shard_ids: list[int], shards: int, seed: int) -> list:
        """Each shard's initial state (host copies), `init_width` lanes a call: one init program
        serves every number of shards (a lane's bits do not depend on the width) and every seed."""
        width, out = self.init_width(shards), []
        for start in range(0, len(shard_ids), width):
            chunk = list(shard_ids[start : start + width])
            lanes = chunk + [chunk[0]] * (width - len(chunk))  # spare lanes repeat a shard, dropped
            out += unstack(self.init(self.place(np.asarray(lanes, np.int32)), seed_arg(seed)), width)[: len(chunk)]
        return out

    def precompile(self, width: int, capacity: int, row: dict) -> str:
        """Have `epoch` ready for `width` lanes of `capacity` rows each, without running it
        (`row`: one row of `lane_data`, for its shapes and dtypes); Program.precompile's outcome."""
        def lanes(tree, *shape):
            return jax.tree.map(lambda a: jax.ShapeDtypeStruct(
                (width, *shape, *np.shape(a)), jax.dtypes.canonicalize_dtype(np.asarray(a).dtype),
                sharding=self.lane_sharding), tree)

        return self.epoch.precompile(lanes(self.trainer.abstract_state), lanes(row, capacity), lanes(np.int32(0)),
                                     seed_arg(0), 0, 0, lanes(np.bool_(False)))

    @property
    def _input_dtype(self):
        return np.int32 if self.trainer.vocab_size else np.float32  # token ids, or features as float32

    def precompile_probabilities(self, lanes: int) -> str:
        """Have `probabilities` ready for `lanes` stacked constituents, without running it."""
        params = jax.tree.map(lambda a: jax.ShapeDtypeStruct((lanes, *a.shape), a.dtype, sharding=self._serving),
                              self.trainer.abstract_state["params"])
        x = jax.ShapeDtypeStruct((self.trainer.task.predict_batch, *self.trainer.input_shape), self._input_dtype)
        return self._probabilities.precompile(params, x)

    def probabilities(self, params, x: np.ndarray):
        """The task's serving outputs of every lane (classification: softmax [lanes, N, classes];
        see sisa.tasks), on store-format rows `x`. Inputs go in as float32 (what the model
        computes in whatever their dtype) or int32 token ids, in fixed chunks of the task's
        `predict_batch`: one program for any input."""
        batch, dtype = self.trainer.task.predict_batch, self._input_dtype
        params, out = jax.device_put(params, self._serving), []  # the models go up once per call, not per chunk
        for start in range(0, max(len(x), 1), batch):  # an empty input still runs once, for the outputs' shapes
            chunk = np.asarray(x[start : start + batch], dtype)
            pad = np.zeros((batch - len(chunk), *x.shape[1:]), dtype)
            got = jax.device_get(self._probabilities(params, np.concatenate([chunk, pad])))
            out.append(jax.tree.map(lambda a, n=len(chunk): np.asarray(a)[:, :n], got))
        return jax.tree.map(lambda *parts: np.concatenate(parts, axis=1), *out)


def serving_lanes(shards: int) -> int:
    """Lanes predict runs the served constituents at, whichever are served: S, at least 2 (a
    vmap's float results depend on its width). Compiled ahead at training for this width."""
    return max(shards, 2)


def seed_arg(seed: int) -> np.ndarray:
    """train.seed as the programs take it: a uint32 scalar argument, not a constant."""
    return np.uint32(seed)


def ensemble_for(trainer: ShardTrainer, devices: int = 1) -> Ensemble:
    """The Ensemble (and so the compiled programs) of `trainer` and the mesh: one per process for
    every trainer that differs only in its seeds (`seedless`), which the calls pass."""
    return _ensemble(seedless(trainer), devices)


@functools.cache
def _ensemble(trainer: ShardTrainer, devices: int) -> Ensemble:
    return Ensemble(trainer, devices)


ensemble_for.cache_clear = _ensemble.cache_clear  # new Programs from the next call on (tests)


def stack(states: list) -> dict:
    """Host-side stack of per-lane states (numpy: no device program per tree shape)."""
    return jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *states)


def unstack(states, lanes: int) -> list:
    """Per-lane host states: views into one host copy of each leaf (a copy: the device buffers
    are donated to the next epoch; one per leaf, not one per lane and leaf)."""
    host = jax.tree.map(np.array, jax.device_get(states))
    return [jax.tree.map(lambda a: a[i], host) for i in range(lanes)]
