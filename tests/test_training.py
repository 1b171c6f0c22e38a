"""Training properties: isolation, lane-count independence, empty steps, compile count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sisa
from sisa.data.store import Store
from sisa.training.ensemble import Ensemble, ensemble_for, lane_bucket, seed_arg, unstack
from sisa.training.loop import lane_data
from sisa.training.step import ShardTrainer
from sisa.verification import final_digests
from sisa.workdir import Workdir
from tests.conftest import tree_equal


@pytest.fixture(scope="module")
def setup(tiny_ds, tiny_cfg):
    trainer = ShardTrainer(tiny_cfg, tiny_ds.x.shape[1:], tiny_ds.num_classes, 1.0)
    p = tiny_cfg.partition
    store = Store.create(tiny_ds, shards=p.shards, slices=p.slices, strategy=p.strategy, seed=p.seed)
    return trainer, store


def _train_lanes(trainer, store, lanes, epochs=2):
    ens = ensemble_for(trainer)
    data = lane_data(store, lanes, 128)
    seed = seed_arg(trainer.cfg.train.seed)
    states = ens.init(jnp.asarray(lanes, jnp.int32), seed)
    for stage in range(trainer.cfg.partition.slices):
        for epoch in range(epochs):
            states, _ = ens.epoch(states, data, jnp.asarray(lanes, jnp.int32), seed, stage, epoch,
                                  jnp.ones(len(lanes), bool))
    return unstack(states, len(lanes))


def test_shard_alone_equals_shard_in_ensemble(setup):
    trainer, store = setup
    together = _train_lanes(trainer, store, [0, 1, 2])
    for lanes in ([1, 0], [1, 2, 0, 0]):  # other company, other widths
        alone = _train_lanes(trainer, store, lanes)
        assert tree_equal(alone[0], together[1])


def test_changing_one_shard_changes_no_other(tiny_ds, tiny_cfg, tmp_path):
    sisa.train(tmp_path / "a", tiny_cfg, dataset=tiny_ds, progress=False)
    store = Workdir.open(tmp_path / "a").store()
    shard0 = np.isin(tiny_ds.ids, store.ids[store.shard == 0])
    y = tiny_ds.y.copy()
    y[shard0] = (y[shard0] + 1) % tiny_ds.num_classes  # different labels in shard 0 only
    import dataclasses

    sisa.train(tmp_path / "b", tiny_cfg, dataset=dataclasses.replace(tiny_ds, y=y), progress=False)
    a, b = final_digests(Workdir.open(tmp_path / "a")), final_digests(Workdir.open(tmp_path / "b"))
    assert a[0] != b[0]
    assert a[1] == b[1] and a[2] == b[2]


def test_all_padding_step_leaves_state_unchanged(setup):
    trainer, _ = setup
    state = trainer.init(0)
    x = jnp.ones((16, 8))
    y = jnp.zeros(16, jnp.int32)
    moved, _ = trainer.step(state, x, y, jnp.zeros(16, bool), None)
    assert tree_equal(moved, state)
    # Adam would move on zero gradients; make sure the guard, not luck, keeps it still:
    warm, _ = trainer.step(state, x, y, jnp.ones(16, bool), None)
    again, _ = trainer.step(warm, x, y, jnp.zeros(16, bool), None)
    assert tree_equal(again, warm)


def test_inactive_lanes_are_untouched(setup):
    trainer, store = setup
    ens = Ensemble(trainer)
    seed = seed_arg(trainer.cfg.train.seed)
    states = ens.init(jnp.arange(2, dtype=jnp.int32), seed)
    before = unstack(states, 2)
    after, _ = ens.epoch(states, lane_data(store, [0, 1], 128), jnp.arange(2, dtype=jnp.int32), seed, 0, 0,
                         jnp.array([True, False]))
    after = unstack(after, 2)
    assert tree_equal(after[1], before[1]) and not tree_equal(after[0], before[0])


def test_lane_buckets_bound_the_programs():
    assert [lane_bucket(w, 20) for w in (1, 2, 3, 5, 9, 17, 20)] == [2, 2, 4, 8, 16, 20, 20]
    assert lane_bucket(1, 1) == 1


_LOWERINGS: list[str] = []


def _count_lowering(event: str, _secs: float, **_) -> None:
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
        _LOWERINGS.append(event)


def test_train_and_many_forgets_compile_few_programs(tiny_ds, tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(model={"hidden": (17,)})  # a trainer no other test compiled
    root = tmp_path / "run"
    jax.monitoring.register_event_duration_secs_listener(_count_lowering)
    # A trainer no other test built, so every program here is lowered and compiled, once each.
    _LOWERINGS.clear()
    sisa.train(root, cfg, dataset=tiny_ds, progress=False)
    wd = Workdir.open(root)
    store = wd.store()
    for shard in range(3):  # single-id requests in every shard and slice: 2-lane programs
        for slc in range(3):
            sisa.forget(root, store.ids[(store.shard == shard) & (store.slice == slc)][:1].tolist(), progress=False)
    ens = ensemble_for(wd.trainer, 1)  # conftest: SISA_DEVICES=1
    assert ens.epoch.programs() == 2  # 3 lanes (train) + 2 lanes (every forget)
    assert ens.init.programs() == 1  # 2 lanes a call (Ensemble.init_width), whatever the width
    assert len(_LOWERINGS) <= 6, len(_LOWERINGS)  # those three, and no per-call helpers


def test_another_seed_compiles_nothing_and_holds_no_new_program(tiny_ds, tiny_cfg, tmp_path):
    """The seed is an argument of the programs, not a constant: a seed sweep (experiments, LiRA's
    shadows) compiles once, and a long-lived process does not pile up executables."""
    from sisa.training import aot

    cfg = tiny_cfg.replace(model={"hidden": (23,)})
    sisa.train(tmp_path / "a", cfg, dataset=tiny_ds, progress=False)
    ens = ensemble_for(Workdir.open(tmp_path / "a").trainer, 1)
    compiled, held = aot.counts["compiled"], ens.epoch.programs() + ens.init.programs()
    for seed in (1, 2**32 - 1):
        sisa.train(tmp_path / f"s{seed}", cfg.replace(train={"seed": seed}), dataset=tiny_ds, progress=False)
        assert ensemble_for(Workdir.open(tmp_path / f"s{seed}").trainer, 1) is ens
    assert aot.counts["compiled"] == compiled and ens.epoch.programs() + ens.init.programs() == held
    a, b = (Workdir.open(tmp_path / r).checkpoints[0].restore(0)[0]["params"] for r in ("a", "s1"))
    assert not tree_equal(a, b)  # and the seed still decides the model


_FRESH_FORGET = """
import json, sys, jax
events = []
jax.monitoring.register_event_duration_secs_listener(lambda e, s, **_: events.append(e))
import sisa
sisa.forget(sys.argv[1], [int(sys.argv[2])], progress=False)
print(json.dumps({e: events.count(e) for e in set(events)}))
"""


def test_fresh_process_loads_stored_programs_and_gets_the_same_bits(tiny_ds, tiny_cfg, tmp_path):
    """A fresh process neither traces nor compiles the training programs another one stored
    (sisa.training.aot), and the loaded programs compute the same bits."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    cfg = tiny_cfg.replace(model={"hidden": (19,)})  # programs no other test stored
    a, b = tmp_path / "a", tmp_path / "b"
    sisa.train(a, cfg, dataset=tiny_ds, progress=False)
    shutil.copytree(a, b)
    victim = int(Workdir.open(a).store().ids[5])
    sisa.forget(a, [victim], progress=False)  # this process compiles and stores the 2-lane programs
    run = subprocess.run([sys.executable, "-c", _FRESH_FORGET, str(b), str(victim)], capture_output=True, text=True,
                         env={**os.environ, "SISA_DEVICES": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    events = json.loads(run.stdout.strip().splitlines()[-1])
    assert events.get("/jax/core/compile/backend_compile_duration", 0) == 0, (events, run.stderr[-3000:])
    assert events.get("/jax/core/compile/jaxpr_to_mlir_module_duration", 0) == 0, events
    assert final_digests(Workdir.open(a)) == final_digests(Workdir.open(b))


def test_damaged_stored_programs_are_compiled_afresh(tiny_ds, tiny_cfg, tmp_path):
    """A truncated program file in the cache costs a compile, never a wrong or failed run."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    cache = tmp_path / "programs"
    env = {**os.environ, "SISA_DEVICES": "1", "SISA_CACHE_DIR": str(cache)}
    cfg = tiny_cfg.replace(model={"hidden": (29,)})  # programs no other test holds
    a, b = tmp_path / "a", tmp_path / "b"
    sisa.train(a, cfg, dataset=tiny_ds, progress=False)
    shutil.copytree(a, b)
    victim = int(Workdir.open(a).store().ids[7])

    def run():
        return subprocess.run([sys.executable, "-c", _FRESH_FORGET, str(b), str(victim)], capture_output=True,
                              text=True, env=env)

    first = run()  # stores the 2-lane programs in the fresh cache
    assert first.returncode == 0, first.stderr[-2000:]
    stored = sorted(cache.glob("*.jaxexe"))
    assert stored
    for path in stored:
        path.write_bytes(path.read_bytes()[:100])
    shutil.rmtree(b)
    shutil.copytree(a, b)
    second = run()
    assert second.returncode == 0, second.stderr[-2000:]
    events = json.loads(second.stdout.strip().splitlines()[-1])
    assert events.get("/jax/core/compile/backend_compile_duration", 0) >= 2  # init and epoch, again
    sisa.forget(a, [victim], progress=False)
    assert final_digests(Workdir.open(a)) == final_digests(Workdir.open(b))
    assert all(p.stat().st_size > 100 for p in cache.glob("*.jaxexe"))  # rewritten whole
