"""One reconciler: a snapshot of the workdir, a plan, one executor.

Every writer (train, forget, recovery after a crash) brings the workdir to the state its
ledger and config describe the same way:

    snapshot(wd)  ->  plan(snapshot)  ->  apply(wd, plan)

`plan` is a pure function of a `Snapshot` (ledger entries, which requests' ids are still in
the data store, each shard's finished stages with the requests their lineage saw and whether
their files are intact, leftovers of interrupted writes, the environment). It imports
nothing heavy, so the invariants below are tested on synthetic snapshots without JAX:

- the ids of every request (unfinished, or committed and back from a restored backup) leave
  the data store before anything is retrained;
- a checkpoint whose lineage holds an id of any request (committed or not) is dropped, with
  every later stage of its shard (stages are cumulative: they saw it too);
- a final checkpoint whose files no longer match their digests is dropped (damage); nothing
  is ever dropped because a read failed while the files are intact;
- every shard whose latest remaining stage is not the last trains from the stage after it;
- requests advance purged -> retrained -> committed only after those steps.

Readers (`status`, `predict`, `evaluate`, `verify`, `audit`) may build the plan to report
pending work; only `apply`, under the writer lock, changes anything.
"""

from __future__ import annotations

import dataclasses
import shutil

from sisa.checkpoint import saw_any
from sisa.data.store import leftovers as store_leftovers
from sisa.errors import SisaError


@dataclasses.dataclass(frozen=True)
class Request:
    seq: int
    ids: frozenset[int]
    state: str  # requested | purged | retrained | committed


@dataclasses.dataclass(frozen=True)
class Stage:
    stage: int
    saw: frozenset[int] = frozenset()  # seqs of requests whose ids its lineage holds
    intact: bool | None = None  # files match their digests; None: not checked


@dataclasses.dataclass(frozen=True)
class Snapshot:
    slices: int
    requests: tuple[Request, ...]
    unpurged: frozenset[int]  # seqs of requests (any state) with ids in the data store
    checkpoints: dict[int, tuple[Stage, ...]]  # shard -> finished stages, oldest first
    leftovers: bool = False  # temporaries of interrupted writes, unfinished stages
    environment_change: str | None = None  # why the environment refuses, if it does


@dataclasses.dataclass(frozen=True)
class Plan:
    clear_leftovers: bool
    purge: tuple[int, ...]  # requests whose ids leave the store
    drop: dict[int, tuple[int, ...]]  # shard -> stages to delete, newest first
    train: dict[int, int]  # shard -> stage its training restarts at
    finish: tuple[int, ...]  # unfinished requests, carried to committed
    refused: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.clear_leftovers or self.purge or self.drop or self.train or self.finish)

    def describe(self) -> list[str]:
        out = []
        if self.refused:
            out.append(f"refused: {self.refused}")
        if self.clear_leftovers:
            out.append("remove leftovers of interrupted writes")
        if self.purge:
            out.append(f"purge the ids of request(s) {list(self.purge)} from the data store")
        for s, stages in sorted(self.drop.items()):
            out.append(f"drop shard {s} stage(s) {sorted(stages)}")
        for s, r in sorted(self.train.items()):
            out.append(f"train shard {s} from stage {r}")
        if self.finish:
            out.append(f"commit request(s) {list(self.finish)}")
        return out

    def to_dict(self) -> dict:
        return {"steps": self.describe(), "purge": list(self.purge), "drop": {s: list(v) for s, v in self.drop.items()},
                "train": self.train, "finish": list(self.finish), "refused": self.refused}


def plan(snap: Snapshot) -> Plan:
    """The steps that bring the workdir described by `snap` to its goal. Pure."""
    finish = tuple(r.seq for r in snap.requests if r.state != "committed")
    purge = tuple(r.seq for r in snap.requests if r.seq in snap.unpurged)
    drop, train = {}, {}
    last = snap.slices - 1
    for shard, stages in sorted(snap.checkpoints.items()):
        doomed = set()
        first_seen = next((st.stage for st in stages if st.saw), None)
        if first_seen is not None:
            doomed |= {st.stage for st in stages if st.stage >= first_seen}
        doomed |= {st.stage for st in stages if st.intact is False}
        doomed |= {st.stage for st in stages if st.stage > last}  # an added slice whose examples are all forgotten
        kept = [st.stage for st in stages if st.stage not in doomed]
        if doomed:
            drop[shard] = tuple(sorted(doomed, reverse=True))
        latest = kept[-1] if kept else -1
        if latest < last:
            train[shard] = latest + 1
    return Plan(snap.leftovers, purge, drop, train, finish, snap.environment_change)


