"""The serving process's memory. The C heap keeps freed memory for the next request: glibc's page faults of a
repeated large allocation, kept against glibc's defaults. The cyclic collector is off from `tapeserve serve`'s
start until the app has warmed up, then on again with start-up's objects frozen. Each in a fresh interpreter
where the state is the process's (glibc's thresholds, the collector)."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from service import app as app_module
from service import cli, heap, logrelay, serving
from service.heap import keep_freed_memory
from service.settings import Settings

ROUNDS = """
import resource, sys
from service.heap import keep_freed_memory
kept = keep_freed_memory(int(sys.argv[1]))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def one_request():  # three 8 MiB blocks, every page written, all freed together
    blocks = [b"x" * (8 << 20) for _ in range(3)]
    del blocks
one_request()
before = faults()
for _ in range(5):
    one_request()
print(kept, faults() - before)
"""

PAGES_PER_ROUND = 3 * (8 << 20) // 4096


def faults_of_repeats(megabytes: int) -> tuple[bool, int]:
    done = subprocess.run(
        [sys.executable, "-c", ROUNDS, str(megabytes)], capture_output=True, text=True, check=True, timeout=60
    )
    kept, faults = done.stdout.split()
    return kept == "True", int(faults)


def test_kept_memory_serves_repeated_large_blocks_without_fresh_pages() -> None:
    kept, faults = faults_of_repeats(128)
    assert kept
    assert faults < PAGES_PER_ROUND // 10  # five rounds of 6,144 pages each, almost none of them fresh


def test_glibc_defaults_fault_in_fresh_pages_for_every_repeat() -> None:
    kept, faults = faults_of_repeats(0)  # the control: the same rounds with the heap left as glibc sets it
    assert not kept
    assert faults > 2 * PAGES_PER_ROUND


def test_zero_changes_nothing() -> None:
    assert keep_freed_memory(0) is False


@pytest.mark.parametrize("megabytes", [-1, 1025])
def test_the_setting_is_bounded(megabytes: int) -> None:
    with pytest.raises(ValueError, match="heap_keep_mb"):
        Settings(heap_keep_mb=megabytes)


COLLECTOR = """
import gc, json, sys, time
from service import heap

states = {}
# a collector someone else turned off stays off
gc.disable()
heap.pause_collector()
heap.settle_collector()
states["off before"] = gc.isenabled()
gc.enable()
gc.unfreeze()

heap.pause_collector()
states["paused"] = gc.isenabled()
heap.pause_collector()  # twice: still paused, and settled once
heap.settle_collector()
states["settled"] = [gc.isenabled(), gc.get_freeze_count() > 0]
gc.unfreeze()

from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings

for warmup in (False, True):
    heap.pause_collector()
    settings = Settings(model_dir=sys.argv[1], model_poll_s=0, warmup=warmup, cpu_logical_devices=2)
    with TestClient(create_app(settings)) as client:
        while client.get("/readyz").status_code != 200:
            assert gc.isenabled() is not warmup  # paused until the warm-up ends (without one, from the start)
            time.sleep(0.01)
        states[f"served, warm-up {warmup}"] = [gc.isenabled(), gc.get_freeze_count()]
    gc.unfreeze()
print(json.dumps(states))
"""


def test_the_collector_is_paused_for_start_up_and_on_with_start_up_frozen_once_ready(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", COLLECTOR, str(tmp_path)], capture_output=True, text=True, check=True, timeout=300
    )
    states = json.loads(done.stdout.splitlines()[-1])
    assert states["off before"] is False
    assert states["paused"] is False
    assert states["settled"] == [True, True]
    for warmup in (False, True):
        enabled, frozen = states[f"served, warm-up {warmup}"]
        assert enabled is True
        assert frozen > 100_000  # TensorFlow's modules and the app's, at least


def test_serve_pauses_the_collector_before_it_imports_the_serving_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def serve(**_: object) -> int:
        seen.append(gc.isenabled())
        return 0

    monkeypatch.setattr(serving, "serve", serve)
    monkeypatch.setattr(logrelay, "start", lambda: None)
    assert gc.isenabled()
    try:
        assert cli.main(["serve", "--port", "8999"]) == 0
    finally:
        heap.settle_collector()  # as the app would have, once warm
        gc.unfreeze()
    assert seen == [False]
    assert gc.isenabled()


def test_a_warm_up_that_fails_still_turns_the_collector_back_on(monkeypatch: pytest.MonkeyPatch) -> None:
    async def failing(*_: object) -> None:
        raise RuntimeError("a warm-up request failed")

    monkeypatch.setattr(app_module, "_warm_requests", failing)
    app = SimpleNamespace(state=SimpleNamespace(http_warm=False))
    heap.pause_collector()
    try:
        with pytest.raises(RuntimeError, match="warm-up request failed"):
            asyncio.run(app_module.warm_http(app, None, Settings()))  # type: ignore[arg-type]
        assert gc.isenabled()
        assert app.state.http_warm is False  # not ready: /readyz keeps answering 503
    finally:
        heap.settle_collector()
        gc.unfreeze()
