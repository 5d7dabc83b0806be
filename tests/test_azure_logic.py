"""The Azure backend's decisions, without a network: pool readiness, waiting (an injectable
clock, no real sleeping), bounded task submission, image checks."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace as NS

import azure.batch.models as bm
import pytest
from azure.core.exceptions import HttpResponseError

from common.backends.azure import backend as az
from common.backends.azure import calls
from common.backends.azure import checks as ac
from common.errors import ToolError
from tests.azure_settings import azure_settings


def node(state, **extra):
    return NS(id=f"tvm-{state}", state=state, start_task_info=extra.get("start_task_info"),
              errors=extra.get("errors"))


def pool(allocation="resizing", errors=None, **extra):
    return NS(id="p", resize_errors=errors, allocation_state=allocation, state="active", **extra)


def test_pool_is_ready_as_soon_as_one_node_can_run_tasks():
    assert not ac.pool_state(pool(), []).ready
    assert not ac.pool_state(pool(), [node("starting"), node("starting")]).ready
    state = ac.pool_state(pool(), [node("starting"), node("idle")])
    assert state.ready and state.summary == "1 idle, 1 starting"


def test_resize_error_with_no_node_stops_at_once_in_the_services_words():
    errors = [NS(code="AccountCoreQuotaReached", message="The core quota is 0.")]
    state = ac.pool_state(pool("steady", errors), [])
    assert state.error == "pool p cannot get its nodes: AccountCoreQuotaReached: The core quota is 0."


def test_a_partial_allocation_is_a_warning_not_the_end():
    errors = [NS(code="AllocationTimedout", message="Only 2 of 4 nodes were allocated.")]
    state = ac.pool_state(pool("steady", errors), [node("idle"), node("starting")])
    assert state.ready and state.error is None
    assert state.warnings == ("pool p did not get all its nodes: AllocationTimedout: Only 2 of 4 "
                              "nodes were allocated.",)


def test_one_broken_node_is_named_while_the_others_work():
    info = NS(failure_info=NS(code="FailureExitCode", message="The task exited with exit code 1"))
    state = ac.pool_state(pool(), [node("idle"), node("starttaskfailed", start_task_info=info)])
    assert state.ready and state.error is None
    assert "start task failed: FailureExitCode: The task exited with exit code 1" in state.warnings[0]


def test_only_a_pool_with_no_usable_node_and_none_coming_is_dead():
    broken = node("unusable", errors=[NS(code="DiskFull", message="x")])
    assert ac.pool_state(pool(), [broken]).error is None  # still resizing: more may come
    assert ac.pool_state(pool("steady"), [broken, node("starting")]).error is None
    assert ac.pool_state(pool("steady"), [broken]).error.endswith("is unusable: DiskFull: x")


def test_pool_health_from_the_services_node_counts():
    counts = NS(dedicated=NS(idle=1, running=2, unusable=1, starting=0),
                low_priority=NS(running=1, preempted=2))
    health = ac.pool_health(counts, pool("steady"))
    assert (health.usable, health.broken, health.preempted, health.dead) == (4, 1, 2, False)
    assert health.text() == "nodes: 1 idle, 2 running, 1 unusable; Spot: 2 preempted, 1 running"
    dead = ac.pool_health(NS(dedicated=NS(unusable=2), low_priority=None), pool("steady"))
    assert dead.dead and not ac.pool_health(NS(dedicated=NS(unusable=2), low_priority=None),
                                            pool("resizing")).dead


def test_a_pool_whose_every_spot_node_is_preempted_is_being_replaced_not_dead():
    """The spec: preempted nodes count in currentLowPriorityNodes, the pool stays steady and
    Batch works back to its target — so waiting helps, as for nodes still starting."""
    counts = NS(dedicated=None, low_priority=NS(preempted=3))
    health = ac.pool_health(counts, pool("steady"))
    assert (health.usable, health.coming, health.preempted, health.dead) == (0, 0, 3, False)
    assert health.preempted_text() == "3 Spot node(s) preempted (all of them), being replaced by Batch"
    some = ac.pool_health(NS(dedicated=NS(idle=1), low_priority=NS(preempted=1)), pool("steady"))
    assert some.preempted_text() == "1 Spot node(s) preempted, being replaced by Batch"
    assert ac.pool_health(NS(dedicated=NS(idle=1), low_priority=None), pool("steady")).preempted_text() == ""
    # waiting for the first node: preempted ones are on their way back, said once as a note
    state = ac.pool_state(pool("steady"), [node("preempted"), node("preempted")])
    assert (state.ready, state.error) == (False, None)
    assert state.notes == ("pool p: 2 Spot node(s) preempted: Batch replaces them when capacity "
                           "returns",)
    assert ac.pool_state(pool("steady"), [node("unusable", errors=[])]).error is not None


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


def test_wait_reports_node_states_until_one_is_ready(backend):
    backend.client = ScriptedClient([(pool(), []), (pool(), [node("starting"), node("starting")]),
                                     (pool(), [node("starting"), node("idle")])])
    said = []
    backend.wait_for_nodes("p", said.append)
    assert said == ["nodes: no nodes yet", "nodes: 2 starting", "nodes: 1 idle, 1 starting"]
    assert backend.fake_clock.sleeps == [5, 5]


def test_wait_goes_on_past_a_bad_node_and_says_so(backend):
    bad = node("unusable", errors=[NS(code="NodeUnusable", message="disk")])
    backend.client = ScriptedClient([(pool("steady"), [bad, node("starting")]),
                                     (pool("steady"), [bad, node("idle")])])
    said = []
    backend.wait_for_nodes("p", said.append)
    assert any("node tvm-unusable is unusable: NodeUnusable: disk" in line and
               "goes on with the other nodes" in line for line in said)


def test_wait_stops_at_once_on_a_quota_error(backend):
    errors = [NS(code="AccountCoreQuotaReached", message="quota")]
    backend.client = ScriptedClient([(pool(), []), (pool("steady", errors), [])])
    with pytest.raises(ToolError, match="AccountCoreQuotaReached: quota"):
        backend.wait_for_nodes("p", lambda _: None)
    assert backend.fake_clock.now == 5  # one poll later, not after a timeout


def test_wait_gives_up_after_its_timeout(backend):
    backend.client = ScriptedClient([(pool(), [node("starting")])])
    with pytest.raises(ToolError, match="no node ready after 30 minutes"):
        backend.wait_for_nodes("p", lambda _: None)
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
    assert calls.add_tasks(client, "job", tasks(250), sleep=lambda s: None) == 3
    assert sorted(len(r) for r in client.requests) == [50, 100, 100]


def test_server_errors_and_vanished_tasks_are_resubmitted_once_each():
    def answer(ids, n):
        if n == 1:  # one task failed on the server, one is missing from the answer
            return NS(result_values=[NS(task_id=ids[0], status="servererror", error=None)]
                      + [NS(task_id=i, status="success", error=None) for i in ids[2:]])
        return ok(ids)
    client = TaskCollectionClient(answer)
    calls.add_tasks(client, "job", tasks(5), sleep=lambda s: None, in_flight=1)
    assert client.requests == [[f"task-{i}" for i in range(5)], ["task-0", "task-1"]]


def test_task_exists_counts_as_success():
    exists = NS(code="TaskExists", message=NS(value="The specified task already exists."))
    client = TaskCollectionClient(lambda ids, n: NS(result_values=[
        NS(task_id=i, status="clienterror", error=exists) for i in ids]))
    assert calls.add_tasks(client, "job", tasks(3), sleep=lambda s: None) == 1


def test_a_refused_task_is_an_error_naming_it():
    bad = NS(code="InvalidPropertyValue", message=NS(value="commandLine is too long"))
    client = TaskCollectionClient(lambda ids, n: NS(result_values=[
        NS(task_id=i, status="clienterror", error=bad) for i in ids]))
    with pytest.raises(ToolError, match="task task-0 refused: InvalidPropertyValue: commandLine is too long"):
        calls.add_tasks(client, "job", tasks(1), sleep=lambda s: None)


def test_endless_server_errors_are_bounded():
    def answer(ids, n):
        raise HttpResponseError(message="busy", response=NS(status_code=503, reason="busy", headers={},
                                                             text=lambda: "", request=None))
    client = TaskCollectionClient(answer)
    with pytest.raises(ToolError, match="could not be added after 5 attempts"):
        calls.add_tasks(client, "job", tasks(100), sleep=lambda s: None)
    assert len(client.requests) == calls.ATTEMPTS


def test_too_large_requests_are_halved():
    def answer(ids, n):
        if len(ids) > 25:
            raise HttpResponseError(message="too big", response=NS(
                status_code=413, reason="RequestBodyTooLarge", headers={}, text=lambda: "", request=None))
        return ok(ids)
    client = TaskCollectionClient(answer)
    calls.add_tasks(client, "job", tasks(100), sleep=lambda s: None)
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
    assert ac.image_problem([retired, good], settings, now) is None
    assert "not offered" in ac.image_problem([retired], settings, now)
    late = image("microsoft-dsvm", "ubuntu-hpc", "2404", "batch.node.ubuntu 24.04", end=now - timedelta(days=1))
    assert "end of life" in ac.image_problem([late], settings, now)
    plain = image("microsoft-dsvm", "ubuntu-hpc", "2404", "batch.node.ubuntu 24.04", capable=False)
    assert "cannot run containers" in ac.image_problem([plain], settings, now)
    other_agent = image("microsoft-dsvm", "ubuntu-hpc", "2404", "batch.node.ubuntu 22.04")
    assert "needs node agent" in ac.image_problem([other_agent], settings, now)


# ---------------------------------------------------------------------------- lost replies, 409s


def dropped() -> Exception:
    from azure.core.exceptions import ServiceResponseError
    return ServiceResponseError("('Connection aborted.', RemoteDisconnected('Remote end closed "
                                "connection without response'))")


def status_error(status: int, code: str | None = None, retry_after: str | None = None) -> HttpResponseError:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    error = HttpResponseError(message=code or "error", response=NS(
        status_code=status, reason=code, headers=headers, text=lambda: "", request=None))
    error.error = NS(code=code, message=code) if code else None
    return error


def test_a_lost_reply_is_resent_with_the_same_ids_and_task_exists_is_success():
    stored = set()

    def answer(ids, n):
        if n == 1:
            stored.update(ids)  # the service kept them, but the reply never came
            raise dropped()
        exists = NS(code="TaskExists", message=NS(value="exists"))
        return NS(result_values=[NS(task_id=i, status="clienterror" if i in stored else "success",
                                    error=exists if i in stored else None) for i in ids])
    client = TaskCollectionClient(answer)
    assert calls.add_tasks(client, "job", tasks(3), sleep=lambda s: None) == 2
    assert client.requests[0] == client.requests[1]


def test_throttling_is_waited_out_as_long_as_the_service_asks():
    waits = []
    answers = iter([status_error(429, "TooManyRequests", "7"), status_error(408, "OperationTimedOut")])

    def answer(ids, n):
        error = next(answers, None)
        if error is not None:
            raise error
        return ok(ids)
    client = TaskCollectionClient(answer)
    calls.add_tasks(client, "job", tasks(2), sleep=waits.append)
    assert waits == [7.0, 2.0]  # Retry-After when given, else exponential


class JobClient:
    def __init__(self, create_errors, owner):
        self.create_errors = list(create_errors)
        self.owner = owner
        self.created = 0

    def create_job(self, options):
        self.created += 1
        if self.create_errors:
            raise self.create_errors.pop(0)

    def get_job(self, job_id):
        return NS(metadata=[NS(name="created-by", value=self.owner)])


def test_job_exists_after_a_resend_is_ours_by_its_owner_mark():
    client = JobClient([dropped(), status_error(409, "JobExists")], owner="run-1")
    calls.create_job(client, NS(id="job"), "run-1", sleep=lambda s: None)
    assert client.created == 2


def test_someone_elses_job_or_a_job_being_deleted_is_an_error_in_the_services_words():
    with pytest.raises(ToolError, match="already exists and was not created by this run"):
        calls.create_job(JobClient([status_error(409, "JobExists")], owner="other"), NS(id="job"),
                         "run-1", sleep=lambda s: None)
    with pytest.raises(ToolError, match="JobBeingDeleted"):
        calls.create_job(JobClient([status_error(409, "JobBeingDeleted")], owner="run-1"),
                         NS(id="job"), "run-1", sleep=lambda s: None)
    with pytest.raises(ToolError, match="ActiveJobAndScheduleQuotaReached"):
        calls.create_job(JobClient([status_error(409, "ActiveJobAndScheduleQuotaReached")],
                                   owner="run-1"), NS(id="job"), "run-1", sleep=lambda s: None)
