"""What the shared resync decides to do for each FineTuneJob (handlers/resync.py), on the in-memory
cluster: TTL expiry once due, Preparing jobs re-gated, a Job that disappeared recreated, pods of a
Pending job looked at, progress read on a Running job at most once per interval, and nothing for the
rest. Running the work is the reconcile's, tested in test_reconcile_finetunejob.py."""

from __future__ import annotations

from functools import partial

from finetune_api.finetunejob import Phase
from finetune_operator.handlers.finetunejob import resync_finetunejob
from finetune_operator.handlers.resync import finetunejob_work
from finetune_operator.reconcile.cluster import JobEntry
from tests.unit.memory_cluster import World

OUTPUT = {"uri": "s3://bucket/run"}
NOW = 1_000_000.0


def is_full_reconcile(work: object) -> bool:
    return isinstance(work, partial) and work.func is resync_finetunejob


def world_with_job(**status: object) -> World:
    world = World()
    world.kube.create_or_adopt(
        {
            "kind": "Job",
            "metadata": {"name": "demo-train", "namespace": "default"},
            "spec": {},
            "status": status,
        }
    )
    return world


def test_a_finished_job_is_resynced_once_its_ttl_is_due_and_not_after_expiry() -> None:
    world = World()
    done = JobEntry("u1", Phase.SUCCEEDED, None, OUTPUT)
    assert finetunejob_work(world.cluster, "default", "demo", done, NOW) is None  # no TTL
    later = JobEntry("u1", Phase.FAILED, NOW + 5, OUTPUT)
    assert finetunejob_work(world.cluster, "default", "demo", later, NOW) is None
    due = JobEntry("u1", Phase.SUCCEEDED, NOW - 1, OUTPUT)
    assert is_full_reconcile(finetunejob_work(world.cluster, "default", "demo", due, NOW))
    world.memory.expired.add("u1")
    assert finetunejob_work(world.cluster, "default", "demo", due, NOW) is None


def test_a_preparing_job_is_gated_again_and_a_suspended_or_new_one_waits_for_events() -> None:
    world = World()
    preparing = JobEntry("u1", Phase.PREPARING, None, OUTPUT)
    assert is_full_reconcile(finetunejob_work(world.cluster, "default", "demo", preparing, NOW))
    for phase in (Phase.SUSPENDED, None):
        entry = JobEntry("u1", phase, None, OUTPUT)
        assert finetunejob_work(world.cluster, "default", "demo", entry, NOW) is None


def test_a_missing_job_is_recreated_and_a_pending_jobs_pods_are_looked_at() -> None:
    pending = JobEntry("u1", Phase.PENDING, None, OUTPUT)
    assert is_full_reconcile(finetunejob_work(World().cluster, "default", "demo", pending, NOW))
    without_pods = world_with_job()
    assert finetunejob_work(without_pods.cluster, "default", "demo", pending, NOW) is None
    with_pods = world_with_job(active=1)
    assert is_full_reconcile(finetunejob_work(with_pods.cluster, "default", "demo", pending, NOW))


def test_a_running_jobs_progress_is_read_at_most_once_per_interval() -> None:
    world = world_with_job(active=1, ready=1)
    running = JobEntry("u1", Phase.RUNNING, None, OUTPUT)
    work = finetunejob_work(world.cluster, "default", "demo", running, NOW)
    assert work is not None and not is_full_reconcile(work)  # a progress read, not a reconcile
    assert finetunejob_work(world.cluster, "default", "demo", running, NOW) is None  # not due again yet
    world.clock.advance(world.settings.resync_seconds)
    assert finetunejob_work(world.cluster, "default", "demo", running, NOW) is not None
    no_output = JobEntry("u2", Phase.RUNNING, None, None)
    assert finetunejob_work(world.cluster, "default", "demo", no_output, NOW) is None
