"""Hosts reached over real SSH for the Ansible tests: this machine, seen through one sshd per host.

Each host is a network namespace with its own veth pair and its own sshd (Debian's openssh-server,
started by the test with its own config, host key and pid file, `UsePAM no`, key auth with a key made
here). Where namespaces cannot be created (not root, no CAP_NET_ADMIN), every sshd listens on
127.0.0.1 on its own port instead, and `Hosts.isolation` says so. Teardown kills each sshd by its pid
and deletes what it created.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/bin/sshd")


@dataclass
class Host:
    name: str
    address: str
    port: int
    directory: Path                   # this host's own folder (root, home, sshd files)
    sshd: subprocess.Popen[bytes] | None = None
    namespace: str | None = None
    veth: str | None = None           # the root namespace's end of its veth pair
    inner: str | None = None          # the namespace's end

    @property
    def root(self) -> Path:
        return self.directory / "root"

    @property
    def home(self) -> Path:
        return self.directory / "home"


@dataclass
class Hosts:
    hosts: list[Host]
    key: Path                          # the client's private key
    isolation: str                     # "network namespaces" or "127.0.0.1 ports (...)"

    def by_name(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def cut(self, host: Host) -> list[str]:
        """The command that makes `host` unreachable: its own end of the link down (packets to it are
        dropped, as to a machine that lost its network), or (on 127.0.0.1) its sshd killed."""
        if host.namespace is not None and host.inner is not None:
            return ["ip", "-n", host.namespace, "link", "set", host.inner, "down"]
        assert host.sshd is not None
        return ["kill", str(host.sshd.pid)]

    def restore(self, host: Host) -> None:
        if host.namespace is not None and host.inner is not None:
            subprocess.run(["ip", "-n", host.namespace, "link", "set", host.inner, "up"], check=True)
            _wait_for_port(host.address, host.port, host.directory / "sshd.log", host.sshd)
        elif host.sshd is not None and host.sshd.poll() is not None:
            _start_sshd(host)


def missing_tools() -> str | None:
    """Why these tests cannot run here (None: they can)."""
    if find_sshd() is None:
        return "sshd not found: install Debian's openssh-server (install.sh --test does, as root)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not found: install openssh-client"
    return None


def find_sshd() -> str | None:
    return next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), None) or shutil.which("sshd")


def _run(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True)


def namespaces_possible() -> str | None:
    """None when network namespaces can be made here, else why not."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"pvprobe{os.getpid()}"
    made = _run(["ip", "netns", "add", probe])
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or made.returncode}"
    _run(["ip", "netns", "del", probe])
    return None


@contextmanager
def ssh_hosts(base: Path, names: Sequence[str]) -> Iterator[Hosts]:
    """Start one sshd per name (namespaces where possible) and stop them all afterwards."""
    base.mkdir(parents=True, exist_ok=True)
    key = base / "client_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "provision-test", "-f", str(key)],
                   check=True)
    authorized = base / "authorized_keys"
    authorized.write_text((base / "client_key.pub").read_text())
    authorized.chmod(0o600)
    # Debian's sshd refuses to start without its privilege-separation directory (the ssh service
    # makes it at boot; here nothing has).
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    why_not = namespaces_possible()
    tag = os.getpid() % 100000
    net = 100 + os.getpid() % 100
    hosts: list[Host] = []
    try:
        for i, name in enumerate(names):
            directory = base / "hosts" / name
            for sub in ("root", "home", "sshd"):
                (directory / sub).mkdir(parents=True, exist_ok=True)
            if why_not is None:
                host = Host(name, f"10.{net}.{i}.2", 22, directory, namespace=f"pv{tag}h{i}", veth=f"pv{tag}r{i}",
                            inner=f"pv{tag}n{i}")
                hosts.append(host)
                _make_namespace(host, f"10.{net}.{i}.1")
            else:
                host = Host(name, "127.0.0.1", _free_port(), directory)
                hosts.append(host)
            _write_sshd_config(host, authorized)
            _start_sshd(host)
        isolation = ("network namespaces" if why_not is None
                     else f"127.0.0.1 ports (no network namespaces here: {why_not})")
        yield Hosts(hosts, key, isolation)
    finally:
        for host in hosts:
            _stop(host)


def _make_namespace(host: Host, gateway: str) -> None:
    assert host.namespace and host.veth and host.inner
    ns, inner = host.namespace, host.inner
    for args in (["ip", "netns", "add", ns],
                 ["ip", "link", "add", host.veth, "type", "veth", "peer", "name", inner],
                 ["ip", "link", "set", inner, "netns", ns],
                 ["ip", "addr", "add", f"{gateway}/24", "dev", host.veth],
                 ["ip", "link", "set", host.veth, "up"],
                 ["ip", "-n", ns, "addr", "add", f"{host.address}/24", "dev", inner],
                 ["ip", "-n", ns, "link", "set", inner, "up"],
                 ["ip", "-n", ns, "link", "set", "lo", "up"]):
        subprocess.run(args, check=True, capture_output=True)


def _write_sshd_config(host: Host, authorized: Path) -> None:
    d = host.directory / "sshd"
    hostkey = d / "ssh_host_ed25519_key"
    if not hostkey.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
    sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
                 if os.path.exists(p)), "internal-sftp")
    (d / "sshd_config").write_text("\n".join([
        f"ListenAddress {host.address}:{host.port}",
        f"HostKey {hostkey}",
        f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PrintMotd no",
        "LogLevel ERROR",
        f"Subsystem sftp {sftp}",
        "",
    ]))


def _start_sshd(host: Host) -> None:
    sshd = find_sshd()
    assert sshd is not None
    d = host.directory / "sshd"
    # `ip netns exec` execs sshd in place: the Popen's pid is the daemon's own (-D: no fork).
    prefix = ["ip", "netns", "exec", host.namespace] if host.namespace else []
    log = (host.directory / "sshd.log").open("ab")
    host.sshd = subprocess.Popen([*prefix, sshd, "-D", "-e", "-f", str(d / "sshd_config")],
                                 stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    _wait_for_port(host.address, host.port, host.directory / "sshd.log", host.sshd)


def _wait_for_port(address: str, port: int, log: Path, proc: subprocess.Popen[bytes] | None) -> None:
    """Until sshd accepts connections (it starts in milliseconds; the loop only waits for that)."""
    deadline = time.monotonic() + 30
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"sshd exited {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd on {address}:{port} never answered: {log.read_text(errors='replace')}") from e
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(host: Host) -> None:
    if host.sshd is not None and host.sshd.poll() is None:
        host.sshd.send_signal(signal.SIGTERM)
        try:
            host.sshd.wait(timeout=10)
        except subprocess.TimeoutExpired:
            host.sshd.kill()
            host.sshd.wait()
    if host.namespace is not None:
        _run(["ip", "netns", "del", host.namespace])       # takes the inner veth end with it
    if host.veth is not None:
        _run(["ip", "link", "del", host.veth])             # already gone with its peer, normally
