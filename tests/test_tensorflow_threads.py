"""TensorFlow is imported in the worker's threads only: never on the main thread, the event loop, or at import.

The served process is the real `tapeserve serve`, with an audit hook installed before anything else runs
(a `sitecustomize` on PYTHONPATH): it records every thread that imports a module of TensorFlow's. Every route
family is exercised once; then the record must show TensorFlow loaded first in a lane of the worker, and
touched only by the worker's lanes and the model repository's loader thread (started after the worker).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from schemas.explain import SEED_EXPLANATION_REQUEST
from schemas.networks import SEED_REQUEST
from schemas.tape import SEED_TAPE_REQUEST
from service.engines import PLOTS_LANE
from service.worker import MAIN_LANE
from tests.live_server import serve_process

REPOSITORY = Path(__file__).resolve().parent.parent
LANES = {f"tapeserve-{MAIN_LANE}", f"tapeserve-{PLOTS_LANE}"}
LOADER = "tapeserve-models"
"""The model repository's loader thread (`service.models`)."""

PROBE = """\
import json, os, sys, threading

_record = os.environ["IMPORT_PROBE_FILE"]
_seen = set()


def _probe(event, args):
    if event != "import" or not args or not str(args[0]).partition(".")[0] == "tensorflow":
        return
    thread = threading.current_thread().name
    if thread not in _seen:
        _seen.add(thread)
        with open(_record, "a") as out:
            out.write(json.dumps({"pid": os.getpid(), "thread": thread, "module": args[0]}) + "\\n")


sys.addaudithook(_probe)
"""


def test_the_served_process_imports_tensorflow_in_the_workers_threads_only(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(PROBE)
    record = tmp_path / "imports.jsonl"
    env = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPOSITORY)]),
        "IMPORT_PROBE_FILE": str(record),
        "TAPESERVE_MODEL_DIR": str(REPOSITORY / "models"),
    }
    with serve_process(env) as (base, process), httpx.Client(base_url=base, timeout=60) as client:
        answers = {
            "networks": client.post("/v1/networks/gradients", json=SEED_REQUEST),
            "tape": client.post("/v1/tape", json=SEED_TAPE_REQUEST),
            "tape, refused": client.post("/v1/tape", json={**SEED_TAPE_REQUEST, "program": "import os"}),
            "ops": client.get("/v1/ops"),
            "activations": client.post("/v1/activations", json={"activations": ["tanh"]}),
            "activations png": client.get("/v1/activations/plot.png"),
            "gradient check": client.post(
                "/v1/gradient-check",
                json={"tape": SEED_TAPE_REQUEST | {"compute": [{"kind": "gradient", "target": "L", "sources": ["W"]}]}},
            ),
            "explanations": client.post("/v1/networks/explanations", json=SEED_EXPLANATION_REQUEST),
            "explanations png": client.post(
                "/v1/networks/explanations", json=SEED_EXPLANATION_REQUEST, headers={"Accept": "image/png"}
            ),
            "models": client.get("/v1/models/diabetes"),
            "metadata": client.get("/v1/models/diabetes/metadata"),
            "predict": client.post("/v1/models/diabetes:predict", json={"instances": [[76.0, 120.0, 37.5]]}),
            "gradients": client.post("/v1/models/diabetes:gradients", json={"instances": [[76.0, 120.0, 37.5]]}),
            "info": client.get("/v1/info"),
        }
        server = process.pid
    assert {name: answer.status_code for name, answer in answers.items()} == {
        **{name: 200 for name in answers},
        "tape, refused": 422,
    }
    refused = answers["tape, refused"].json()
    assert refused["errors"][0]["loc"][:2] == ["body", "program"], refused
    assert answers["activations png"].content.startswith(b"\x89PNG")
    assert answers["explanations png"].content.startswith(b"\x89PNG")
    imports = [json.loads(line) for line in record.read_text().splitlines()]
    threads = [entry["thread"] for entry in imports if entry["pid"] == server]
    assert threads, imports
    assert threads[0] in LANES, imports
    assert set(threads) <= {*LANES, LOADER}, imports


def test_building_the_app_imports_no_tensorflow() -> None:
    probe = (
        "import sys\n"
        "import service.app, service.serving, service.deps\n"
        "from service.settings import Settings\n"
        "app = service.app.create_app(Settings())\n"
        "app.openapi()\n"
        "print(sorted(name for name in sys.modules if name.partition('.')[0] == 'tensorflow'))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True, cwd=REPOSITORY
    )
    assert found.stdout.strip() == "[]", found.stdout + found.stderr
