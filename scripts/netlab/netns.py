"""The lab's network: one namespace per host, a bridge inside a "switch" namespace, a veth pair
from each host to the switch, and the checks that keep the lab's addresses inside the lab.

Containment: no link, address or route of the lab is ever made in the root namespace (each
veth pair is created inside the switch namespace with its other end straight in the host's),
no lab namespace gets a default route, and IPv6 is off in the lab, so a lab address is
reachable only from a lab namespace and nothing in the lab reaches anything outside it.
Clients of the lab run inside a lab namespace: a command with `exec_in`, a socket with
`connect_in` (made on a thread that has entered the namespace, and checked to be there).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, TypeVar

from scripts.local_services import alive
from scripts.netlab.topology import Lab
from scripts.stack.config import StackError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """`ip [-n netns] args`: its output, or StackError naming the command."""
    command = ["ip", *(("-n", netns) if netns else ()), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise StackError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result.stdout


def exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def exec_in(netns: str, *command: str) -> list[str]:
    """The command line that runs `command` inside `netns`."""
    return ["ip", "netns", "exec", netns, *command]


def can_build() -> str | None:
    """Why this machine cannot build a lab (not root, no `ip netns`), or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces)"
    for probe in (["ip", "netns", "list"], ["unshare", "--net", "true"]):
        try:
            subprocess.run(probe, capture_output=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"`{' '.join(probe)}` failed: network namespaces are unavailable ({exc})"
    return None


# -- building and removing ------------------------------------------------------------------
def _add_netns(lab: Lab, netns: str) -> None:
    ip("netns", "add", netns)
    lab.created_netns.append(netns)
    lab.save()  # before anything goes into it: `down` removes what the file names
    subprocess.run(exec_in(netns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                           "net.ipv6.conf.default.disable_ipv6=1"),
                   capture_output=True, timeout=30, check=True)
    ip("link", "set", "lo", "up", netns=netns)


def build(lab: Lab) -> None:
    """Every namespace, the switch's bridge, a veth pair per host, the hosts' addresses."""
    check_subnet_unused(lab)
    _add_netns(lab, lab.switch)
    ip("link", "add", lab.bridge, "type", "bridge", netns=lab.switch)
    ip("link", "set", lab.bridge, "up", netns=lab.switch)
    prefix = lab.network.prefixlen
    for host in lab.hosts.values():
        _add_netns(lab, host.netns)
        # Made inside the switch, its other end straight in the host: never in the root.
        ip("link", "add", host.switch_port, "type", "veth", "peer", "name", "eth0",
           "netns", host.netns, netns=lab.switch)
        ip("link", "set", host.switch_port, "master", lab.bridge, "up", netns=lab.switch)
        ip("addr", "add", f"{host.address}/{prefix}", "dev", "eth0", netns=host.netns)
        ip("link", "set", "eth0", "up", netns=host.netns)


def pids(netns: str) -> list[int]:
    """Every process in `netns` (none when it does not exist)."""
    return [int(pid) for pid in ip("netns", "pids", netns, check=False).split()]


def kill_processes(netns: str, grace: float = 10.0) -> list[int]:
    """Stop, by pid, whatever still runs in `netns` (TERM, then KILL); the pids it found."""
    found = pids(netns)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while any(alive(pid) for pid in found) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not any(alive(pid) for pid in found):
            break
    return found


def remove(lab: Lab) -> None:
    """Every namespace `up` created (its links go with it), after whatever still runs there."""
    for netns in reversed(lab.created_netns):
        if exists(netns):
            kill_processes(netns)
            ip("netns", "del", netns)
    lab.created_netns.clear()


# -- containment ----------------------------------------------------------------------------
def _overlaps(lab: Lab, prefix: str) -> bool:
    if prefix in ("default", "0.0.0.0/0"):
        return False
    try:
        network = ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        return False
    return network.version == 4 and network.overlaps(lab.network)


def root_addresses_and_routes(lab: Lab) -> list[str]:
    """Addresses and routes (any table) of the root namespace inside the lab's subnet."""
    found = []
    for line in ip("-o", "-4", "addr", "show").splitlines():
        words = line.split()
        address = words[words.index("inet") + 1]
        if _overlaps(lab, address):
            found.append(f"address {address} on {words[1]}")
    for line in ip("-4", "route", "show", "table", "all").splitlines():
        words = line.split()
        if words and words[0] in ("local", "broadcast", "unicast") and len(words) > 1:
            words = words[1:]
        if words and _overlaps(lab, words[0]):
            found.append(f"route {line.strip()}")
    return found


def check_subnet_unused(lab: Lab) -> None:
    used = root_addresses_and_routes(lab)
    if used:
        raise StackError(f"the lab's subnet {lab.subnet} is in use on this machine: {used[0]}")


def containment_problems(lab: Lab) -> list[str]:
    """Every way the lab's addresses could leak out of it; empty when contained."""
    problems = [f"root namespace: {item}" for item in root_addresses_and_routes(lab)]
    # The lab's links are named after it (<name>-br, <name>-<host>) and live in the switch:
    # none may show in the root namespace, nor carry a route there to a lab address.
    root_links = {line.split()[0].split("@")[0] for line in ip("-br", "link").splitlines()}
    lab_links = {lab.bridge, *(host.switch_port for host in lab.hosts.values())}
    problems += [f"root namespace has the lab's link {link}" for link in root_links & lab_links]
    for host in lab.hosts.values():
        words = ip("-4", "route", "get", host.address, check=False).split()
        device = words[words.index("dev") + 1] if "dev" in words else ""
        if device in lab_links:
            problems.append(f"root namespace reaches {host.address} through {device}")
    for netns in lab.netns:
        if not exists(netns):
            continue
        if ip("route", "show", "default", netns=netns).strip():
            problems.append(f"{netns} has a default route")
        if ip("-6", "route", "show", "default", netns=netns, check=False).strip():
            problems.append(f"{netns} has an IPv6 default route")
        for line in ip("-o", "addr", "show", netns=netns).splitlines():
            words = line.split()
            family, address = words[2], words[3]
            network = ipaddress.IPv4Network(address, strict=False) if family == "inet" else None
            if network is None or not (network.is_loopback or network.subnet_of(lab.network)):
                problems.append(f"{netns} has address {address} outside the lab")
    return problems


# -- clients inside the lab -----------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def _netns_inode(path: str | Path) -> int:
    return os.stat(path).st_ino


def _enter(netns: str) -> None:
    """Move the calling thread (only it) into `netns`, and make sure it is there."""
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns({netns}): {os.strerror(error)}")
    finally:
        os.close(fd)
    if _netns_inode("/proc/thread-self/ns/net") != _netns_inode(NETNS_DIR / netns):
        raise OSError(f"this thread did not enter {netns}")


def run_in(netns: str, function: Callable[[], T]) -> T:
    """`function()` on a new thread inside `netns`; sockets it makes stay in that namespace."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            _enter(netns)
            outcome["value"] = function()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"in-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def connect_in(netns: str, address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection made from inside `netns`."""
    return run_in(netns, lambda: socket.create_connection((address, port), timeout=timeout))


class NetnsHTTPConnection(HTTPConnection):
    """http.client's connection, its socket made inside a lab namespace."""

    def __init__(self, netns: str, host: str, port: int, timeout: float = 10.0) -> None:
        super().__init__(host, port, timeout=timeout)
        self.netns = netns

    def connect(self) -> None:
        self.sock = connect_in(self.netns, self.host, self.port, float(self.timeout or 10.0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def http_get(netns: str, address: str, port: int, path: str,
             timeout: float = 3.0) -> tuple[int, bytes]:
    """One GET from inside `netns`: (status, body); OSError when nothing answers."""
    connection = NetnsHTTPConnection(netns, address, port, timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_for_tcp(netns: str, address: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connect_in(netns, address, port, 1.0).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise StackError(f"{address}:{port} did not answer within {timeout:.0f}s "
                                 f"(from {netns}: {exc})") from None
            time.sleep(0.2)
