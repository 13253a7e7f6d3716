"""PodDisruptionBudgets with the official Python kubernetes client against
the host `cairn server` (SQLite and PostgreSQL): a budget created through
`PolicyV1Api` gets its status from the disruption controller, and
`create_namespaced_pod_eviction` is granted while the budget allows it,
then refused with 429 and the `DisruptionBudget` cause."""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

NS = "default"


def running_ready_pod(core: client.CoreV1Api, name: str) -> None:
    """Creates a pod labelled app=db and marks it Running and Ready, as the
    node agent would (there is none: the server runs --disable-agent)."""
    core.create_namespaced_pod(NS, client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "db"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
    ))
    core.patch_namespaced_pod_status(name, NS, {"status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
    }})


def wait_status(policy: client.PolicyV1Api, name: str, **want: int) -> client.V1PodDisruptionBudgetStatus:
    deadline = time.monotonic() + 30
    while True:
        status = policy.read_namespaced_pod_disruption_budget(name, NS).status
        got = {k: getattr(status, k) for k in want}
        if got == want:
            return status
        assert time.monotonic() < deadline, f"status of {name}: {got}, want {want}"
        time.sleep(0.2)


def eviction(name: str) -> client.V1Eviction:
    return client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=NS))


def test_eviction_is_granted_then_refused_by_the_budget(api, core):
    policy = client.PolicyV1Api(api)
    running_ready_pod(core, "db-0")
    running_ready_pod(core, "db-1")
    policy.create_namespaced_pod_disruption_budget(NS, client.V1PodDisruptionBudget(
        metadata=client.V1ObjectMeta(name="db"),
        spec=client.V1PodDisruptionBudgetSpec(
            min_available=1,
            selector=client.V1LabelSelector(match_labels={"app": "db"}),
        ),
    ))
    status = wait_status(policy, "db", expected_pods=2, current_healthy=2,
                         desired_healthy=1, disruptions_allowed=1, observed_generation=1)
    assert status.conditions[0].type == "DisruptionAllowed"
    assert status.conditions[0].reason == "SufficientPods"

    core.create_namespaced_pod_eviction("db-0", NS, eviction("db-0"))
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_pod("db-0", NS)
    assert gone.value.status == 404

    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod_eviction("db-1", NS, eviction("db-1"))
    assert refused.value.status == 429
    body = json.loads(refused.value.body)
    assert body["reason"] == "TooManyRequests"
    assert body["details"]["causes"][0]["reason"] == "DisruptionBudget"
    core.read_namespaced_pod("db-1", NS)
    status = wait_status(policy, "db", expected_pods=1, current_healthy=1, disruptions_allowed=0)
    assert status.conditions[0].reason == "InsufficientPods"
    assert not status.disrupted_pods


def test_an_invalid_budget_names_the_field(api):
    policy = client.PolicyV1Api(api)
    with pytest.raises(ApiException) as invalid:
        policy.create_namespaced_pod_disruption_budget(NS, {
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "bad"},
            "spec": {"maxUnavailable": "150%", "selector": {"matchLabels": {"app": "db"}}},
        })
    assert invalid.value.status == 422
    causes = json.loads(invalid.value.body)["details"]["causes"]
    assert [c["field"] for c in causes] == ["spec.maxUnavailable"]
