"""A version added, then removed, while 64 connections hammer `:predict` on a real server in this process:
no request fails, and every answer comes wholly from exactly one version (versions answer distinguishably,
see tests/faults/repository.py), the new one once it serves, the old one again once the new one is gone."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

from tests.faults import repository as model_repository
from tests.faults import scenarios
from tests.faults.repository import serving, versions_between, wait_for_status
from tests.faults.traffic import Recorder
from tests.live_server import live_server

CONNECTIONS = 64
MARGIN_S = 1.0
"""Requests that started before a version changed may finish on the one before: answers this much later may not."""


def test_a_version_added_and_one_removed_under_load_fail_nothing(tmp_path: Path) -> None:
    models = model_repository.prepare(tmp_path)
    marks: dict[str, float] = {}
    held: dict[str, bool] = {}
    with live_server(model_dir=str(models.root), model_poll_s=0.2, warmup=False) as base:
        port = int(base.rsplit(":", 1)[1])

        async def faults(recorder: Recorder) -> None:
            await asyncio.sleep(1.0)
            models.publish(2)
            held["version 2 serves"] = await wait_for_status([port], lambda found: serving(found) == [2], 60)
            marks["added"] = time.monotonic()
            await asyncio.sleep(1.5)
            marks["removing"] = time.monotonic()
            await asyncio.to_thread(shutil.rmtree, models.model / "2")
            held["version 1 serves again"] = await wait_for_status(
                [port], lambda found: serving(found) == [1] and found[2][0] == "END", 60
            )
            marks["removed"] = time.monotonic()
            await asyncio.sleep(1.5)

        recorder = scenarios.run(scenarios.under_load(port, models.calls(), CONNECTIONS, faults))
    assert held == {"version 2 serves": True, "version 1 serves again": True}
    outcomes = recorder.outcomes
    bad: list[Any] = [outcome for outcome in outcomes if not (outcome.status == 200 and outcome.correct)]
    assert len(outcomes) >= 10 * CONNECTIONS and not bad, (len(outcomes), bad[:5])
    # every answer matched exactly one version (the check refuses mixtures and strangers); which, and when:
    assert len(models.seen) == len(outcomes)
    assert set(versions_between(models.seen, 0, marks["removing"])) == {1, 2}
    assert set(versions_between(models.seen, marks["added"] + MARGIN_S, marks["removing"])) == {2}
    assert set(versions_between(models.seen, marks["removed"] + MARGIN_S, float("inf"))) == {1}
