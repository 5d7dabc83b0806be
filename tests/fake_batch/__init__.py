"""A fake Azure Batch service for end-to-end tests (REST API 2025-06-01, azure-batch 15).

    fake = FakeBatch("acct", key)          # or the `fake_batch` pytest fixture
    url = fake.start()                     # http://127.0.0.1:PORT for BatchClient
    ...
    fake.stop()                            # also kills every task process

It checks what a client sends as the real service would (SharedKey signature, api-version,
request bodies against Microsoft's spec, id rules, limits), keeps a record of every request
and task, and really runs tasks: resource files come from blob storage through their SAS
URLs, command lines run under bash on this machine (container images are recorded, never
run), output files go back to blob storage through theirs. Faults can be injected through
`fake.knobs` (see knobs.Knobs).

Not emulated (refused with 501 NotImplemented, or simply absent): job schedules, autoscale,
pool resize/update, node operations beyond list/get, multi-instance tasks, task dependencies,
exit conditions, job preparation/release/manager tasks, auto-storage resource files, managed
identities, task maxWallClockTime, If-Match/If-Modified-Since conditions. Containers are
never started: a task's command runs on this machine as-is, so images only matter as names.

Modules: server (HTTP, FakeBatch), api (one handler per operation), spec (routing and
schema validation from the spec), auth (SharedKey), rules (checks beyond the schema),
state (pools, nodes, jobs, tasks and their JSON), runner (the engine that runs tasks),
blobs (the node's SAS blob client), outputs (file patterns and blob names), odata
($filter, $select, paging), errors (BatchError answers), knobs (timings and faults).
"""
from .knobs import RETIRED_IMAGE, SUPPORTED_IMAGES, Knobs
from .server import FakeBatch, RecordedRequest
from .spec import API_VERSION
from .state import Task, UploadRecord

__all__ = ["API_VERSION", "FakeBatch", "Knobs", "RecordedRequest", "RETIRED_IMAGE",
           "SUPPORTED_IMAGES", "Task", "UploadRecord"]
