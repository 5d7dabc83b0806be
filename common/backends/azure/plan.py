"""--dry-run on Azure: the request bodies a pool and job would send, and the order they go in.

Pure: built from the same builders as the real requests (builders.py), with secrets and SAS
signatures hidden; nothing is sent (the SAS URLs come signed with a placeholder key).
"""
from __future__ import annotations

from common.backends.azure import builders as bb
from common.backends.azure import registry
from common.config import AppConfig
from common.model import JobSpec, PoolSpec


def describe(pool: PoolSpec, job: JobSpec, setup: bb.NodeSetup, urls: bb.TaskUrls,
             app: AppConfig, shown_tasks: int = 3) -> list[tuple[str, str]]:
    """(title, text) of the pool (a named one), the job, the first tasks, the images and the
    requests in order."""
    secrets = app.secrets()
    tasks = [bb.task_options(t, job, urls, setup.registry) for t in job.tasks[:shown_tasks]]
    pool_part = [] if job.auto_pool else [
        ("pool (POST /pools)", bb.redacted_json(bb.pool_options(pool, setup), secrets))]
    nodes = (job.auto_pool or pool).node_count + (job.auto_pool or pool).spot_node_count
    images = ([("images (pulled by every node)", registry.images_text(
        [(job.image, setup.registry)], nodes, app.pool_os_disk_gb))] if job.image else [])
    return (pool_part
            + [("job (POST /jobs, with its job preparation task"
                + (" and auto pool)" if job.auto_pool else ")"),
                bb.redacted_json(bb.job_options(job, setup, urls), secrets))]
            + [(f"task {t.id} (POST /jobs/{job.job_id}/addtaskcollection)",
                bb.redacted_json(t, secrets)) for t in tasks]
            + images
            + [("requests, in order", "\n".join(f"{n}. {step}" for n, step in
                                                  enumerate(requests_in_order(pool, job), 1)))])


def requests_in_order(pool: PoolSpec, job: JobSpec) -> list[str]:
    """What starting the job sends: the job is created waiting (noaction), every task is
    added, then it is told to end with its last task — or, for an adaptive campaign, only
    once the last wave is in."""
    chunks = len(bb.chunks(list(job.tasks)))
    steps = ["GET /supportedimages (the VM image is offered and container-capable)"]
    if not job.auto_pool:
        steps.append(f"POST /pools ({pool.pool_id})")
    steps += [f"POST /jobs ({job.job_id}, onAllTasksComplete: noaction)",
              f"POST /jobs/{job.job_id}/addtaskcollection x {chunks} "
              f"({len(job.tasks)} task(s), up to {bb.TASKS_PER_REQUEST} each)"]
    if job.seal:
        steps.append(f"PATCH /jobs/{job.job_id} (onAllTasksComplete: terminatejob: the job ends "
                     "when its last task does" + (", and its auto pool with it)" if job.auto_pool
                                                  else ")"))
    else:
        steps.append(f"while the tasks run: more tasks added in waves until the target "
                     f"uncertainty; then PATCH /jobs/{job.job_id} (onAllTasksComplete: "
                     "terminatejob), and the job ends with its last task")
    return steps
