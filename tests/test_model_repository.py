"""The model repository: versions appear, serve, drain and go as the folder changes; failed and half-written
versions never take the serving one down. Most tests call `poll()` themselves (one read of the folder each),
so what happens between two reads is exact; the last ones let the loader thread poll."""

from __future__ import annotations

import os
import pathlib
import shutil
import threading
import time
from typing import Any

import numpy as np
import pytest

from service.errors import ModelNotAvailable, ModelNotFound
from service.models import LOADER_NICE, ModelRepository, VersionStatus
from service.settings import Settings
from tests import model_repo
from tests.conftest import make_client, wait_ready

X = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 0.0, -0.5, 3.0]], dtype=np.float32)


def _repository(root: pathlib.Path, **overrides: Any) -> ModelRepository:
    return ModelRepository(Settings(model_dir=str(root), model_poll_s=0, **overrides))


def _states(repository: ModelRepository, name: str = "m") -> dict[int, str]:
    return {found.version: found.state for found in repository.status(name)}


def _predict(repository: ModelRepository, version: int | None = None) -> tuple[int, np.ndarray]:
    with repository.lease("m", version) as lease:
        return lease.number, lease.served.predict("serving_default", {"x": X})["out"]


def _expected(seed: int) -> np.ndarray:
    return np.asarray(model_repo.sequential(seed)(X, training=False))


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "models"
    folder.mkdir()
    model_repo.save_keras(model_repo.sequential(1), folder, "m", 1)
    return folder


def test_a_new_version_serves_after_it_loads_and_the_old_one_goes(root: pathlib.Path) -> None:
    repository = _repository(root)
    repository.poll(first=True)
    assert _states(repository) == {1: "AVAILABLE"}
    number, answer = _predict(repository)
    assert number == 1
    np.testing.assert_allclose(answer, _expected(1), rtol=1e-6)
    model_repo.save_keras(model_repo.sequential(2), root, "m", 2)
    repository.poll()  # first sight of version 2: its files may still be changing
    assert _states(repository) == {1: "AVAILABLE"}
    repository.poll()  # unchanged since: complete
    assert _states(repository) == {2: "AVAILABLE", 1: "END"}
    number, answer = _predict(repository)
    assert number == 2
    np.testing.assert_allclose(answer, _expected(2), rtol=1e-6)
    with pytest.raises(ModelNotFound, match="version 1 of model 'm' is not served"):
        repository.acquire("m", 1)
    # removing version 2 brings version 1 back (it is the latest again), then unloads 2
    shutil.rmtree(root / "m" / "2")
    repository.poll()
    assert _states(repository) == {2: "END", 1: "AVAILABLE"}
    np.testing.assert_allclose(_predict(repository)[1], _expected(1), rtol=1e-6)
    assert repository.models["m"][2].served is None


def test_the_all_policy_serves_every_version(root: pathlib.Path) -> None:
    model_repo.save_keras(model_repo.sequential(2), root, "m", 2)
    repository = _repository(root, model_versions="all")
    repository.poll(first=True)
    assert _states(repository) == {2: "AVAILABLE", 1: "AVAILABLE"}
    np.testing.assert_allclose(_predict(repository, 1)[1], _expected(1), rtol=1e-6)
    np.testing.assert_allclose(_predict(repository, 2)[1], _expected(2), rtol=1e-6)
    assert _predict(repository)[0] == 2  # no version asked: the highest
    shutil.rmtree(root / "m" / "1")
    repository.poll()
    assert _states(repository) == {2: "AVAILABLE", 1: "END"}


