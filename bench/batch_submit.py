"""Benchmark: submitting and watching tasks on the fake Batch service, 20 ms per request.

    python -m bench.batch_submit [--tasks 1000] [--latency-ms 20] [--poll-tasks 10000]

1. Submitting N tasks: this backend (common.backends.azure.calls.add_tasks: 100 tasks a request,
   4 requests in flight, bounded retries) against one create_task request per task, the
   original scripts' way. Requests and wall time; the ratio is what to read.
2. One wait poll on a job of M tasks: get_job_task_counts (what the workflow polls) against
   listing every task (what the original scripts polled). Requests and bytes received.
Both run side by side against the same fake service, which runs in a child process so
that its own work (checking every request against the spec) does not share this process's
interpreter with the client being measured.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import azure.batch.models as bm
from azure.core.pipeline.policies import SansIOHTTPPolicy

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from common.backends.azure.calls import add_tasks

ROUNDS = 5
ACCOUNT = "benchbatch"
KEY = "YmVuY2htYXJrLWtleS1mb3ItdGhlLWZha2UtYmF0Y2gtc2VydmljZQ=="
SERVE = """
import sys, tempfile
from pathlib import Path
from tests.fake_batch import FakeBatch
with tempfile.TemporaryDirectory() as tmp:
    fake = FakeBatch(sys.argv[1], sys.argv[2], root=Path(tmp), latency=float(sys.argv[3]))
    print(fake.start(), flush=True)
    sys.stdin.read()
    fake.stop()
"""


def start_fake(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVE, ACCOUNT, KEY, str(latency)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def client_for(url: str, counter: "ByteCounter") -> BatchClient:
    return BatchClient(url, AzureNamedKeyCredential(ACCOUNT, KEY), per_call_policies=[counter])


class ByteCounter(SansIOHTTPPolicy):
    """Counts requests and response bytes as the client sees them."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0

    def on_response(self, request, response) -> None:
        self.requests += 1
        self.bytes += len(response.http_response.body() or b"")


def make_job(client, job_id: str) -> None:
    # A pool that never gets nodes: the tasks stay queued, so only submission is measured.
    client.create_pool(bm.BatchPoolCreateOptions(
        id=f"{job_id}-pool", vm_size="STANDARD_D2S_V3", target_dedicated_nodes=0,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc",
                                                     sku="2404", version="latest"),
            node_agent_sku_id="batch.node.ubuntu 24.04")))
    client.create_job(bm.BatchJobCreateOptions(
        id=job_id, pool_info=bm.BatchPoolInfo(pool_id=f"{job_id}-pool")))


def tasks(n: int) -> list[bm.BatchTaskCreateOptions]:
    return [bm.BatchTaskCreateOptions(id=f"task-{i}", command_line=f"/bin/bash -c 'echo {i}'")
            for i in range(1, n + 1)]


def submission(url: str, n: int, latency_ms: float) -> list[str]:
    counter = ByteCounter()
    client = client_for(url, counter)
    make_job(client, "one-by-one")
    counter.requests = 0
    one_by_one_tasks = tasks(n)  # built before the clock starts, as for ours below
    started = time.perf_counter()
    for task in one_by_one_tasks:
        client.create_task("one-by-one", task)
    one_by_one, one_requests = time.perf_counter() - started, counter.requests
    times = []
    for round_ in range(ROUNDS):  # ours takes a fraction of a second: take the median of 5
        make_job(client, f"collections-{round_}")
        our_tasks = tasks(n)
        counter.requests = 0
        started = time.perf_counter()
        add_tasks(client, f"collections-{round_}", our_tasks)
        times.append(time.perf_counter() - started)
        our_requests = counter.requests
    ours = sorted(times)[len(times) // 2]
    return [f"| submit {n} tasks, +{latency_ms:g} ms/request | one create_task per task: "
            f"{one_requests} requests, {one_by_one:.2f} s | this backend: {our_requests} requests, "
            f"{ours:.2f} s (median of {ROUNDS}) | **{one_by_one / ours:.0f}x** |"]


def polling(url: str, n: int) -> list[str]:
    counter = ByteCounter()
    client = client_for(url, counter)
    make_job(client, "watched")
    add_tasks(client, "watched", tasks(n))
    counter.requests = counter.bytes = 0
    client.get_job_task_counts("watched")
    counts = (counter.requests, counter.bytes)
    counter.requests = counter.bytes = 0
    listed = sum(1 for _ in client.list_tasks("watched"))
    assert listed == n
    return [f"| one wait poll, job of {n} tasks | list every task: {counter.requests} requests, "
            f"{counter.bytes:,} bytes | get_job_task_counts: {counts[0]} request, {counts[1]:,} bytes "
            f"| **{counter.bytes / counts[1]:,.0f}x** fewer bytes |"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--poll-tasks", type=int, default=10_000)
    args = parser.parse_args()
    slow, slow_url = start_fake(args.latency_ms / 1000)
    fast, fast_url = start_fake(0.0)
    try:
        rows = submission(slow_url, args.tasks, args.latency_ms)
        rows += polling(fast_url, args.poll_tasks)
    finally:
        for proc in (slow, fast):
            proc.communicate(input="", timeout=60)
    print("| case | baseline | this tool | ratio |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
