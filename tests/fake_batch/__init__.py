"""A fake Azure Batch service for end-to-end tests (REST API 2025-06-01, azure-batch 15).

    fake = FakeBatch("acct", key)          # or the `fake_batch` pytest fixture
    url = fake.start()                     # http://127.0.0.1:PORT for BatchClient
    ...
    fake.stop()                            # also kills every task process

It checks what a client sends as the real service would (SharedKey signature, api-version,
request bodies against Microsoft's spec, id rules, limits), keeps a record of every request
and task, and really runs tasks: resource files come from blob storage through their SAS
URLs; container tasks run in a bubblewrap sandbox holding only their image's files, with
`docker create` semantics (entrypoint, the task user's uid, no network) — see containers.py;
job preparation tasks run once per node before a job's tasks; output files go back to blob
storage through their SAS URLs; an auto pool and every file on its nodes vanish with its
job. It is as unkind as the service is documented to be, behind knobs (knobs.Knobs):
lagging task counts, lost replies, 408/429/503, unusable nodes, partial allocations.

Not emulated (refused with 501 NotImplemented, or simply absent): job schedules, autoscale,
pool resize/update, node operations beyond list/get/files, multi-instance tasks, task
dependencies, exit conditions, job release/manager tasks, auto-storage resource files,
managed identities, named user accounts, task maxWallClockTime, If-Match conditions.

Modules: server (HTTP, FakeBatch), api (one handler per operation), spec (routing and
schema validation from the spec), auth (SharedKey), rules (checks beyond the schema),
state (pools, nodes, jobs, tasks and their JSON), runner (the engine: pools, nodes,
scheduling), node (running tasks on a node), containers (images and the sandbox),
blobs (the node's SAS blob client), outputs (file patterns and blob names), odata
($filter, $select, paging), errors (BatchError answers), knobs (timings and faults).
"""
from .knobs import RETIRED_IMAGE, SUPPORTED_IMAGES, Knobs
from .server import FakeBatch, RecordedRequest
from .spec import API_VERSION
from .state import Task, UploadRecord

__all__ = ["API_VERSION", "FakeBatch", "Knobs", "RecordedRequest", "RETIRED_IMAGE",
           "SUPPORTED_IMAGES", "Task", "UploadRecord"]
