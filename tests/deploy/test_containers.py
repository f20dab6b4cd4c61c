"""The container artefacts, checked statically (no container engine needed): the Dockerfile with hadolint,
docker-compose.yml with Compose's own `config`, deploy/nginx.conf with crossplane, the Kubernetes manifests
with kubernetes-validate against the API schemas; then what they must say, read as data."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.packages import lock_pins, runtime_closure

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# the validators are console scripts installed beside this interpreter (requirements.lock)
TOOLS = Path(sys.executable).parent
DEV_TOOLS = {"pytest", "ruff", "mypy"}
# kubernetes-validate's oldest schema this project supports, then its newest (its default)
K8S_VERSIONS = ("1.29.0", None)
MANIFESTS = ("deployment.yaml", "deployment-gpu.yaml", "service.yaml", "models-pvc.yaml")
MODEL_DIR = "/models"
"""Where every container reads the model repository (TAPESERVE_MODEL_DIR)."""
GPU_SERVICES = {"tapeserve-gpu0", "tapeserve-gpu1"}


def tool(name: str) -> str:
    path = TOOLS / name
    assert path.is_file(), f"{name} is not installed beside {sys.executable}: install requirements.lock"
    return str(path)


def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending += " " + line.removesuffix("\\").strip()
        if line.endswith("\\"):
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The build stages, each starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions:
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, arguments))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[list[tuple[str, str]]]:
    return stages(dockerfile_instructions((ROOT / "Dockerfile").read_text(encoding="utf-8")))


def hadolint(dockerfile_path: Path, config: Path) -> tuple[int, list[dict[str, Any]]]:
    # its own config only (no user or repository config), inline ignore pragmas disabled, style level fails too
    result = run(
        tool("hadolint"),
        "--config",
        str(config),
        "--disable-ignore-pragma",
        "--failure-threshold",
        "style",
        "--format",
        "json",
        str(dockerfile_path),
    )
    findings: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return result.returncode, findings


@pytest.fixture(scope="module")
def hadolint_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tmp_path_factory.mktemp("hadolint") / "hadolint.yaml"
    config.write_text("ignored: []\n", encoding="utf-8")
    return config


def test_hadolint_finds_nothing_in_the_dockerfile(hadolint_config: Path) -> None:
    returncode, findings = hadolint(ROOT / "Dockerfile", hadolint_config)
    assert findings == []
    assert returncode == 0


def test_hadolint_flags_an_unpinned_dockerfile(hadolint_config: Path, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n", encoding="utf-8")
    returncode, findings = hadolint(bad, hadolint_config)
    assert returncode != 0
    assert {"DL3006", "DL3013", "DL3042"} <= {finding["code"] for finding in findings}


def test_dockerfile_is_multi_stage_on_slim_python(dockerfile: list[list[tuple[str, str]]]) -> None:
    assert len(dockerfile) == 2
    builder, final = dockerfile
    assert builder[0] == ("FROM", "python:3.11-slim AS builder")
    assert final[0] == ("FROM", "python:3.11-slim")
    copies = [arguments for keyword, arguments in final if keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    # nothing is pip-installed in the final stage: it only copies the venv and the source
    assert not any("pip install" in arguments for keyword, arguments in final if keyword == "RUN")


def test_dockerfile_runs_as_a_created_non_root_user(dockerfile: list[list[tuple[str, str]]]) -> None:
    final = dockerfile[-1]
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert gid.isdigit() and int(gid) != 0
    creates_user = " ".join(arguments for keyword, arguments in final if keyword == "RUN")
    assert f"useradd --system --uid {uid} --gid" in creates_user
    assert f"groupadd --system --gid {gid}" in creates_user
    # USER comes after everything that needs root
    user_at = max(i for i, (keyword, _) in enumerate(final) if keyword == "USER")
    assert all(keyword != "RUN" for keyword, _ in final[user_at:])


def test_dockerfile_healthcheck_asks_readyz(dockerfile: list[list[tuple[str, str]]]) -> None:
    final = dockerfile[-1]
    checks = [arguments for keyword, arguments in final if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    check = checks[0]
    assert "--start-period=" in check
    command = json.loads(check[check.index("CMD") + len("CMD") :].strip())
    assert command[:2] == ["python", "-c"]
    # the probe must be valid Python that asks /readyz (slim has no curl)
    probe = ast.parse(command[2])
    assert "urllib.request" in command[2] and "/readyz" in command[2]
    assert isinstance(probe.body[-1], ast.Expr)


def test_dockerfile_serves_on_all_interfaces_and_exposes_the_port(
    dockerfile: list[list[tuple[str, str]]],
) -> None:
    final = dockerfile[-1]
    env = " ".join(arguments for keyword, arguments in final if keyword == "ENV")
    assert re.search(r"\bTAPESERVE_HOST=0\.0\.0\.0\b", env)
    assert re.search(r"\bTAPESERVE_PORT=8000\b", env)
    assert ("EXPOSE", "8000") in final
    assert ("ENTRYPOINT", '["tapeserve"]') in final
    assert ("CMD", '["serve"]') in final


def test_dockerfile_tf_variant_argument_drives_the_install(dockerfile: list[list[tuple[str, str]]]) -> None:
    builder = dockerfile[0]
    assert ("ARG", "TF_VARIANT=cpu") in builder
    installs = [
        arguments for keyword, arguments in builder if keyword == "RUN" and "image_requirements.py" in arguments
    ]
    assert len(installs) == 1
    assert 'image_requirements.py "$TF_VARIANT" requirements.txt constraints.txt' in installs[0]
    assert "pip install --no-cache-dir -r requirements.txt -c constraints.txt" in installs[0]


def test_dockerignore_admits_exactly_what_the_dockerfile_copies(dockerfile: list[list[tuple[str, str]]]) -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "the build context should be an allow-list"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources: set[str] = set()
    for stage in dockerfile:
        for keyword, arguments in stage:
            if keyword == "COPY" and not arguments.startswith("--from="):
                sources.update(source.removeprefix("./").rstrip("/") for source in arguments.split()[:-1])
    assert sources == admitted
    assert all((ROOT / source).exists() for source in sources)


def test_the_image_serves_the_example_model_by_default(dockerfile: list[list[tuple[str, str]]]) -> None:
    final = dockerfile[-1]
    env = " ".join(arguments for keyword, arguments in final if keyword == "ENV")
    assert re.search(rf"\bTAPESERVE_MODEL_DIR={MODEL_DIR}(\s|$)", env)
    copies = [arguments.split() for keyword, arguments in final if keyword == "COPY"]
    assert ["models/diabetes", f"{MODEL_DIR}/diabetes"] in copies
    # what it copies is a repository the service reads: a version folder with a Keras file
    assert (ROOT / "models" / "diabetes" / "1" / "model.keras").is_file()


# ------------------------------------------------- what the image installs


def image_requirements(variant: str, tmp_path: Path) -> tuple[list[str], list[str]]:
    requirements, constraints = tmp_path / f"requirements-{variant}.txt", tmp_path / f"constraints-{variant}.txt"
    result = run(sys.executable, str(DEPLOY / "image_requirements.py"), variant, str(requirements), str(constraints))
    assert result.returncode == 0, result.stderr
    return (
        requirements.read_text(encoding="utf-8").splitlines(),
        constraints.read_text(encoding="utf-8").splitlines(),
    )


def third_party_imports() -> set[str]:
    """Top-level modules the service's code imports that are neither the standard library nor its own."""
    modules: set[str] = set()
    for package in ("service", "schemas"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.partition(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.partition(".")[0])
    return modules - set(sys.stdlib_module_names) - {"service", "schemas", "__future__"}


def test_cpu_image_installs_the_project_dependencies_under_the_lock(tmp_path: Path) -> None:
    requirements, constraints = image_requirements("cpu", tmp_path)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    # the runtime dependencies (the client's and the server extra's), and the build backend of the project itself
    project = pyproject["project"]
    runtime = [*project["dependencies"], *project["optional-dependencies"]["server"]]
    assert requirements == [*runtime, *pyproject["build-system"]["requires"]]
    lock = [line for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines() if line.strip()]
    assert constraints == lock


def test_gpu_image_swaps_in_tensorflow_and_cuda_at_the_locked_version(tmp_path: Path) -> None:
    cpu_requirements, cpu_constraints = image_requirements("cpu", tmp_path)
    requirements, constraints = image_requirements("gpu", tmp_path)
    tensorflow_version = lock_pins()["tensorflow-cpu"]
    assert f"tensorflow[and-cuda]=={tensorflow_version}" in requirements
    for lines in (requirements, constraints):
        assert "tensorflow-cpu" not in {canonicalize_name(Requirement(line).name) for line in lines}
    # everything else is the CPU image's
    assert [line for line in cpu_requirements if not line.startswith("tensorflow-cpu")] == [
        line for line in requirements if not line.startswith("tensorflow[")
    ]
    assert [line for line in cpu_constraints if not line.lower().startswith("tensorflow_cpu")] == constraints


def test_image_requirements_refuses_an_unknown_variant(tmp_path: Path) -> None:
    result = run(sys.executable, str(DEPLOY / "image_requirements.py"), "tpu", str(tmp_path / "r"), str(tmp_path / "c"))
    assert result.returncode == 2
    assert "invalid choice: 'tpu'" in result.stderr


def test_image_runtime_is_locked_covers_every_import_and_leaves_dev_tools_out(tmp_path: Path) -> None:
    requirements, _ = image_requirements("cpu", tmp_path)
    closure = runtime_closure(requirements)
    pins = lock_pins()
    # every runtime package is pinned by the lock, at the version the tests ran against
    assert {name: pins.get(name) for name in closure} == closure
    assert not DEV_TOOLS & closure.keys()
    distributions = importlib.metadata.packages_distributions()
    for module in third_party_imports():
        providers = {canonicalize_name(name) for name in distributions.get(module, [])}
        assert providers & closure.keys(), f"the service imports {module}, which the image would not install"


# ---------------------------------------------------------------- compose


def compose_environment(tmp_path: Path) -> dict[str, str]:
    # the file's own defaults: no TAPESERVE_/COMPOSE_ variables or Docker client config of this shell
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TAPESERVE_", "COMPOSE_", "DOCKER_"))}
    env["DOCKER_CONFIG"] = str(tmp_path)
    return env


def compose(tmp_path: Path, *args: str, file: Path = ROOT / "docker-compose.yml") -> subprocess.CompletedProcess[str]:
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.touch()
    return run(
        tool("docker-compose"),
        "--file",
        str(file),
        "--env-file",
        str(empty_env_file),
        *args,
        env=compose_environment(tmp_path),
    )


def compose_config(tmp_path: Path, *profiles: str) -> dict[str, Any]:
    profile_args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = compose(tmp_path, *profile_args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def compose_cpu(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def compose_gpu(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose"), "gpu")


def assert_ready_healthcheck(service: dict[str, Any]) -> None:
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    ast.parse(test[3])
    assert "http://127.0.0.1:8000/readyz" in test[3]


def test_compose_mounts_one_model_repository_read_only_into_every_replica(compose_gpu: dict[str, Any]) -> None:
    services = compose_gpu["services"]
    sources = set()
    for name in ("tapeserve", *sorted(GPU_SERVICES)):
        replica = services[name]
        assert replica["environment"]["TAPESERVE_MODEL_DIR"] == MODEL_DIR
        (mount,) = [volume for volume in replica["volumes"] if volume["target"] == MODEL_DIR]
        assert mount["type"] == "bind" and mount["read_only"] is True, name
        sources.add(Path(mount["source"]))
    assert sources == {ROOT / "models"}, "every replica serves the same repository, by default the example's"
    assert not any(volume["target"] == MODEL_DIR for volume in services["lb"].get("volumes", []))


def test_compose_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  api:\n    image: x\n    deploy:\n      replica: 2\n", encoding="utf-8")
    result = compose(tmp_path, "config", "--quiet", file=bad)
    assert result.returncode != 0
    assert "'replica' not allowed" in result.stderr


def test_compose_by_default_runs_cpu_replicas_behind_nginx(compose_cpu: dict[str, Any]) -> None:
    services = compose_cpu["services"]
    assert set(services) == {"tapeserve", "lb"}
    replica = services["tapeserve"]
    assert replica["build"]["args"] == {"TF_VARIANT": "cpu"}
    assert replica["environment"]["TAPESERVE_DEVICE"] == "cpu"
    assert replica["deploy"]["replicas"] >= 2
    assert "ports" not in replica, "replicas publish no port: only the load balancer does"
    assert_ready_healthcheck(replica)
    lb = services["lb"]
    assert lb["depends_on"] == {"tapeserve": {"condition": "service_healthy", "required": True}}
    mounts = {volume["target"]: Path(volume["source"]) for volume in lb["volumes"]}
    assert mounts == {
        "/etc/nginx/nginx.conf": DEPLOY / "nginx.conf",
        "/etc/nginx/tapeserve-upstream.conf": DEPLOY / "nginx-upstream-cpu.conf",
        "/etc/nginx/tapeserve-listen.conf": DEPLOY / "nginx-listen.conf",
    }
    assert [(port["published"], port["target"]) for port in lb["ports"]] == [("8000", 8080)]


def test_compose_gpu_profile_reserves_one_nvidia_gpu_per_replica(compose_gpu: dict[str, Any]) -> None:
    services = compose_gpu["services"]
    gpu_services = {name: service for name, service in services.items() if "gpu" in service.get("profiles", [])}
    assert set(gpu_services) == GPU_SERVICES | {"lb-gpu"}
    device_ids: list[str] = []
    for name in sorted(GPU_SERVICES):
        replica = services[name]
        assert replica["build"]["args"] == {"TF_VARIANT": "gpu"}
        assert replica["image"] == "tapeserve:gpu"
        assert replica["environment"]["TAPESERVE_DEVICE"] == "gpu"
        assert_ready_healthcheck(replica)
        (reservation,) = replica["deploy"]["resources"]["reservations"]["devices"]
        assert reservation["driver"] == "nvidia"
        assert reservation["capabilities"] == ["gpu"]
        assert len(reservation["device_ids"]) == 1
        device_ids += reservation["device_ids"]
    assert sorted(device_ids) == [str(index) for index in range(len(GPU_SERVICES))]
    lb = services["lb-gpu"]
    assert set(lb["depends_on"]) == GPU_SERVICES
    assert all(dependency["condition"] == "service_healthy" for dependency in lb["depends_on"].values())
    mounts = {volume["target"]: Path(volume["source"]) for volume in lb["volumes"]}
    assert mounts["/etc/nginx/tapeserve-upstream.conf"] == DEPLOY / "nginx-upstream-gpu.conf"
    assert mounts["/etc/nginx/tapeserve-listen.conf"] == DEPLOY / "nginx-listen.conf"
    # the CPU service reserves no device
    assert not services["tapeserve"]["deploy"].get("resources", {}).get("reservations")


# ---------------------------------------------------------------- nginx


def nginx_config(upstream: str, tmp_path: Path) -> list[dict[str, Any]]:
    """crossplane's parse of nginx.conf laid out as in the container, the include followed."""
    layout = tmp_path / upstream
    layout.mkdir()
    shutil.copy(DEPLOY / "nginx.conf", layout / "nginx.conf")
    shutil.copy(DEPLOY / f"nginx-upstream-{upstream}.conf", layout / "tapeserve-upstream.conf")
    shutil.copy(DEPLOY / "nginx-listen.conf", layout / "tapeserve-listen.conf")
    result = run(tool("crossplane"), "parse", str(layout / "nginx.conf"))
    payload: dict[str, Any] = json.loads(result.stdout)
    assert payload["status"] == "ok", payload["errors"]
    files: list[dict[str, Any]] = payload["config"]
    assert [Path(file["file"]).name for file in files] == [
        "nginx.conf",
        "tapeserve-upstream.conf",
        "tapeserve-listen.conf",
    ]
    return files


def inlined(files: list[dict[str, Any]], index: int = 0) -> list[dict[str, Any]]:
    """File `index`'s directives with every include replaced by the included file's, as nginx reads them."""

    def expand(block: list[dict[str, Any]]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = []
        for directive in block:
            if directive["directive"] == "include":
                result += [entry for included in directive["includes"] for entry in inlined(files, included)]
            else:
                result.append({**directive, "block": expand(directive["block"])} if "block" in directive else directive)
        return result

    return expand(files[index]["parsed"])


def directives(block: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for directive in block:
        yield directive
        yield from directives(directive.get("block", []))


def find(block: list[dict[str, Any]], name: str) -> list[list[str]]:
    return [directive["args"] for directive in directives(block) if directive["directive"] == name]


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[match.group(2)]


def test_crossplane_rejects_a_broken_nginx_config(tmp_path: Path) -> None:
    bad = tmp_path / "nginx.conf"
    bad.write_text("http {\n    proxy_pass http://tapeserve;\n    server { listen 8080 }\n}\n", encoding="utf-8")
    payload = json.loads(run(tool("crossplane"), "parse", str(bad)).stdout)
    assert payload["status"] == "failed"
    assert len(payload["errors"]) == 2


@pytest.mark.parametrize("upstream", ["cpu", "gpu"])
def test_nginx_proxies_within_the_service_limits(upstream: str, tmp_path: Path, compose_gpu: dict[str, Any]) -> None:
    parsed = inlined(nginx_config(upstream, tmp_path))
    assert find(parsed, "client_max_body_size") == [["64m"]]
    timeout_s = float(compose_gpu["services"]["tapeserve"]["environment"]["TAPESERVE_TIMEOUT_S"])
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        (value,) = find(parsed, name)
        assert seconds(value[0]) > timeout_s, f"{name} must outlast TAPESERVE_TIMEOUT_S"
    headers = {args[0]: args[1] for args in find(parsed, "proxy_set_header")}
    assert headers["X-Request-ID"] == "$tapeserve_request_id"
    (request_id_map,) = [d for d in directives(parsed) if d["directive"] == "map"]
    assert request_id_map["args"] == ["$http_x_request_id", "$tapeserve_request_id"]
    assert {entry["directive"]: entry["args"] for entry in request_id_map["block"]} == {
        "default": ["$http_x_request_id"],
        "": ["$request_id"],
    }
    assert find(parsed, "proxy_pass") == [["http://tapeserve"]]
    assert ["8080"] in find(parsed, "listen")
    # nginx's own errors answer in problem+json too
    assert sorted(args[-1] for args in find(parsed, "error_page")) == [
        "@no_replica",
        "@payload_too_large",
        "@replica_timeout",
    ]
    for args in find(parsed, "return"):
        problem = json.loads(args[1])
        assert problem["status"] == int(args[0])
        assert {"type", "title", "status", "detail"} <= problem.keys()


@pytest.mark.parametrize("upstream", ["cpu", "gpu"])
def test_nginx_upstream_round_robins_over_the_compose_replicas(
    upstream: str, tmp_path: Path, compose_gpu: dict[str, Any]
) -> None:
    _, included, _ = nginx_config(upstream, tmp_path)
    (block,) = included["parsed"]
    assert block["directive"] == "upstream"
    assert block["args"] == ["tapeserve"]
    inner = {directive["directive"] for directive in block["block"]}
    # no balancing directive: round robin
    assert not inner & {"least_conn", "ip_hash", "hash", "random"}
    servers = find(block["block"], "server")
    hosts = {args[0].rpartition(":")[0] for args in servers}
    assert all(args[0].endswith(":8000") and "resolve" in args[1:] for args in servers)
    assert find(block["block"], "zone"), "`resolve` needs a shared zone"
    services = compose_gpu["services"]
    expected = {"tapeserve"} if upstream == "cpu" else GPU_SERVICES
    assert hosts == expected
    assert all(services[host]["expose"] == ["8000"] for host in hosts)


@pytest.mark.parametrize("upstream", ["cpu", "gpu"])
def test_nginx_retries_a_lost_request_on_another_replica_within_bounds(upstream: str, tmp_path: Path) -> None:
    parsed = inlined(nginx_config(upstream, tmp_path))
    (conditions,) = find(parsed, "proxy_next_upstream")
    # pure computations: a POST already sent may run again elsewhere when its replica died or went away
    assert {"error", "timeout", "invalid_header", "http_502", "http_503", "non_idempotent"} <= set(conditions)
    # a replica's own deadline (504), its full queue (429) and a bug (500) are answers, not lost requests
    assert not {"http_504", "http_429", "http_500", "off"} & set(conditions)
    assert find(parsed, "proxy_request_buffering") == [["on"]], "a retried POST needs its whole body kept"
    ((tries,),) = find(parsed, "proxy_next_upstream_tries")
    assert 2 <= int(tries) <= 3
    ((retry_window,),) = find(parsed, "proxy_next_upstream_timeout")
    ((read_timeout,),) = find(parsed, "proxy_read_timeout")
    assert 0 < seconds(retry_window) < seconds(read_timeout)


@pytest.mark.parametrize("upstream", ["cpu", "gpu"])
def test_nginx_holds_a_burst_and_drops_silent_clients(upstream: str, tmp_path: Path) -> None:
    parsed = inlined(nginx_config(upstream, tmp_path))
    ((connections,),) = find(parsed, "worker_connections")
    ((files,),) = find(parsed, "worker_rlimit_nofile")
    # two connections per proxied request (client and replica), each a file descriptor
    assert int(connections) >= 2 * 1024 and int(files) >= 2 * int(connections)
    for name in ("client_header_timeout", "client_body_timeout"):
        ((value,),) = find(parsed, name)
        assert seconds(value) <= 15
    # nginx lets idle replica connections go before uvicorn's 5 s keep-alive closes them under a request
    ((keepalive_timeout,),) = find(parsed, "keepalive_timeout")
    assert seconds(keepalive_timeout) < 5


@pytest.mark.parametrize("upstream", ["cpu", "gpu"])
def test_nginx_passes_every_path_and_its_verb_unchanged(upstream: str, tmp_path: Path) -> None:
    parsed = inlined(nginx_config(upstream, tmp_path))
    locations = [d for d in directives(parsed) if d["directive"] == "location"]
    proxying = [location for location in locations if find(location["block"], "proxy_pass")]
    # one prefix location for every path, so `/v1/models/diabetes:predict` and its siblings reach a replica;
    # no regex or exact location that could catch a `:verb` path on its own
    assert [location["args"] for location in proxying] == [["/"]]
    assert all(location["args"][0] in {"/"} or location["args"][0].startswith("@") for location in locations)
    # proxy_pass without a URI part sends the request's own URI (`:` and all) as the client wrote it
    ((target,),) = find(proxying[0]["block"], "proxy_pass")
    assert re.fullmatch(r"http://[a-z_-]+", target), target
    assert not find(parsed, "rewrite") and not find(parsed, "merge_slashes")


def drain_bound_s(environment: dict[str, Any]) -> float:
    """The longest a replica may take after SIGTERM: the grace period, then a request's deadline plus 5 s."""
    return float(environment["TAPESERVE_DRAIN_GRACE_S"]) + float(environment["TAPESERVE_TIMEOUT_S"]) + 5


def test_compose_waits_for_a_replica_to_drain(compose_gpu: dict[str, Any]) -> None:
    services = compose_gpu["services"]
    for name in ("tapeserve", *sorted(GPU_SERVICES)):
        replica = services[name]
        assert replica.get("stop_signal", "SIGTERM") == "SIGTERM"
        assert seconds(replica["stop_grace_period"]) > drain_bound_s(replica["environment"]), name


# ---------------------------------------------------------------- Kubernetes


def manifest(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((K8S / name).read_text(encoding="utf-8"))
    return document


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda version: version or "newest")
def test_kubernetes_validate_accepts_the_manifests(version: str | None) -> None:
    version_args = ["--kubernetes-version", version] if version else []
    result = run(tool("kubernetes-validate"), "--strict", *version_args, *(str(K8S / name) for name in MANIFESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == len(MANIFESTS), result.stdout


def test_kubernetes_validate_rejects_a_misspelt_probe(tmp_path: Path) -> None:
    bad = tmp_path / "deployment.yaml"
    bad.write_text((K8S / "deployment.yaml").read_text(encoding="utf-8").replace("path: /readyz", "paht: /readyz"))
    result = run(tool("kubernetes-validate"), "--strict", str(bad))
    assert result.returncode != 0
    assert "'paht' was unexpected" in result.stdout + result.stderr


def test_kustomization_lists_the_cpu_deployment_and_the_service() -> None:
    kustomization = manifest("kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == ["deployment.yaml", "service.yaml", "models-pvc.yaml"]


def dockerfile_uid() -> int:
    (user,) = re.findall(r"^USER (\d+):\d+$", (ROOT / "Dockerfile").read_text(encoding="utf-8"), re.M)
    return int(user)


@pytest.mark.parametrize("name", ["deployment.yaml", "deployment-gpu.yaml"])
def test_deployment_probes_security_and_settings(name: str) -> None:
    deployment = manifest(name)
    gpu = name == "deployment-gpu.yaml"
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == dockerfile_uid()
    (container,) = spec["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["image"] == ("tapeserve:gpu" if gpu else "tapeserve:cpu")
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["TAPESERVE_HOST"] == "0.0.0.0"
    assert env["TAPESERVE_DEVICE"] == ("gpu" if gpu else "cpu")
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["TAPESERVE_PORT"])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": port["name"]}
    # SIGTERM lets in-flight requests finish: TAPESERVE_TIMEOUT_S plus the server's 5 s of grace
    assert spec["terminationGracePeriodSeconds"] >= float(env["TAPESERVE_TIMEOUT_S"]) + 5
    # the root filesystem is read-only, so the image's MPLCONFIGDIR lies on a writable volume
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (config_dir,) = re.findall(r"\bMPLCONFIGDIR=(\S+)", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    # the only writable mount is that volume; the model repository is mounted read-only (issue 12)
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert set(mounts) == {str(Path(config_dir).parent), env["TAPESERVE_MODEL_DIR"]}
    assert not mounts[str(Path(config_dir).parent)].get("readOnly", False)
    limits = container["resources"]["limits"]
    if gpu:
        assert limits["nvidia.com/gpu"] == 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    else:
        assert "nvidia.com/gpu" not in limits


@pytest.mark.parametrize("name", ["deployment.yaml", "deployment-gpu.yaml"])
def test_every_pod_mounts_the_model_repository_read_only(name: str) -> None:
    spec = manifest(name)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["TAPESERVE_MODEL_DIR"] == MODEL_DIR
    (mount,) = [mount for mount in container["volumeMounts"] if mount["mountPath"] == MODEL_DIR]
    assert mount["readOnly"] is True
    (volume,) = [volume for volume in spec["volumes"] if volume["name"] == mount["name"]]
    claim = manifest("models-pvc.yaml")
    assert claim["kind"] == "PersistentVolumeClaim"
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    # one claim for every pod on every node: it must be mountable by many at once, and only for reading
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]


def test_service_reaches_either_deployment_and_their_selectors_do_not_overlap() -> None:
    service = manifest("service.yaml")
    cpu, gpu = manifest("deployment.yaml"), manifest("deployment-gpu.yaml")
    selector = service["spec"]["selector"]
    for deployment in (cpu, gpu):
        pod = deployment["spec"]["template"]
        assert selector.items() <= pod["metadata"]["labels"].items()
        (container,) = pod["spec"]["containers"]
        assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    # each Deployment owns only its own pods
    cpu_pods, gpu_pods = (d["spec"]["template"]["metadata"]["labels"] for d in (cpu, gpu))
    assert not cpu["spec"]["selector"]["matchLabels"].items() <= gpu_pods.items()
    assert not gpu["spec"]["selector"]["matchLabels"].items() <= cpu_pods.items()


@pytest.mark.parametrize("name", ["deployment.yaml", "deployment-gpu.yaml"])
def test_kubernetes_waits_for_a_pod_to_drain(name: str) -> None:
    spec = manifest(name)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert spec["terminationGracePeriodSeconds"] > drain_bound_s(env)
    # the drain's own grace period does what a preStop sleep would; both would only add up
    assert "preStop" not in container.get("lifecycle", {})
