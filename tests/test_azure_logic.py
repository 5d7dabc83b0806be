"""The Azure backend's decisions, without a network: pool readiness, waiting (an injectable
clock, no real sleeping), bounded task submission, image checks."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace as NS

import azure.batch.models as bm
import pytest
from azure.core.exceptions import HttpResponseError

from common.backends import azure as az
from common.errors import ToolError
from tests.azure_settings import azure_settings


def node(state, **extra):
    return NS(id=f"tvm-{state}", state=state, start_task_info=extra.get("start_task_info"),
              errors=extra.get("errors"))


def pool(allocation="resizing", errors=None, **extra):
    return NS(id="p", resize_errors=errors, allocation_state=allocation, state="active", **extra)


def test_pool_ready_when_every_target_node_is_usable():
    assert not az.pool_state(pool(), [], 2).ready
    assert not az.pool_state(pool(), [node("starting"), node("idle")], 2).ready
    state = az.pool_state(pool("steady"), [node("idle"), node("running")], 2)
    assert state.ready and state.summary == "1 idle, 1 running"


def test_resize_error_stops_at_once_in_the_services_words():
    errors = [NS(code="AccountCoreQuotaReached", message="The core quota is 0.")]
    state = az.pool_state(pool("steady", errors), [], 2)
    assert state.error == "pool p cannot get its nodes: AccountCoreQuotaReached: The core quota is 0."


def test_start_task_failure_and_unusable_nodes_stop_at_once():
    info = NS(failure_info=NS(code="FailureExitCode", message="The task exited with exit code 1"))
    state = az.pool_state(pool(), [node("idle"), node("starttaskfailed", start_task_info=info)], 2)
    assert "start task failed: FailureExitCode: The task exited with exit code 1" in state.error
    state = az.pool_state(pool(), [node("unusable", errors=[NS(code="DiskFull", message="x")])], 1)
    assert state.error.endswith("is unusable: DiskFull: x")


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptedClient:
    """get_pool/list_nodes answer from a script, one step per poll."""

    def __init__(self, steps):
        self.steps = steps
        self.polls = 0

    def get_pool(self, pool_id):
        return self.steps[min(self.polls, len(self.steps) - 1)][0]

    def list_nodes(self, pool_id):
        nodes = self.steps[min(self.polls, len(self.steps) - 1)][1]
        self.polls += 1
        return nodes


@pytest.fixture
def backend(tmp_path):
    clock = FakeClock()
    made = az.AzureBackend(azure_settings(tmp_path), clock=clock.clock, sleep=clock.sleep)
    made.poll_seconds = 5
    made.fake_clock = clock
    real = made.client
    yield made
    real.close()
    made.storage.close()


def test_wait_reports_node_states_until_ready(backend):
    backend.client = ScriptedClient([(pool(), []), (pool(), [node("starting"), node("starting")]),
                                     (pool(), [node("starting"), node("idle")]),
                                     (pool("steady"), [node("idle"), node("idle")])])
    said = []
    backend.wait_for_nodes("p", 2, said.append)
    assert said == ["nodes: no nodes yet", "nodes: 2 starting", "nodes: 1 idle, 1 starting",
                    "nodes: 2 idle"]
    assert backend.fake_clock.sleeps == [5, 5, 5]


def test_wait_stops_at_once_on_a_quota_error(backend):
    errors = [NS(code="AccountCoreQuotaReached", message="quota")]
    backend.client = ScriptedClient([(pool(), []), (pool("steady", errors), [])])
    with pytest.raises(ToolError, match="AccountCoreQuotaReached: quota"):
        backend.wait_for_nodes("p", 2, lambda _: None)
    assert backend.fake_clock.now == 5  # one poll later, not after a timeout


def test_wait_gives_up_after_its_timeout(backend):
    backend.client = ScriptedClient([(pool(), [node("starting")])])
    with pytest.raises(ToolError, match="nodes not ready after 30 minutes"):
        backend.wait_for_nodes("p", 1, lambda _: None)
    assert backend.fake_clock.now == pytest.approx(az.POOL_READY_TIMEOUT_SECONDS, abs=5)


class TaskCollectionClient:
    """create_task_collection answering from a policy function; records each request."""

    def __init__(self, answer):
        self.answer = answer
        self.requests = []

    def create_task_collection(self, job_id, group):
        ids = [t.id for t in group.task_values]
        self.requests.append(ids)
        return self.answer(ids, len(self.requests))


def ok(ids):
    return NS(result_values=[NS(task_id=i, status="success", error=None) for i in ids])


def tasks(n):
    return [bm.BatchTaskCreateOptions(id=f"task-{i}", command_line="true") for i in range(n)]


def test_tasks_go_in_100_per_request():
    client = TaskCollectionClient(lambda ids, n: ok(ids))
    assert az.add_tasks(client, "job", tasks(250), sleep=lambda s: None) == 3
    assert sorted(len(r) for r in client.requests) == [50, 100, 100]


def test_server_errors_and_vanished_tasks_are_resubmitted_once_each():
    def answer(ids, n):
        if n == 1:  # one task failed on the server, one is missing from the answer
            return NS(result_values=[NS(task_id=ids[0], status="servererror", error=None)]
                      + [NS(task_id=i, status="success", error=None) for i in ids[2:]])
        return ok(ids)
    client = TaskCollectionClient(answer)
    az.add_tasks(client, "job", tasks(5), sleep=lambda s: None, in_flight=1)
    assert client.requests == [[f"task-{i}" for i in range(5)], ["task-0", "task-1"]]


def test_task_exists_counts_as_success():
    exists = NS(code="TaskExists", message=NS(value="The specified task already exists."))
    client = TaskCollectionClient(lambda ids, n: NS(result_values=[
        NS(task_id=i, status="clienterror", error=exists) for i in ids]))
    assert az.add_tasks(client, "job", tasks(3), sleep=lambda s: None) == 1


def test_a_refused_task_is_an_error_naming_it():
    bad = NS(code="InvalidPropertyValue", message=NS(value="commandLine is too long"))
    client = TaskCollectionClient(lambda ids, n: NS(result_values=[
        NS(task_id=i, status="clienterror", error=bad) for i in ids]))
    with pytest.raises(ToolError, match="task task-0 refused: InvalidPropertyValue: commandLine is too long"):
        az.add_tasks(client, "job", tasks(1), sleep=lambda s: None)


def test_endless_server_errors_are_bounded():
    def answer(ids, n):
        raise HttpResponseError(message="busy", response=NS(status_code=503, reason="busy", headers={},
                                                             text=lambda: "", request=None))
    client = TaskCollectionClient(answer)
    with pytest.raises(ToolError, match="could not be added after 5 attempts"):
        az.add_tasks(client, "job", tasks(100), sleep=lambda s: None)
    assert len(client.requests) == az.ADD_ATTEMPTS


def test_too_large_requests_are_halved():
    def answer(ids, n):
        if len(ids) > 25:
            raise HttpResponseError(message="too big", response=NS(
                status_code=413, reason="RequestBodyTooLarge", headers={}, text=lambda: "", request=None))
        return ok(ids)
    client = TaskCollectionClient(answer)
    az.add_tasks(client, "job", tasks(100), sleep=lambda s: None)
    assert sorted(len(r) for r in client.requests if len(r) <= 25) == [25, 25, 25, 25]


def image(publisher, offer, sku, agent, capable=True, end=None):
    return NS(image_reference=NS(publisher=publisher, offer=offer, sku=sku), node_agent_sku_id=agent,
              capabilities=["DockerCompatible"] if capable else [], batch_support_end_of_life=end)


def test_image_checks(tmp_path):
    settings = azure_settings(tmp_path)
    now = datetime(2026, 11, 24, tzinfo=timezone.utc)
    good = image("microsoft-dsvm", "ubuntu-hpc", "2404", "batch.node.ubuntu 24.04")
    retired = image("microsoft-azure-batch", "ubuntu-server-container", "20-04-lts",
                    "batch.node.ubuntu 20.04", end=datetime(2025, 4, 30, tzinfo=timezone.utc))
    assert az.image_problem([retired, good], settings, now) is None
    assert "not offered" in az.image_problem([retired], settings, now)
    late = image("microsoft-dsvm", "ubuntu-hpc", "2404", "batch.node.ubuntu 24.04", end=now - timedelta(days=1))
    assert "end of life" in az.image_problem([late], settings, now)
    plain = image("microsoft-dsvm", "ubuntu-hpc", "2404", "batch.node.ubuntu 24.04", capable=False)
    assert "cannot run containers" in az.image_problem([plain], settings, now)
    other_agent = image("microsoft-dsvm", "ubuntu-hpc", "2404", "batch.node.ubuntu 22.04")
    assert "needs node agent" in az.image_problem([other_agent], settings, now)
