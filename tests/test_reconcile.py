"""The reconciler's plan, on synthetic snapshots: a pure function, no JAX, no files."""

import subprocess
import sys

from hypothesis import given, settings, strategies as st

from sisa.reconcile import Request, Snapshot, Stage, plan


def _snap(checkpoints, requests=(), unpurged=(), slices=3, **kw):
    return Snapshot(slices, tuple(requests), frozenset(unpurged), checkpoints, **kw)


def test_a_finished_run_with_nothing_pending_plans_nothing():
    p = plan(_snap({0: (Stage(0), Stage(1), Stage(2)), 1: (Stage(0), Stage(1), Stage(2))}))
    assert p.empty and p.describe() == []


def test_a_fresh_request_purges_drops_from_the_first_stage_that_saw_it_and_retrains_from_there():
    req = Request(1, frozenset({7}), "requested")
    p = plan(_snap({0: (Stage(0), Stage(1, frozenset({1})), Stage(2, frozenset({1}))), 1: (Stage(0), Stage(1), Stage(2))},
                   [req], unpurged={1}))
    assert p.purge == (1,) and p.finish == (1,)
    assert p.drop == {0: (2, 1)}  # newest first
    assert p.train == {0: 1}


def test_after_a_crash_mid_retraining_the_clean_stages_are_kept():
    req = Request(1, frozenset({7}), "purged")
    p = plan(_snap({0: (Stage(0), Stage(1))}, [req]))  # stage 1 retrained without the id; stage 2 missing
    assert p.purge == () and p.drop == {} and p.train == {0: 2} and p.finish == (1,)


def test_a_committed_request_whose_id_reappears_in_a_checkpoint_drops_it():
    """A stale checkpoint restored from a backup is dropped and rebuilt, never served."""
    req = Request(1, frozenset({7}), "committed")
    p = plan(_snap({0: (Stage(0), Stage(1), Stage(2, frozenset({1})))}, [req]))
    assert p.drop == {0: (2,)} and p.train == {0: 2} and p.finish == ()


def test_ids_of_a_committed_request_back_in_the_store_are_purged_again():
    p = plan(_snap({0: (Stage(0), Stage(1), Stage(2))}, [Request(1, frozenset({7}), "committed")], unpurged={1}))
    assert p.purge == (1,) and p.finish == () and not p.train


def test_only_damage_found_by_file_digests_drops_an_unseen_checkpoint():
    p = plan(_snap({0: (Stage(0), Stage(1), Stage(2, intact=False)), 1: (Stage(0), Stage(1), Stage(2, intact=None))}))
    assert p.drop == {0: (2,)} and p.train == {0: 2}


def test_sparse_checkpoints_restart_after_the_latest_kept_stage():
    p = plan(_snap({0: (Stage(1), Stage(3, frozenset({1})))}, [Request(1, frozenset({3}), "requested")], {1}, slices=4))
    assert p.drop == {0: (3,)} and p.train == {0: 2}


def test_a_refusal_is_part_of_the_plan():
    p = plan(_snap({0: (Stage(0),)}, slices=2, environment_change="jax 0.9 -> 0.10"))
    assert p.refused == "jax 0.9 -> 0.10" and p.train == {0: 1}
    assert any(line.startswith("refused") for line in p.describe())


@st.composite
def snapshots(draw):
    slices = draw(st.integers(1, 5))
    n_req = draw(st.integers(0, 4))
    requests = tuple(Request(seq, frozenset({seq}), draw(st.sampled_from(["requested", "purged", "retrained",
                                                                          "committed"])))
                     for seq in range(1, n_req + 1))
    checkpoints = {}
    for shard in range(draw(st.integers(1, 4))):
        stages = sorted(draw(st.sets(st.integers(0, slices - 1))))
        checkpoints[shard] = tuple(
            Stage(s, frozenset(draw(st.sets(st.sampled_from([r.seq for r in requests]) if requests else st.nothing()))),
                  draw(st.sampled_from([True, False, None])))
            for s in stages)
    unpurged = frozenset(draw(st.sets(st.sampled_from([r.seq for r in requests]) if requests else st.nothing())))
    return _snap(checkpoints, requests, unpurged, slices=slices, leftovers=draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_plan_invariants_hold_on_any_snapshot(snap):
    p = plan(snap)
    last = snap.slices - 1
    pending = {r.seq for r in snap.requests if r.state != "committed"}
    assert set(p.finish) == pending
    assert set(p.purge) == set(snap.unpurged)  # committed requests too: ids back from a restored backup
    for shard, stages in snap.checkpoints.items():
        dropped = set(p.drop.get(shard, ()))
        assert list(p.drop.get(shard, ())) == sorted(dropped, reverse=True)
        seen = [s.stage for s in stages if s.saw]
        for s in stages:
            must_go = s.saw or s.intact is False or (seen and s.stage >= min(seen))
            assert (s.stage in dropped) == bool(must_go), (shard, s)
        kept = [s.stage for s in stages if s.stage not in dropped]
        restart = (kept[-1] if kept else -1) + 1
        assert p.train.get(shard) == (restart if restart <= last else None)
    assert p.empty == (not (snap.leftovers or pending or snap.unpurged or p.drop or p.train))


def test_planning_imports_no_jax():
    code = ("import sys; from sisa.reconcile import plan, Snapshot, Stage; "
            "plan(Snapshot(2, (), frozenset(), {0: (Stage(0),)})); "
            "print([m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