def snapshot(wd, *, check_final_files: bool = False, environment: bool = True, allow_environment_change=False):
    """Read the workdir into a Snapshot (and the environment to record, if the user allowed a
    change). `check_final_files` hashes each final checkpoint's files against their digests.
    Refuses when a lineage read holds a ledger head the ledger lacks (a cut ledger), and (with
    `environment`: a writer's snapshot) when the model's code or base changed since training."""
    if environment:
        wd.check_model()  # before a writer writes anything
    ledger = wd.ledger()
    entries = ledger.entries()
    requests = tuple(Request(e["seq"], frozenset(e["ids"]), e["state"]) for e in entries)
    store = wd.store() if requests else None  # a committed request's ids may be back (a restored backup)
    unpurged = frozenset(r.seq for r in requests if store.contains(sorted(r.ids)).any())
    # An id only ever sits in the shard the partition gives it, which the request recorded:
    # only those shards' lineages can hold it.
    touched: dict[int, set[int]] = {}
    for e in entries:
        for s in e["affected"]:
            touched.setdefault(int(s), set()).add(e["seq"])
    by_seq = {r.seq: r.ids for r in requests}
    last = wd.stages() - 1
    checkpoints, leftovers = {}, bool(store_leftovers(wd.store_path))
    for ckpt in wd.checkpoints:
        stages = []
        for stage in ckpt.stages():
            saw = frozenset()
            if ckpt.shard in touched:  # (each shard's newest lineage anchor: checked by wd.ledger())
                try:
                    ids, head = ckpt.seen(stage)
                except SisaError:  # an unreadable lineage cannot prove what it saw
                    ids = None
                else:
                    ledger.check_anchor(head, f"the lineage of shard {ckpt.shard} stage {stage}")
                saw = frozenset(seq for seq in touched[ckpt.shard] if ids is None or len(saw_any(ids, by_seq[seq])))
            intact = ckpt.files_intact(stage) if check_final_files and stage == last else None
            stages.append(Stage(stage, saw, intact))
        checkpoints[ckpt.shard] = tuple(stages)
        leftovers = leftovers or bool(ckpt.unfinished()) or (
            ckpt.directory.exists() and any(ckpt.directory.glob("*.orbax-checkpoint-tmp*")))
    change, new_env = None, None
    if environment:
        from sisa import environment as env_lib

        now = env_lib.current(wd.config.partition.shards)
        try:
            if env_lib.check(wd.manifest["environment"], [c["to"] for c in ledger.environments()], now,
                             allow=allow_environment_change, root=wd.root):
                new_env = now
        except SisaError as e:
            change = str(e)
    snap = Snapshot(wd.stages(), requests, unpurged, checkpoints, leftovers, change)
    return snap, new_env


def reconcile(wd, *, check_final_files: bool = False, allow_environment_change: bool = False,
              progress: bool = True, gate=None) -> dict:
    """Snapshot, plan and apply, under the caller's writer lock. Returns what was done. `gate`:
    see sisa.training.loop.train_shards."""
    snap, new_env = snapshot(wd, check_final_files=check_final_files, allow_environment_change=allow_environment_change)
    return apply(wd, plan(snap), new_environment=new_env, progress=progress, gate=gate)


def apply(wd, p: Plan, *, new_environment: dict | None = None, progress: bool = True, gate=None) -> dict:
    """Carry out a plan step by step. Every step is safe to repeat after a crash: the next
    snapshot sees what was done and plans the rest."""
    from sisa.faults import crash_point
    from sisa.training.loop import complete

    done = {"plan": p.describe(), "purged": list(p.purge), "dropped": {s: list(v) for s, v in p.drop.items()},
            "committed": list(p.finish), "trained": {"shards_trained": [], "stages_trained": {}, "examples_epochs": 0,
                                                     "seconds": 0.0}}
    if p.empty:
        return done
    if p.refused:
        raise SisaError(p.refused)
    ledger = wd.ledger()
    if new_environment is not None:
        ledger.accept_environment(wd.manifest["environment"], new_environment)
    if p.clear_leftovers:
        for path in store_leftovers(wd.store_path):  # an interrupted write's half, superseded features
            path.unlink(missing_ok=True)
        for ckpt in wd.checkpoints:
            ckpt.remove_temporaries()
    entries = {e["seq"]: e for e in ledger.entries()}
    if p.purge:
        gone = sorted(set().union(*(entries[seq]["ids"] for seq in p.purge)))
        wd.save_store(wd.store().without(gone))
        shutil.rmtree(wd.scratch_root, ignore_errors=True)  # a running verify's retrain saw the purged rows
        crash_point("after-purge")
    for seq in p.finish:
        ledger.advance(entries[seq], "purged")
    for s, stages in p.drop.items():
        for stage in stages:  # newest first: a crash leaves a shard's earlier stages, never a gap
            wd.checkpoints[s].delete(stage)
            crash_point("after-delete-stage")
    if p.train:
        done["trained"] = complete(wd, only=set(p.train), progress=progress, gate=gate)
    for seq in p.finish:
        ledger.advance(entries[seq], "retrained")
    if p.finish:
        crash_point("after-retrained")
        check_lineage(wd, [entries[seq] for seq in p.finish])
        crash_point("before-commit")
    for seq in p.finish:
        ledger.advance(entries[seq], "committed")
    return done


def check_lineage(wd, entries) -> None:
    """No checkpoint of an affected shard may still hold an id of these requests."""
    for e in entries:
        for s in map(int, e["affected"]):
            for stage in wd.checkpoints[s].stages():
                seen = saw_any(wd.checkpoints[s].seen(stage)[0], e["ids"])
                if len(seen):
                    raise SisaError(f"checkpoint shard {s} stage {stage} still holds forgotten ids {seen[:10].tolist()}")