def test_a_half_written_folder_is_picked_up_when_complete(root: pathlib.Path) -> None:
    repository = _repository(root)
    repository.poll(first=True)
    staging = root.parent / "staging"
    staging.mkdir()
    model_repo.sequential(3).save(staging / "model.keras")
    folder = model_repo.version_folder(root, "m", 3)
    payload = (staging / "model.keras").read_bytes()
    (folder / "model.keras.partial").write_bytes(payload[: len(payload) // 2])
    for _ in range(2):  # no model file yet: not a version, and not an error
        repository.poll()
        assert _states(repository) == {1: "AVAILABLE"}
    (folder / "model.keras.partial").unlink()
    (folder / "model.keras").write_bytes(payload[: len(payload) // 2])
    repository.poll()  # the file is there, but still being written
    with (folder / "model.keras").open("ab") as file:
        file.write(payload[len(payload) // 2 :])
    repository.poll()  # it changed since the last read: still not complete
    assert _states(repository) == {1: "AVAILABLE"}
    repository.poll()
    assert _states(repository) == {3: "AVAILABLE", 1: "END"}
    np.testing.assert_allclose(_predict(repository)[1], _expected(3), rtol=1e-6)
    assert repository.loads == 2


def test_a_broken_version_keeps_the_good_one_serving_until_it_is_fixed(root: pathlib.Path) -> None:
    repository = _repository(root)
    repository.poll(first=True)
    model_repo.save_broken(root, "m", 2)
    repository.poll()
    repository.poll()
    (broken,) = repository.status("m", 2)
    assert broken.state == "END" and broken.error_code == "INVALID_ARGUMENT"
    assert broken.error_message.startswith("cannot load 2:")
    assert _states(repository)[1] == "AVAILABLE"
    np.testing.assert_allclose(_predict(repository)[1], _expected(1), rtol=1e-6)
    loads = repository.loads
    repository.poll()  # the same broken files are not tried again
    assert repository.loads == loads
    # the operator fixes version 2: it is tried again once its new files are complete
    (root / "m" / "2" / "model.keras").unlink()
    model_repo.sequential(2).save(root / "m" / "2" / "model.keras")
    repository.poll()
    repository.poll()
    assert repository.status("m", 2) == [VersionStatus(2, "AVAILABLE", "OK", "")]
    np.testing.assert_allclose(_predict(repository)[1], _expected(2), rtol=1e-6)


def test_at_start_a_broken_latest_version_falls_back_to_the_one_below(root: pathlib.Path) -> None:
    model_repo.save_broken(root, "m", 2)
    model_repo.save_file_reader(root, "m", 3)
    repository = _repository(root)
    repository.poll(first=True)
    status = {found.version: found for found in repository.status("m")}
    assert status[3].error_code == "FAILED_PRECONDITION" and "ReadFile" in status[3].error_message
    assert status[2].error_code == "INVALID_ARGUMENT"
    assert status[1].state == "AVAILABLE"
    assert _predict(repository)[0] == 1
    with pytest.raises(ModelNotFound, match="version 3 of model 'm' failed to load: the serving functions"):
        repository.acquire("m", 3)


def test_unsafe_ops_are_served_when_allowed(tmp_path: pathlib.Path) -> None:
    model_repo.save_file_reader(tmp_path, "m", 1)
    repository = _repository(tmp_path, allow_unsafe_ops=True)
    repository.poll(first=True)
    assert repository.status("m") == [VersionStatus(1, "AVAILABLE", "OK", "")]


def test_a_removed_version_drains_before_it_unloads(root: pathlib.Path) -> None:
    repository = _repository(root)
    repository.poll(first=True)
    model_repo.save_keras(model_repo.sequential(2), root, "m", 2)
    repository.poll()
    lease = repository.acquire("m")  # a request in flight on version 1
    poller = threading.Thread(target=repository.poll)
    poller.start()
    deadline = time.monotonic() + 60
    while _states(repository).get(1) != "UNLOADING":
        assert time.monotonic() < deadline and poller.is_alive()
        time.sleep(0.01)
    assert _states(repository)[2] == "AVAILABLE"
    # the request in flight still computes on version 1; new requests go to version 2
    np.testing.assert_allclose(lease.served.predict("serving_default", {"x": X})["out"], _expected(1), rtol=1e-6)
    assert _predict(repository)[0] == 2
    time.sleep(0.2)
    assert _states(repository)[1] == "UNLOADING" and poller.is_alive()
    lease.release()
    poller.join(30)
    assert _states(repository) == {2: "AVAILABLE", 1: "END"}


def test_a_version_still_loading_is_a_503_with_retry_after(root: pathlib.Path) -> None:
    repository = _repository(root)
    repository.models["m"] = {}
    from service.models import ModelVersion

    repository.models["m"][1] = ModelVersion("m", 1, root / "m" / "1", state="LOADING")
    with pytest.raises(ModelNotAvailable) as loading:
        repository.acquire("m")
    assert loading.value.status == 503 and loading.value.headers == {"Retry-After": "1"}
    with pytest.raises(ModelNotAvailable):
        repository.acquire("m", 1)


# ------------------------------------------------------------------------------ the loader thread, in the app


def _wait_for(condition: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_app_polls_loads_and_unloads_in_its_loader_thread(root: pathlib.Path) -> None:
    with make_client(model_dir=str(root), model_poll_s=0.1, warmup=False) as client:
        wait_ready(client)
        # ready means the models found at start are loaded
        assert client.get("/v1/models/m").json()["model_version_status"][0]["state"] == "AVAILABLE"
        threads = {thread.name: thread for thread in threading.enumerate()}
        assert "tapeserve-models" in threads
        # the loader runs at a lower OS priority than the rest of the process; the worker's lanes do not
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        loader = threads["tapeserve-models"].native_id
        assert loader is not None and os.getpriority(os.PRIO_PROCESS, loader) == min(19, nice + LOADER_NICE)
        lanes = [
            thread.native_id
            for name, thread in threads.items()
            if name.startswith("tapeserve-") and name != "tapeserve-models" and thread.native_id is not None
        ]
        assert lanes and {os.getpriority(os.PRIO_PROCESS, lane) for lane in lanes} == {nice}
        first = client.post("/v1/models/m:predict", json={"instances": X.tolist()}).json()["predictions"]
        np.testing.assert_allclose(first, _expected(1), rtol=1e-6)
        model_repo.save_keras(model_repo.sequential(2), root, "m", 2)
        _wait_for(lambda: client.get("/v1/models").json()["models"][0]["versions"] == ["2"])
        second = client.post("/v1/models/m:predict", json={"instances": X.tolist()}).json()["predictions"]
        np.testing.assert_allclose(second, _expected(2), rtol=1e-6)
        shutil.rmtree(root / "m" / "2")
        _wait_for(lambda: client.get("/v1/models").json()["models"][0]["versions"] == ["1"])
        gone = client.post("/v1/models/m/versions/2:predict", json={"instances": X.tolist()})
        assert gone.status_code == 404 and "not served (state END)" in gone.json()["error"]


def test_an_app_started_again_loads_its_models_again(root: pathlib.Path) -> None:
    client = make_client(model_dir=str(root), model_poll_s=0, warmup=False)
    for _ in range(2):
        with client:
            wait_ready(client)
            answer = client.post("/v1/models/m:predict", json={"instances": X.tolist()})
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(answer.json()["predictions"], _expected(1), rtol=1e-6)
        # stopped: every version is unloaded
        assert client.app.state.models.status("m") == [VersionStatus(1, "END", "OK", "")]  # type: ignore[attr-defined]
