"""Real processes on loopback for the fault scenarios: tapeserve replicas (`python -m service serve`, one port
each) and, in front of them, real nginx running the shipped `deploy/nginx.conf` byte for byte.

Only the two files that nginx.conf includes are rendered for the harness: `tapeserve-upstream.conf` (the
shipped CPU upstream block with one `server` line per replica port, plus temporary-file paths inside the
harness's directory) and `tapeserve-listen.conf` (a loopback port instead of the container's 8080). nginx
comes from Debian's packages and is installed here when missing, as the benchmark installs wrk.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.packages import ensure_debian_package

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
HOST = "127.0.0.1"
TEMP_PATHS = ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path", "uwsgi_temp_path", "scgi_temp_path")


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """One GET on a fresh connection: (status, body)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((HOST, port)) == 0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


# ---------------------------------------------------------------------------------------------- replicas
@dataclass
class Replica:
    """One `tapeserve serve` process on a fixed loopback port, restartable on the same port."""

    name: str
    port: int
    env: dict[str, str]
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> None:
        env = {**os.environ, **self.env, "TAPESERVE_HOST": HOST, "TAPESERVE_PORT": str(self.port)}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.starts += 1
        with (self.log_dir / f"{self.name}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            process = self.running()
            assert process.poll() is None, f"{self.name} exited with {process.returncode}: {self.log_tail()}"
            with contextlib.suppress(OSError):
                if get(self.port, "/readyz")[0] == 200:
                    return
            assert time.monotonic() < deadline, f"{self.name} not ready after {timeout:g} s: {self.log_tail()}"
            time.sleep(0.05)

    def running(self) -> subprocess.Popen[bytes]:
        assert self.process is not None, f"{self.name} was never started"
        return self.process

    def kill(self) -> None:
        process = self.running()
        process.kill()
        process.wait(timeout=30)

    def terminate(self) -> None:
        self.running().send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = 90.0) -> int:
        return self.running().wait(timeout=timeout)

    def rss(self) -> int:
        return rss_bytes(self.running().pid)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # a second SIGTERM skips the drain's grace period: the scenarios are over
        self.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        path = self.log_dir / f"{self.name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def start_replicas(count: int, env: dict[str, str], log_dir: Path) -> list[Replica]:
    """`count` replicas started together, returned once every one answers /readyz 200."""
    replicas = [Replica(f"replica-{index}", free_port(), env, log_dir) for index in range(count)]
    for replica in replicas:
        replica.start()
    try:
        for replica in replicas:
            replica.wait_ready()
    except BaseException:
        for replica in replicas:
            replica.stop()
        raise
    return replicas


# ---------------------------------------------------------------------------------------------- nginx
def ensure_nginx() -> str:
    """The nginx binary; installed from Debian's packages when missing (see tests.packages)."""
    return ensure_debian_package("nginx")[0]


def render_upstream(addresses: list[str], directory: Path) -> str:
    """The shipped CPU upstream block with one `server` line per address, then temporary-file paths."""
    shipped = (DEPLOY / "nginx-upstream-cpu.conf").read_text()
    (server_line,) = re.findall(r"^\s*server\s+\S+.*;\s*$", shipped, re.M)
    # the container resolves one service name through Docker's DNS; here every replica has its own port
    options = " ".join(word for word in server_line.strip().rstrip(";").split()[2:] if word != "resolve")
    servers = "".join(f"    server {address}{' ' + options if options else ''};\n" for address in addresses)
    rendered = shipped.replace(server_line + "\n", servers)
    paths = "".join(f"{name} {directory / name.removesuffix('_path')};\n" for name in TEMP_PATHS)
    return rendered + paths


@dataclass
class Nginx:
    """nginx in the foreground (`daemon off`), its pid, logs and temporary files in a directory of its own."""

    binary: str
    upstreams: list[str]
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tapeserve-nginx-")))
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # the workers run as an unprivileged user when nginx starts as root: they must reach the temp paths
        self.directory.chmod(0o755)
        shutil.copyfile(DEPLOY / "nginx.conf", self.directory / "nginx.conf")
        (self.directory / "tapeserve-upstream.conf").write_text(render_upstream(self.upstreams, self.directory))
        (self.directory / "tapeserve-listen.conf").write_text(f"listen {HOST}:{self.port};\n")
        command = [
            self.binary,
            "-p",
            f"{self.directory}/",
            "-c",
            str(self.directory / "nginx.conf"),
            "-e",
            "stderr",
            "-g",
            f"daemon off; pid {self.directory / 'nginx.pid'};",
        ]
        with (self.directory / "access.log").open("wb") as access, (self.directory / "error.log").open("wb") as error:
            self.process = subprocess.Popen(command, stdout=access, stderr=error)
        deadline = time.monotonic() + 20
        while not accepts(self.port):
            assert self.process.poll() is None, f"nginx exited: {self.errors()}"
            assert time.monotonic() < deadline, f"nginx never listened: {self.errors()}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # nginx's graceful shutdown
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def errors(self) -> str:
        return (self.directory / "error.log").read_text(errors="replace")

    def access_entries(self) -> list[dict[str, Any]]:
        """nginx's JSON access log (deploy/nginx.conf's `tapeserve` format), one dict per request."""
        text = (self.directory / "access.log").read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
