"""The short form of the fault scenarios (the full form: `make bench`), against real replicas behind real nginx
on loopback. Every request is accounted for, every 200 is checked against numpy, and what each scenario
promises is asserted: (a) and (b) lose nothing, (c) answers only 200 or 429 + Retry-After with bounded memory
and is back to normal at once, (d) keeps real requests' latency while slow clients trickle, (e) loses nothing
while the shared model repository changes under it, every answer wholly one version's. The model verbs
answer through nginx as they do directly."""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults import scenarios
from tests.faults.harness import DEPLOY, HOST, Nginx, free_port
from tests.faults.scenarios import SHORT, Cluster, Result
from tests.faults.traffic import README_SEED_LOSS, network_call, tape_call

MIB = 1024 * 1024
RSS_BOUND = 128 * MIB
"""Growth of the replica's resident memory a burst may cause: its queue is bounded, so its memory is."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = scenarios.start_cluster(tmp_path_factory.mktemp("replicas"), short=True)
    try:
        yield running
    finally:
        scenarios.stop_cluster(running)


def accounted(result: Result) -> None:
    overall = result.overall()
    assert overall.sent == overall.answered, (result.name, overall)
    assert overall.failed == 0, (result.name, overall, [o for o in result.outcomes if not o.correct][:5])
    for phase in result.phases:
        assert phase.sent > 0, (result.name, phase)


def test_references_agree_with_the_readme() -> None:
    seed = network_call(0)
    answer = {
        "loss": {"values": README_SEED_LOSS},
        "gradients": [
            {
                "weights": {
                    "values": [
                        [12.74007, 20.1159, 6.286219, 0.1676325],
                        [-12.740069, -20.115898, -6.286218, -0.16763249],
                    ]
                }
            }
        ],
    }
    assert seed.check(answer)
    assert not seed.check({**answer, "loss": {"values": README_SEED_LOSS * 1.001}})
    assert not network_call(1).check(answer)  # a variant's answer is not the seed's
    assert not tape_call(0).check(
        {"values": {"a": {"values": 14.0}}, "results": [{"values": [{"values": [2, -4, 5.9]}]}]}
    )


def test_the_harness_runs_the_shipped_nginx_conf_unchanged(cluster: Cluster) -> None:
    for nginx in (cluster.balancer, cluster.single):
        assert (nginx.directory / "nginx.conf").read_bytes() == (DEPLOY / "nginx.conf").read_bytes()
    upstream = (cluster.balancer.directory / "tapeserve-upstream.conf").read_text()
    assert all(f"server {replica.address};" in upstream for replica in cluster.replicas)


def test_no_replica_answering_is_a_problem_json_503(cluster: Cluster) -> None:
    # nginx in front of a port nothing listens on: its own error page, in the service's problem shape
    nothing = Nginx(cluster.balancer.binary, [f"{HOST}:{free_port()}"])
    nothing.start()
    try:
        connection = http.client.HTTPConnection(HOST, nothing.port, timeout=30)
        connection.request("POST", "/v1/tape", body=b"{}", headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        problem = json.loads(response.read())
        connection.close()
    finally:
        nothing.stop()
    assert response.status == 503
    assert response.getheader("content-type") == "application/problem+json"
    assert response.getheader("retry-after") == "5"
    assert problem["status"] == 503 and problem["type"].endswith("/not-ready")


def test_a_crashed_replica_loses_no_request(cluster: Cluster) -> None:
    result = scenarios.run(scenarios.crash(cluster, SHORT))
    accounted(result)
    overall = result.overall()
    assert set(overall.statuses) == {200}, overall
    # the kill was felt, and nginx ran the requests it cut off again on another replica
    assert overall.retried >= 1, overall
    notes = result.notes
    assert notes["kill"] < notes["restart"] < notes["ready"] <= notes["rejoined"]


def test_a_rolling_drain_loses_no_request_and_every_replica_exits_0(cluster: Cluster) -> None:
    result = scenarios.run(scenarios.drain(cluster, SHORT))
    accounted(result)
    assert set(result.overall().statuses) == {200}
    assert result.notes["exit_codes"] == [0, 0, 0]
    assert result.notes["readyz_after_sigterm"] == [(503, b'{"status":"draining"}')] * 3


def test_a_burst_is_answered_with_200_or_429_and_the_replica_recovers(cluster: Cluster) -> None:
    result = scenarios.run(scenarios.burst(cluster, SHORT))
    accounted(result)  # failed counts any 429 without Retry-After
    before, during, after = result.phases
    assert set(during.statuses) == {200, 429}, during  # above capacity: some were turned away, none dropped
    assert set(result.overall().statuses) <= {200, 429}
    notes = result.notes
    assert notes["rss_peak"] <= notes["rss_before"] + RSS_BOUND, notes
    assert notes["normal_after_s"] <= 2.0, notes
    assert set(after.statuses) == {200}, after
    assert after.p50_ms <= 2 * before.p50_ms, (before, after)


def test_slow_clients_do_not_slow_real_requests(cluster: Cluster) -> None:
    result = scenarios.run(scenarios.slow_clients(cluster, SHORT))
    accounted(result)
    loris = result.notes["loris"]
    assert loris == {
        "sent": SHORT.loris_connections,
        "answered": SHORT.loris_connections,
        "correct": SHORT.loris_connections,
        "statuses": {"200": SHORT.loris_connections},
    }
    quiet, during, _ = result.phases
    assert not math.isnan(during.p50_ms)
    assert during.p50_ms <= 2 * quiet.p50_ms, (quiet, during)


def _ask(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        payload = None if body is None else json.dumps(body)
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _alike(through: Any, direct: Any) -> bool:
    """The same document, numbers equal to float32 rounding (another replica may have answered)."""
    if isinstance(direct, dict):
        return (
            isinstance(through, dict)
            and through.keys() == direct.keys()
            and all(_alike(through[key], direct[key]) for key in direct)
        )
    if isinstance(direct, list):
        return isinstance(through, list) and len(through) == len(direct) and all(map(_alike, through, direct))
    if isinstance(direct, float):
        return isinstance(through, int | float) and math.isclose(through, direct, rel_tol=1e-6, abs_tol=1e-9)
    return bool(through == direct)


SEED_PATIENT = {"instances": [[76.0, 120.0, 37.5], [110.0, 160.0, 38.5]]}
VERB_CALLS = [
    ("POST", "/v1/models/diabetes:predict", SEED_PATIENT),
    ("POST", "/v1/models/diabetes/versions/1:predict", {"inputs": {"vitals": [[76.0, 120.0, 37.5]]}}),
    ("POST", "/v1/models/diabetes:gradients", {**SEED_PATIENT, "class_index": 1, "sources": ["inputs", "variables"]}),
    ("POST", "/v1/models/diabetes/versions/1:jacobian", SEED_PATIENT),
    ("GET", "/v1/models/diabetes", None),
    ("GET", "/v1/models/diabetes/versions/1/metadata", None),
]


@pytest.mark.parametrize(("method", "path", "body"), VERB_CALLS, ids=[f"{m} {p}" for m, p, _ in VERB_CALLS])
def test_model_verbs_through_nginx_answer_like_a_direct_call(
    cluster: Cluster, method: str, path: str, body: dict[str, Any] | None
) -> None:
    direct_status, direct = _ask(cluster.replicas[0].port, method, path, body)
    assert direct_status == 200, direct
    for _ in range(len(cluster.replicas)):  # round robin: every replica once
        status, through = _ask(cluster.balancer.port, method, path, body)
        assert status == 200, through
        assert _alike(through, direct), (through, direct)
    # the README's numbers: the seed's patient is a coin toss, the second one diabetic
    if path.endswith("diabetes:predict"):
        assert [round(p[1], 4) for p in direct["predictions"]] == [0.5116, 0.999]
    # a verb by GET reaches the replica's router through nginx: its own 405, in problem+json
    if method == "POST":
        status, problem = _ask(cluster.balancer.port, "GET", path)
        assert status == 405 and problem["type"].endswith("/method-not-allowed")


def test_model_repository_faults_lose_no_request_and_status_tells_the_truth(cluster: Cluster) -> None:
    result = scenarios.run(scenarios.model_faults(cluster, SHORT))
    accounted(result)  # failed counts every answer that is not wholly one servable version's
    assert set(result.overall().statuses) == {200}, result.overall()
    for step in result.notes["steps"]:
        assert step["truth_after_s"] is not None, step
    held = scenarios.promises(result)
    assert all(held.values()), (held, result.notes["versions"], result.notes["versions_settled"])
