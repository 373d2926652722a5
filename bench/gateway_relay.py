"""End-to-end gateway benchmark: Sealpost against its client/sink ceiling and Postfix+OpenDKIM.

    .venv/bin/python bench/gateway_relay.py         throughput, latency, RSS with a full queue
    .venv/bin/python bench/gateway_relay.py --messages 300 --warmup 50 \
        --rss-messages 1000 --quiet-wait 0          a quick check that it all works
    .venv/bin/python bench/gateway_relay.py --rss-only [--rss-messages N]
    sudo .venv/bin/python bench/gateway_relay.py --compare 5
                                                    interleaved with the Postfix peer (run.sh)
    .venv/bin/python bench/gateway_relay.py --log-ab 5
                                                    the statement log on and off, alternating

The load is the peer's own (../shared/bench/postfix-opendkim/): ``message.eml`` (a 27 KB
statement with a PDF), sent by Postfix's ``smtp-source`` over 20 concurrent sessions, one
message per connection, one recipient, into ``smtp-sink -c``; a run is timed from
smtp-source's start until the sink has counted every message, exactly as ``run.sh`` times
it. The gateway is ``sealpost-gateway --config FILE`` with its own temporary key store,
spool and ports, relaying through a smarthost route (opportunistic TLS, which the sink does
not offer) to the sink. Everything listens on 127.0.0.1.

Printed: messages/s end to end and at acceptance; CPU ms per message of the gateway's whole
process tree (from /proc, the sealing pool included); peak RSS of that tree; the same load
sent straight to the sink (the client/sink ceiling) in the same run; p50/p99 time from MAIL
to the 250 after DATA while an aiosmtplib client offers a steady rate (default 100 msgs/s);
and peak RSS while N messages (default 10,000) queue up behind a sink that is down, then
after a restart on that queue.

``--compare ROUNDS`` interleaves, per round, one ``run.sh`` invocation (RUNS=1, the same
MSGS/SESS/WARMUP; as root) with one Sealpost measurement of the same load, then prints the
medians and the ratio Sealpost / (Postfix+OpenDKIM). Before every measured run the script
waits (bounded) for the machine to be quiet, and repeats a run that other processes or the
hypervisor disturbed, as run.sh does. Figures on a shared 2-core machine swing by 20% or
more: quote the ratio measured in one run, never an absolute figure alone.

Every wait has a timeout; every process started here is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import math
import os
import pwd
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import IO

import aiosmtplib

REPO = Path(__file__).resolve().parents[1]
PEER_DIR = REPO.parent / "shared" / "bench" / "postfix-opendkim"
PEER_RESULTS = Path("/tmp/postfix-opendkim-anchor/results.tsv")
GATEWAY_BIN = REPO / ".venv" / "bin" / "sealpost-gateway"

SENDER = "statements@caisses.example"
RECIPIENT = "customer@example.net"
HELO = "client.caisses.example"
DOMAIN = "caisses.example"

HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
NCPU = os.cpu_count() or 1
MB = 1024 * 1024

SINK_POLL = 0.05  # seconds between reads of the sink counter, as run.sh
RSS_POLL = 0.2  # seconds between RSS samples of the gateway tree
PSS_POLL = 1.0  # smaps_rollup is costlier to read than statm
FOREIGN_PCT = 5.0  # a run in which other processes used more than this % of the machine...
STEAL_PCT = 10.0  # ... or the hypervisor stole more than this %, is repeated


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A run that cannot give a figure (timeout, stall, a client error): said, never hidden."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM, as an exception so that every `finally` stops what it started."""


# ---------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    pgid: int
    ticks: int  # utime + stime + cutime + cstime: the process and its reaped children


def read_stat(pid: int) -> ProcStat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    ticks = sum(int(f) for f in fields[11:15])
    return ProcStat(pid, int(fields[1]), int(fields[2]), ticks)


def all_stats() -> dict[int, ProcStat]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := read_stat(int(entry))) is not None:
            stats[stat.pid] = stat
    return stats


def tree(root: int, stats: dict[int, ProcStat] | None = None) -> list[ProcStat]:
    """`root` and its live descendants."""
    stats = all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for s in stats.values():
        children.setdefault(s.ppid, []).append(s.pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found.append(stats[pid])
            todo.extend(children.get(pid, ()))
    return found


def tree_cpu(root: int, stats: dict[int, ProcStat] | None = None) -> float:
    """CPU seconds of a process tree: every live member with its reaped children, so the
    time of a worker that came and went is still counted (in its parent's cutime)."""
    return sum(s.ticks for s in tree(root, stats)) / HZ


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


def pss_bytes(pids: Sequence[int]) -> int:
    """Proportional set size: shared pages (the pool workers are forks) counted once."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


@dataclass(frozen=True)
class MachineCpu:
    total: int  # jiffies, all CPUs, all states
    busy: int  # user + nice + system + irq + softirq: run.sh's "busy"
    processes: int  # user + nice + system: time that some process is charged with
    steal: int


def machine_cpu() -> MachineCpu:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    processes = sum(values[0:3])
    return MachineCpu(sum(values), processes + values[5] + values[6], processes, values[7])


def wait_quiet(busy_pct: float, max_wait: float) -> bool:
    """Wait (at most `max_wait` s) until the machine's busy share over 1 s is below
    `busy_pct` of all CPUs, as run.sh does before a measured run; False if it never was."""
    if max_wait <= 0:
        return True
    end = time.monotonic() + max_wait
    while True:
        a = machine_cpu()
        time.sleep(1.0)
        b = machine_cpu()
        busy = 100.0 * (b.busy - a.busy) / max(1, b.total - a.total)
        if busy <= busy_pct:
            return True
        if time.monotonic() >= end:
            log(f"machine still busy ({busy:.0f}% of all CPUs) after {max_wait:.0f}s: measuring")
            return False


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if this script is killed outright (SIGKILL,
    # where no `finally` runs), the kernel stops the child too.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _exited(pid: int) -> bool:
    """Whether `pid` (our child) has exited, without reaping it: while it is an unreaped
    zombie its pid, and so its process group id, cannot be reused by anyone else."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


class Processes:
    """Every process group this script started, so that one call stops them all."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        *,
        stdout: IO[bytes] | int | None,
        stderr: IO[bytes] | int | None = subprocess.STDOUT,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group: Ctrl-C here reaches us only
            preexec_fn=_die_with_parent,
        )
        self._running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """SIGTERM to the leader, then, after `grace` s or once it has gone, SIGKILL to
        whatever is left of its process group; then reap it."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            end = time.monotonic() + grace
            while not _exited(process.pid) and time.monotonic() < end:
                time.sleep(0.05)
        # Also when the leader has gone on its own (a crashed gateway leaves its pool
        # workers behind). The group id stays ours: Linux does not reuse a pid while an
        # unreaped leader or any member of its group still holds it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process in self._running:
            self._running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self._running)):
            self.stop(process, grace=5.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise BenchError(f"{process.args!r} exited ({process.returncode}) before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1.0):
            return
        time.sleep(0.1)
    raise BenchError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


class Sink:
    """``smtp-sink -c``: accepts everything, counts messages on its stdout; with `dump`,
    also writes each message into a file in that directory."""

    def __init__(
        self, procs: Processes, workdir: Path, port: int, lifetime: float, dump: Path | None = None
    ) -> None:
        self.port = port
        self.out = workdir / f"sink-{port}.out"
        argv = ["timeout", str(int(lifetime)), "smtp-sink", "-c"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink refuses to keep root privileges
            if dump is not None:
                os.chown(dump, pwd.getpwnam("nobody").pw_uid, -1)
        if dump is not None:
            argv += ["-d", f"{dump}/%Y%m%d%H%M%S."]
        argv += [f"127.0.0.1:{port}", "1000"]
        self._procs = procs
        with open(self.out, "wb") as out:
            self.process = procs.start(argv, stdout=out)
        wait_port(port, 10, self.process)

    def count(self) -> int:
        # smtp-sink -c rewrites "sess=N quit=N mesg=N\r" at every change.
        with open(self.out, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            tail = os.pread(f.fileno(), 64, max(0, size - 64))
        _, found, rest = tail.rpartition(b"mesg=")
        digits = rest[: len(rest) - len(rest.lstrip(b"0123456789"))]
        return int(digits) if found and digits else 0

    def check(self) -> None:
        """Raise if smtp-sink has died (it says why on its output)."""
        if self.process.poll() is not None:
            said = self.out.read_bytes()[-300:].decode(errors="replace").replace("\r", "\n")
            raise BenchError(f"smtp-sink exited ({self.process.returncode}): {said.strip()}")

    def cpu(self) -> float:
        return tree_cpu(self.process.pid)

    def stop(self) -> None:
        self._procs.stop(self.process, grace=5.0)


@dataclass(frozen=True)
class GatewayConfig:
    workdir: Path
    port: int
    smarthost_port: int
    keys: Path
    spool: Path
    workers: int | None
    concurrency: int | None
    log_level: str
    statement_log: bool = True  # off: [log] key = "" (no entries, no wait for checkpoints)
    lanes: int | None = None  # gateway.lanes (SMTP processes sharing the port)

    def toml(self) -> str:
        lines = [
            "# Written by bench/gateway_relay.py: all on 127.0.0.1, in a temporary directory.",
            "[gateway]",
            'hostname = "bench.caisses.example"',
            f'log_level = "{self.log_level}"',
            "shutdown_grace = 5.0",
            *([f"lanes = {self.lanes}"] if self.lanes else []),
            "[relay]",
            f'listen = "127.0.0.1:{self.port}"',
            "[submission]",
            'listen = ""',
            "[metrics]",
            'listen = ""',
            "[tls]",
            f'certificate = "{self.workdir / "tls" / "cert.pem"}"',
            f'key = "{self.workdir / "tls" / "key.pem"}"',
            "[keys]",
            f'store = "{self.keys}"',
            f'public_archive = "{self.keys.parent / "public"}"',
            f'init_domain = "{DOMAIN}"',
            "[spool]",
            f'path = "{self.spool}"',
            "[delivery]",
            'route = "smarthost"',
            f'smarthost = "127.0.0.1:{self.smarthost_port}"',
            'smarthost_tls = "opportunistic"',
        ]
        if self.concurrency is not None:
            lines.append(f"concurrency_per_destination = {self.concurrency}")
        if self.workers is not None:
            lines += ["[sealing]", f"workers = {self.workers}"]
        if not self.statement_log:
            lines += ["[log]", 'key = ""']
        return "\n".join(lines) + "\n"


class Gateway:
    """One ``sealpost-gateway --config FILE`` process (and its sealing pool)."""

    def __init__(self, procs: Processes, binary: Path, config: GatewayConfig, name: str) -> None:
        self._procs = procs
        self._binary = binary
        self.config_path = config.workdir / f"{name}.toml"
        self.config_path.write_text(config.toml())
        self.log_path = config.workdir / f"{name}.log"
        self.port = config.port
        with open(self.log_path, "ab") as out:
            self.process = procs.start(
                [str(binary), "--config", str(self.config_path)],
                stdout=out,
                cwd=config.workdir,
            )
        # The first start initialises the key store (RSA, Ed25519, the root CA): allow time.
        wait_port(self.port, 120, self.process)
        self._pids = [s.pid for s in tree(self.process.pid)]
        self._pids_at = time.monotonic()

    def pids(self) -> list[int]:
        if time.monotonic() - self._pids_at > 1.0:  # the pool may replace a worker
            self._pids = [s.pid for s in tree(self.process.pid)]
            self._pids_at = time.monotonic()
        return self._pids

    def cpu(self, stats: dict[int, ProcStat] | None = None) -> float:
        return tree_cpu(self.process.pid, stats)

    def main_cpu(self, stats: dict[int, ProcStat]) -> float:
        own = stats.get(self.process.pid)
        return 0.0 if own is None else own.ticks / HZ

    def alive(self) -> bool:
        return self.process.poll() is None

    def queue_depth(self) -> int | None:
        """Messages in the spool, from ``sealpost-gateway queue list``'s last line."""
        try:
            done = subprocess.run(
                [str(self._binary), "--config", str(self.config_path), "queue", "list"],
                capture_output=True,
                timeout=300,
                check=False,
                cwd=self.config_path.parent,
            )
        except subprocess.TimeoutExpired:
            return None
        last = done.stdout.decode(errors="replace").strip().rpartition("\n")[2]
        words = last.split()
        return int(words[1]) if last.startswith("--") and len(words) > 1 else None

    def effective_settings(self) -> dict[str, str]:
        """``section.key -> value`` from ``sealpost-gateway check-config``."""
        try:
            done = subprocess.run(
                [str(self._binary), "check-config", "--config", str(self.config_path)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                cwd=self.config_path.parent,
            )
        except subprocess.TimeoutExpired:
            return {}
        settings, section = {}, ""
        for line in done.stdout.splitlines():
            if line.startswith("["):
                section = line.strip("[]")
            elif " = " in line:
                key, _, value = line.partition(" = ")
                settings[f"{section}.{key}"] = value.strip('"')
        return settings

    def stop(self) -> None:
        self._procs.stop(self.process, grace=30.0)


# ---------------------------------------------------------------------------- smtp-source runs


@dataclass
class Run:
    label: str
    messages: int
    wall: float  # smtp-source start -> the sink holds every message
    accept: float  # smtp-source start -> smtp-source exited (every 250 received)
    gateway_cpu: float = 0.0
    gateway_main_cpu: float = 0.0
    sink_cpu: float = 0.0
    client_cpu: float = 0.0
    foreign_cpu: float = 0.0  # CPU s used by processes outside the measured set
    steal_pct: float = 0.0
    peak_rss: int = 0
    peak_pss: int = 0
    load: str = ""
    quiet: bool = True

    @property
    def rate(self) -> float:
        return self.messages / self.wall

    @property
    def accept_rate(self) -> float:
        return self.messages / self.accept

    @property
    def ms_per_message(self) -> float:
        return 1000.0 * self.gateway_cpu / self.messages

    def disturbed(self) -> bool:
        machine = self.wall * NCPU
        return self.foreign_cpu > FOREIGN_PCT / 100 * machine or self.steal_pct > STEAL_PCT


@dataclass(frozen=True)
class Load:
    message: Path
    sessions: int
    run_timeout: float
    stall_timeout: float
    quiet_pct: float
    quiet_wait: float
    attempts: int


class Source:
    """One smtp-source run, with the peer's options; its output goes to a temporary file
    (a pipe that nobody reads while it runs could fill up and stall it)."""

    def __init__(self, procs: Processes, load: Load, port: int, count: int, sessions: int) -> None:
        argv = ["smtp-source", "-s", str(sessions), "-m", str(count), "-F", str(load.message)]
        argv += ["-f", SENDER, "-t", RECIPIENT, "-M", HELO, f"127.0.0.1:{port}"]
        self._procs = procs
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop(), in a finally)
        self.process = procs.start(argv, stdout=self._out)

    def done(self) -> bool:
        return self.process.poll() is not None

    def check(self, label: str) -> None:
        """Raise if it has exited with an error."""
        if self.done() and self.process.returncode != 0:
            self._out.seek(0)
            said = self._out.read()[-500:].decode(errors="replace").strip()
            raise BenchError(f"{label}: smtp-source exit {self.process.returncode}: {said}")

    def finish(self, label: str, timeout: float) -> None:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{label}: smtp-source still running after {timeout:.0f}s") from None
        self.check(label)

    def stop(self) -> None:
        self._procs.stop(self.process, grace=2.0)
        self._out.close()


def send_load(
    procs: Processes,
    load: Load,
    label: str,
    port: int,
    count: int,
    sink: Sink,
    gateway: Gateway | None,
    record: bool,
) -> Run:
    """One smtp-source run of `count` messages to 127.0.0.1:`port`, timed until `sink`
    has counted all of them (run.sh's `run_once`)."""
    quiet = wait_quiet(load.quiet_pct, load.quiet_wait) if record else True
    base = sink.count()
    target = base + count
    peak_rss = peak_pss = 0
    stats0 = all_stats()
    cpu0, gw0 = machine_cpu(), gateway.cpu(stats0) if gateway else 0.0
    gw_main0 = gateway.main_cpu(stats0) if gateway else 0.0
    sink0, self0 = sink.cpu(), resource.getrusage(resource.RUSAGE_SELF)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    source = Source(procs, load, port, count, load.sessions)
    source_done: float | None = None
    last, last_move, next_rss, next_pss = base, t0, t0, t0
    try:
        while True:
            now = time.monotonic()
            if source_done is None and source.done():
                source_done = now
                source.check(label)
            n = sink.count()
            if n >= target:
                t1 = now
                break
            if n != last:
                last, last_move = n, now
            if gateway is not None and not gateway.alive():
                raise BenchError(f"{label}: the gateway exited; see {gateway.log_path}")
            sink.check()
            if now - t0 > load.run_timeout:
                raise BenchError(f"{label}: run timeout, sink got {n - base}/{count}")
            if now - last_move > load.stall_timeout:
                raise BenchError(
                    f"{label}: no progress for {load.stall_timeout:.0f}s, sink got "
                    f"{n - base}/{count}"
                )
            if gateway is not None and now >= next_rss:
                peak_rss = max(peak_rss, rss_bytes(gateway.pids()))
                next_rss = now + RSS_POLL
            if gateway is not None and now >= next_pss:
                peak_pss = max(peak_pss, pss_bytes(gateway.pids()))
                next_pss = now + PSS_POLL
            time.sleep(SINK_POLL)
        stats1 = all_stats()
        cpu1 = machine_cpu()
        gw1 = gateway.cpu(stats1) if gateway else 0.0
        gw_main1 = gateway.main_cpu(stats1) if gateway else 0.0
        sink1, self1 = sink.cpu(), resource.getrusage(resource.RUSAGE_SELF)
        source.finish(label, timeout=load.run_timeout)
    finally:
        source.stop()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    harness = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    # Interrupt time is charged to no process (run.sh leaves it out of "foreign" too).
    charged = (cpu1.processes - cpu0.processes) / HZ
    total = max(1, cpu1.total - cpu0.total)
    if gateway is not None:  # a last sample: the tree holds all the messages' state now
        peak_rss = max(peak_rss, rss_bytes(gateway.pids()))
        peak_pss = max(peak_pss, pss_bytes(gateway.pids()))
    measured = (gw1 - gw0) + (sink1 - sink0) + client + harness
    return Run(
        label=label,
        messages=count,
        wall=t1 - t0,
        accept=min(t1, source_done or t1) - t0,
        gateway_cpu=gw1 - gw0,
        gateway_main_cpu=gw_main1 - gw_main0,
        sink_cpu=sink1 - sink0,
        client_cpu=client,
        foreign_cpu=max(0.0, charged - measured),
        steal_pct=100.0 * (cpu1.steal - cpu0.steal) / total,
        peak_rss=peak_rss,
        peak_pss=peak_pss,
        load=load_average(),
        quiet=quiet,
    )


def measure(
    procs: Processes,
    load: Load,
    label: str,
    port: int,
    count: int,
    sink: Sink,
    gateway: Gateway | None,
) -> Run:
    """A measured run, repeated (`load.attempts` in all) while other work disturbed it."""
    for attempt in range(1, load.attempts + 1):
        run = send_load(procs, load, label, port, count, sink, gateway, record=True)
        log(
            f"{label}: {run.rate:.1f} msgs/s (foreign CPU {run.foreign_cpu:.2f}s, "
            f"steal {run.steal_pct:.1f}%, load {run.load})"
        )
        if not run.disturbed():
            return run
        if attempt < load.attempts:
            log(f"{label}: disturbed by other work, repeating")
    log(f"{label}: disturbed in each of {load.attempts} attempt(s), keeping the last")
    run.quiet = False
    return run


# ---------------------------------------------------------------------------- latency


@dataclass
class Latency:
    offered_rate: float
    sent: int
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    achieved_rate: float = 0.0
    max_lag: float = 0.0  # how late the client started a message against its schedule
    wall: float = 0.0
    gateway_cpu: float = 0.0
    client_cpu: float = 0.0  # this script's own process: the aiosmtplib client
    foreign_cpu: float = 0.0
    load: str = ""

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]  # nearest rank


async def offer(port: int, message: bytes, rate: float, count: int, limit: float) -> Latency:
    """Open loop: start one connection every 1/rate s whatever the gateway's pace, each
    sending one message; time MAIL FROM -> the 250 after the end of DATA."""
    result = Latency(offered_rate=rate, sent=count)
    loop = asyncio.get_running_loop()

    async def one() -> None:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=port,
            local_hostname=HELO,
            start_tls=False,  # as smtp-source: plain relay from an allow-listed network
            timeout=limit,
        )
        try:
            await client.connect()
            await client.ehlo()
            start = time.perf_counter()
            await client.mail(SENDER)
            await client.rcpt(RECIPIENT)
            await client.data(message)
            result.latencies.append(time.perf_counter() - start)
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.quit()
        except aiosmtplib.SMTPResponseException as exc:
            result.errors[f"{exc.code}"] += 1
        except (aiosmtplib.SMTPException, OSError) as exc:
            result.errors[type(exc).__name__] += 1
        finally:
            client.close()

    tasks: set[asyncio.Task[None]] = set()
    start = loop.time()
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            result.max_lag = max(result.max_lag, -delay)
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    result.achieved_rate = count / max(1e-9, loop.time() - start) if count > 1 else rate
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=limit)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
            result.errors["unfinished"] += len(pending)
    return result


def measure_latency(opts: Options, sink: Sink, gateway: Gateway) -> Latency:
    """The offered load, with what else the machine did meanwhile (for judging p99)."""
    wait_quiet(opts.load.quiet_pct, opts.load.quiet_wait)
    log(f"latency: {opts.latency_messages} messages at {opts.latency_rate:.0f}/s")
    before = sink.count()
    cpu0, gw0, sink0 = machine_cpu(), gateway.cpu(), sink.cpu()
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    message = wire_bytes(opts.load.message)
    result = asyncio.run(
        offer(gateway.port, message, opts.latency_rate, opts.latency_messages, limit=60.0)
    )
    result.wall = time.monotonic() - start
    cpu1, gw1, sink1 = machine_cpu(), gateway.cpu(), sink.cpu()
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    result.gateway_cpu = gw1 - gw0
    result.client_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    charged = (cpu1.processes - cpu0.processes) / HZ
    measured = result.gateway_cpu + result.client_cpu + (sink1 - sink0)
    result.foreign_cpu = max(0.0, charged - measured)
    result.load = load_average()
    wait_sink(sink, before + len(result.latencies), timeout=120)
    return result


def wire_bytes(message: Path) -> bytes:
    """The message as smtp-source sends it: CRLF line ends."""
    return message.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def wait_sink(sink: Sink, target: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while sink.count() < target:
        sink.check()
        if time.monotonic() > end:
            raise BenchError(f"the sink holds {sink.count()}, expected {target}, after {timeout}s")
        time.sleep(SINK_POLL)


# ---------------------------------------------------------------------------- RSS with a queue


@dataclass
class QueueRss:
    messages: int
    accepted_in: float
    queued: int | None
    peak_rss: int
    peak_pss: int
    restart_rss: int
    restart_pss: int


def sample_peak(gateway: Gateway, seconds: float, until: Callable[[], bool]) -> tuple[int, int]:
    """Peak RSS and PSS of the gateway tree until `until()` or `seconds` have passed."""
    peak_rss = peak_pss = 0
    end = time.monotonic() + seconds
    next_pss = 0.0
    while time.monotonic() < end and not until():
        if not gateway.alive():
            raise BenchError(f"the gateway exited; see {gateway.log_path}")
        peak_rss = max(peak_rss, rss_bytes(gateway.pids()))
        if time.monotonic() >= next_pss:
            peak_pss = max(peak_pss, pss_bytes(gateway.pids()))
            next_pss = time.monotonic() + PSS_POLL
        time.sleep(RSS_POLL)
    return peak_rss, peak_pss


def queue_rss(
    procs: Processes, load: Load, binary: Path, base: GatewayConfig, count: int
) -> QueueRss:
    """`count` messages into a gateway whose smarthost refuses connections (nothing
    listens on its port): every message stays queued. Then a restart on that queue."""
    config = GatewayConfig(
        workdir=base.workdir,
        port=free_port(),
        smarthost_port=free_port(),  # left closed: the sink is down
        keys=base.keys,
        spool=base.workdir / "spool-queued",
        workers=base.workers,
        concurrency=base.concurrency,
        log_level=base.log_level,
    )
    gateway = Gateway(procs, binary, config, "gateway-queued")
    try:
        log(f"RSS: {count} messages into a gateway whose smarthost is down")
        start = time.monotonic()
        source = Source(procs, load, config.port, count, load.sessions)
        try:
            timeout = max(load.run_timeout, count / 20.0)
            peak_rss, peak_pss = sample_peak(gateway, timeout, source.done)
            source.finish("RSS", timeout=1.0)
        finally:
            source.stop()
        accepted_in = time.monotonic() - start
        # A few seconds more: the scheduler's first attempts of the last messages.
        more = sample_peak(gateway, 3.0, lambda: False)
        peak_rss, peak_pss = max(peak_rss, more[0]), max(peak_pss, more[1])
        queued = gateway.queue_depth()
        log(f"RSS: {queued} messages in the queue; restarting the gateway on it")
        gateway.stop()
        gateway = Gateway(procs, binary, config, "gateway-queued")
        restart_rss, restart_pss = sample_peak(gateway, 10.0, lambda: False)
    finally:
        gateway.stop()
    return QueueRss(count, accepted_in, queued, peak_rss, peak_pss, restart_rss, restart_pss)


# ---------------------------------------------------------------------------- the peer


@dataclass(frozen=True)
class PeerRound:
    a: float  # smtp-source -> smtp-sink
    b: float  # Postfix, no milter
    c: float  # Postfix + OpenDKIM
    c_pf_ms: float
    c_odk_ms: float


def run_peer(procs: Processes, load: Load, count: int, warmup: int, netns: bool) -> PeerRound:
    """One run.sh invocation with RUNS=1; its log goes to our stderr, its summary is printed."""
    run_sh = PEER_DIR / "run.sh"
    env = dict(
        os.environ,
        RUNS="1",
        WARMUP=str(warmup),
        MSGS=str(count),
        SESS=str(load.sessions),
        NETNS="1" if netns else "0",
    )
    stale = _postfix_queue()
    if stale:
        # run.sh then dies waiting for an empty queue: mail left by an interrupted run.sh.
        raise BenchError(
            f"the Postfix queue is not empty ({stale}); if it is left from an "
            "interrupted run.sh, `postsuper -d ALL` empties it"
        )
    with contextlib.suppress(FileNotFoundError):
        PEER_RESULTS.unlink()
    with tempfile.TemporaryFile() as out:
        # run.sh stops Postfix and OpenDKIM in its EXIT trap: stop it with SIGTERM and a long
        # grace, never by killing its group first (Postfix's master is not in that group).
        process = procs.start(["bash", str(run_sh)], stdout=out, stderr=None, env=env)
        try:
            process.wait(timeout=3600)
        except subprocess.TimeoutExpired:
            raise BenchError("run.sh did not finish within an hour") from None
        finally:
            procs.stop(process, grace=120.0)
        out.seek(0)
        text = out.read().decode(errors="replace")
    summary = text[text.find("== Postfix") :] if "== Postfix" in text else text[-2000:]
    print(summary.rstrip(), flush=True)
    if process.returncode != 0:
        raise BenchError(f"run.sh exit {process.returncode}")
    if not PEER_RESULTS.is_file():
        raise BenchError(f"run.sh left no {PEER_RESULTS}")
    rows: dict[str, list[str]] = {}
    for line in PEER_RESULTS.read_text().splitlines()[1:]:
        cols = line.split("\t")
        rows[cols[0]] = cols
    try:
        return PeerRound(
            float(rows["a"][3]),
            float(rows["b"][3]),
            float(rows["c"][3]),
            float(rows["c"][15]),
            float(rows["c"][16]),
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise BenchError(f"{PEER_RESULTS}: no figures for configs a, b and c ({exc})") from None


def _postfix_queue() -> str:
    """`postqueue -p`'s last line when the Postfix queue holds mail, else ""."""
    try:
        done = subprocess.run(
            ["postqueue", "-p"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = done.stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    return "" if not last or last.startswith("Mail queue is empty") else last.strip("- ")


# ---------------------------------------------------------------------------- printing


def mb(n: int) -> str:
    return f"{n / MB:.0f} MB"


def print_runs(runs: Sequence[Run]) -> None:
    head = (
        "run",
        "msgs/s",
        "accept/s",
        "gw ms/m",
        "main ms/m",
        "peak RSS",
        "peak PSS",
        "foreign s",
        "load",
    )
    print("{:<34} {:>8} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9}  {}".format(*head))
    for r in runs:
        gw = r.gateway_cpu > 0
        print(
            f"{r.label:<34} {r.rate:>8.1f} {r.accept_rate:>9.1f} "
            f"{f'{r.ms_per_message:.2f}' if gw else '-':>8} "
            f"{f'{1000 * r.gateway_main_cpu / r.messages:.2f}' if gw else '-':>9} "
            f"{mb(r.peak_rss) if gw else '-':>9} {mb(r.peak_pss) if gw else '-':>9} "
            f"{r.foreign_cpu:>9.2f}  {r.load}{'' if r.quiet else ' (noisy)'}"
        )


def print_latency(lat: Latency, target_ms: float) -> None:
    done = len(lat.latencies)
    print(
        f"== latency, aiosmtplib offering {lat.offered_rate:.0f} msgs/s "
        f"(achieved {lat.achieved_rate:.1f}/s, client at most {1000 * lat.max_lag:.0f} ms "
        f"late), {lat.sent} messages, MAIL -> 250 after DATA:"
    )
    if done:
        p50, p99 = lat.percentile(50), lat.percentile(99)
        verdict = "meets" if p99 * 1000 < target_ms and not lat.errors else "MISSES"
        print(
            f"   p50 {1000 * p50:.1f} ms   p99 {1000 * p99:.1f} ms   max "
            f"{1000 * max(lat.latencies):.1f} ms   ({done} answered; {verdict} the target "
            f"p99 < {target_ms:.0f} ms)"
        )
    if lat.errors:
        print(f"   errors: {dict(lat.errors)}")
    wall = max(lat.wall, 1e-9)
    print(
        f"   meanwhile, in % of one CPU ({NCPU} in all): gateway "
        f"{100 * lat.gateway_cpu / wall:.0f}%, client {100 * lat.client_cpu / wall:.0f}%, "
        f"other processes {100 * lat.foreign_cpu / wall:.0f}%; load {lat.load}"
    )


def print_queue_rss(q: QueueRss, target_mb: float) -> None:
    verdict = "meets" if max(q.peak_rss, q.restart_rss) < target_mb * MB else "MISSES"
    print(
        f"== RSS with the sink down: {q.messages} messages accepted in {q.accepted_in:.0f}s "
        f"({q.messages / q.accepted_in:.0f}/s), queue holds {q.queued}"
    )
    print(
        f"   gateway tree peak RSS {mb(q.peak_rss)} (PSS {mb(q.peak_pss)}) while queueing; "
        f"{mb(q.restart_rss)} (PSS {mb(q.restart_pss)}) after a restart on that queue "
        f"({verdict} the target < {target_mb:.0f} MB)"
    )


# ---------------------------------------------------------------------------- modes


def check_sealing(procs: Processes, opts: Options, workdir: Path, count: int = 3) -> str:
    """A few messages through the gateway into a dumping sink: each must leave with both
    DKIM signatures and a .p7s beside its PDF, or the benchmark would time a gateway that
    does not seal."""
    # Its own directory: smtp-sink writes as nobody, who cannot enter our 0700 workdir.
    with tempfile.TemporaryDirectory(prefix="sealpost-gwbench-dump-") as name:
        return _check_sealing(procs, opts, workdir, Path(name), count)


def _check_sealing(procs: Processes, opts: Options, workdir: Path, dump: Path, count: int) -> str:
    sink = Sink(procs, workdir, free_port(), lifetime=600, dump=dump)
    config = replace(
        base_config(opts, workdir, sink.port), spool=workdir / "spool-check", log_level="info"
    )
    try:
        gateway = Gateway(procs, opts.binary, config, "gateway-check")
    except BaseException:
        sink.stop()
        raise
    try:
        source = Source(procs, opts.load, gateway.port, count, sessions=1)
        try:
            source.finish("sealing check", timeout=60)
        finally:
            source.stop()
        wait_sink(sink, count, timeout=60)
    finally:
        gateway.stop()
        sink.stop()
    sealed = 0
    for path in sorted(dump.iterdir()):
        data = path.read_bytes()
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        signatures = sum(1 for line in head.splitlines() if line.startswith(b"DKIM-Signature:"))
        algorithms = b"a=rsa-sha256" in head and b"a=ed25519-sha256" in head
        if signatures >= 2 and algorithms and b".pdf.p7s" in data:
            sealed += 1
    if sealed < count:
        raise BenchError(f"sealing check: {sealed} of {count} relayed messages sealed ({dump})")
    return (
        f"== sealing check: {sealed}/{count} relayed messages carry DKIM rsa-sha256 + "
        f"ed25519-sha256 and a .p7s beside the PDF"
    )


@dataclass(frozen=True)
class Options:
    load: Load
    binary: Path
    messages: int
    warmup: int
    workers: int | None
    concurrency: int | None
    log_level: str
    lanes: int | None
    latency_rate: float
    latency_messages: int
    rss_messages: int
    netns: bool


def base_config(opts: Options, workdir: Path, sink_port: int) -> GatewayConfig:
    return GatewayConfig(
        workdir=workdir,
        port=free_port(),
        smarthost_port=sink_port,
        keys=workdir / "keys" / "store",
        spool=workdir / "spool",
        workers=opts.workers,
        concurrency=opts.concurrency,
        log_level=opts.log_level,
        lanes=opts.lanes,
    )


def header(opts: Options) -> None:
    raw, wire = opts.load.message.read_bytes(), wire_bytes(opts.load.message)
    print(
        f"== Sealpost gateway benchmark, {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, "
        f"{NCPU} CPUs, load {load_average()}"
    )
    print(
        f"== workload: {opts.load.message.name} {len(raw)} bytes ({len(wire)} "
        f"on the wire), {opts.messages} msgs, {opts.load.sessions} sessions, 1 msg per "
        f"connection, 1 rcpt, {opts.warmup} warm-up",
        flush=True,
    )


def describe(gateway: Gateway) -> str:
    """The gateway's commit and the effective settings that shape its figures."""
    commit = _git("rev-parse", "--short", "HEAD").strip() or "?"
    if _git("status", "--porcelain", "--", "gateway", "keys").strip():
        commit += " with uncommitted changes in gateway/ or keys/"
    settings = gateway.effective_settings()
    keys = (
        "gateway.lanes",
        "sealing.workers",
        "delivery.concurrency_per_destination",
        "gateway.log_level",
    )
    shown = ", ".join(f"{k}={settings.get(k, '?')}" for k in keys)
    return f"== gateway: commit {commit}; {shown}"


def _git(*args: str) -> str:
    """A read-only git query on this repository ("" if git cannot answer)."""
    # No optional locks: `git status` must not even refresh the index of a tree others use.
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def throughput_pair(
    procs: Processes, opts: Options, sink: Sink, gateway: Gateway, tag: str = ""
) -> tuple[Run, Run]:
    """The ceiling (straight to the sink) and Sealpost, each after its warm-up."""
    load = opts.load
    if opts.warmup:
        send_load(procs, load, "warm-up", sink.port, opts.warmup, sink, None, record=False)
    ceiling = measure(
        procs, load, f"{tag}smtp-source -> smtp-sink", sink.port, opts.messages, sink, None
    )
    if opts.warmup:
        send_load(procs, load, "warm-up", gateway.port, opts.warmup, sink, gateway, record=False)
    sealpost = measure(
        procs, load, f"{tag}-> Sealpost -> smtp-sink", gateway.port, opts.messages, sink, gateway
    )
    return ceiling, sealpost


def run_main(
    procs: Processes, opts: Options, workdir: Path, skip_latency: bool, skip_rss: bool
) -> None:
    header(opts)
    log("checking that the gateway seals what it relays (its first start makes a key store)")
    print(check_sealing(procs, opts, workdir), flush=True)
    sink = Sink(procs, workdir, free_port(), lifetime=7200)
    config = base_config(opts, workdir, sink.port)
    gateway = Gateway(procs, opts.binary, config, "gateway")
    print(describe(gateway), flush=True)
    ceiling, sealpost = throughput_pair(procs, opts, sink, gateway)
    latency = None
    if not skip_latency:
        latency = measure_latency(opts, sink, gateway)
    gateway.stop()
    sink.stop()
    queued = None
    if not skip_rss:
        wait_quiet(opts.load.quiet_pct, opts.load.quiet_wait)
        queued = queue_rss(procs, opts.load, opts.binary, config, opts.rss_messages)
    print()
    print_runs([ceiling, sealpost])
    print(
        f"== Sealpost / ceiling: {sealpost.rate / ceiling.rate:.2f}; gateway CPU "
        f"{sealpost.ms_per_message:.2f} ms per message (whole tree; 'main' is the SMTP process)"
    )
    if latency is not None:
        print_latency(latency, 100.0)
    if queued is not None:
        print_queue_rss(queued, 250.0)
    print(
        "== msgs/s: end to end (smtp-source start -> the sink has all); accept/s: until "
        "smtp-source\n   finished; foreign s: CPU used meanwhile by processes outside the "
        "measured set (noise)"
    )


def run_rss_only(procs: Processes, opts: Options, workdir: Path) -> None:
    print(f"== Sealpost gateway RSS with a full queue, {NCPU} CPUs, load {load_average()}")
    config = base_config(opts, workdir, sink_port=0)
    queued = queue_rss(procs, opts.load, opts.binary, config, opts.rss_messages)
    print_queue_rss(queued, 250.0)


def run_log_ab(procs: Processes, opts: Options, workdir: Path, rounds: int) -> None:
    """The statement log's cost: the same load through a gateway with the log and one
    without, alternating in each round (which goes first alternates too)."""
    header(opts)
    print(f"== statement log on / off, {rounds} rounds, alternating", flush=True)
    print(check_sealing(procs, opts, workdir), flush=True)
    sink = Sink(procs, workdir, free_port(), lifetime=4 * 3600)
    gateways = {}
    for on in (True, False):
        config = replace(
            base_config(opts, workdir, sink.port),
            spool=workdir / f"spool-{'on' if on else 'off'}",
            statement_log=on,
        )
        gateways[on] = Gateway(procs, opts.binary, config, f"gateway-log-{'on' if on else 'off'}")
    runs: dict[bool, list[Run]] = {True: [], False: []}
    try:
        for r in range(1, rounds + 1):
            for on in (True, False) if r % 2 else (False, True):
                tag = f"r{r} log {'on' if on else 'off'} "
                _, run = throughput_pair(procs, opts, sink, gateways[on], tag=tag)
                runs[on].append(run)
            on_run, off_run = runs[True][-1], runs[False][-1]
            print(
                f"round {r}: log on {on_run.rate:.1f} msgs/s ({on_run.ms_per_message:.2f} ms "
                f"CPU/msg) | log off {off_run.rate:.1f} msgs/s ({off_run.ms_per_message:.2f} ms "
                f"CPU/msg) | on/off {on_run.rate / off_run.rate:.3f}",
                flush=True,
            )
    finally:
        for gateway in gateways.values():
            gateway.stop()
        sink.stop()
    ratios = [a.rate / b.rate for a, b in zip(runs[True], runs[False], strict=True)]
    on_rate = statistics.median(r.rate for r in runs[True])
    off_rate = statistics.median(r.rate for r in runs[False])
    print(
        f"\n== medians: log on {on_rate:.1f}, log off {off_rate:.1f} msgs/s; on/off "
        f"{on_rate / off_rate:.3f} (medians); per round {' '.join(f'{x:.3f}' for x in ratios)}, "
        f"median {statistics.median(ratios):.3f}; CPU/msg on "
        f"{statistics.median(r.ms_per_message for r in runs[True]):.2f} ms, off "
        f"{statistics.median(r.ms_per_message for r in runs[False]):.2f} ms"
    )


def run_compare(procs: Processes, opts: Options, workdir: Path, rounds: int) -> None:
    if os.geteuid() != 0:
        raise BenchError("--compare runs run.sh, which needs root")
    header(opts)
    print(
        f"== interleaved with {PEER_DIR / 'run.sh'} (RUNS=1 per round, NETNS="
        f"{int(opts.netns)}), {rounds} rounds",
        flush=True,
    )
    print(check_sealing(procs, opts, workdir), flush=True)
    sink = Sink(procs, workdir, free_port(), lifetime=4 * 3600)
    gateway = Gateway(procs, opts.binary, base_config(opts, workdir, sink.port), "gateway")
    print(describe(gateway), flush=True)
    peers: list[PeerRound] = []
    ours: list[tuple[Run, Run]] = []
    try:
        for r in range(1, rounds + 1):
            log(f"round {r}/{rounds}: Postfix + OpenDKIM (run.sh)")
            peers.append(run_peer(procs, opts.load, opts.messages, opts.warmup, opts.netns))
            log(f"round {r}/{rounds}: Sealpost")
            ours.append(throughput_pair(procs, opts, sink, gateway, tag=f"r{r} "))
            p, (ceil, sp) = peers[-1], ours[-1]
            print(
                f"round {r}: peer a {p.a:.0f}  b {p.b:.0f}  c {p.c:.1f} msgs/s | ours ceiling "
                f"{ceil.rate:.0f}  Sealpost {sp.rate:.1f} msgs/s ({sp.ms_per_message:.2f} ms "
                f"CPU/msg) | ratio {sp.rate / p.c:.2f}  load {sp.load}",
                flush=True,
            )
    finally:
        gateway.stop()
        sink.stop()
    print()
    print_runs([run for pair in ours for run in pair])

    def med(values: Sequence[float]) -> float:
        return statistics.median(values)

    c_rate, sp_rate = med([p.c for p in peers]), med([s.rate for _, s in ours])
    print(f"\n== medians over {rounds} rounds (msgs/s, end to end):")
    print(f"   (a) smtp-source -> smtp-sink, run.sh        {med([p.a for p in peers]):8.1f}")
    print(f"   (a') smtp-source -> smtp-sink, this script  {med([s.rate for s, _ in ours]):8.1f}")
    print(f"   (b) Postfix, no DKIM                        {med([p.b for p in peers]):8.1f}")
    print(
        f"   (c) Postfix + OpenDKIM                      {c_rate:8.1f}   "
        f"(Postfix {med([p.c_pf_ms for p in peers]):.2f} + OpenDKIM "
        f"{med([p.c_odk_ms for p in peers]):.2f} ms CPU/msg)"
    )
    print(
        f"   Sealpost (DKIM RSA+Ed25519, CMS, fsync)     {sp_rate:8.1f}   "
        f"({med([s.ms_per_message for _, s in ours]):.2f} ms CPU/msg, peak RSS "
        f"{mb(max(s.peak_rss for _, s in ours))})"
    )
    ratios = [s.rate / p.c for p, (_, s) in zip(peers, ours, strict=True)]
    print(
        f"== ratio Sealpost / (Postfix+OpenDKIM): {sp_rate / c_rate:.2f} (medians); per round "
        f"{' '.join(f'{x:.2f}' for x in ratios)}, median {med(ratios):.2f}; target >= 2.0"
    )


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--message", type=Path, default=PEER_DIR / "message.eml")
    p.add_argument("--gateway", type=Path, default=GATEWAY_BIN, help="sealpost-gateway to run")
    p.add_argument("--messages", type=int, default=3000, help="messages per measured run")
    p.add_argument("--sessions", type=int, default=20, help="smtp-source -s")
    p.add_argument("--warmup", type=int, default=300, help="unmeasured messages before a run")
    p.add_argument(
        "--workers", type=int, default=None, help="sealing.workers (default: the gateway's)"
    )
    p.add_argument(
        "--delivery-concurrency",
        type=int,
        default=None,
        help="delivery.concurrency_per_destination (default: the gateway's)",
    )
    p.add_argument("--log-level", default="info", help="gateway.log_level (its log is a file)")
    p.add_argument("--lanes", type=int, default=None, help="gateway.lanes (default: its own)")
    p.add_argument("--latency-rate", type=float, default=100.0, help="messages/s offered")
    p.add_argument("--latency-messages", type=int, default=1500)
    p.add_argument("--rss-messages", type=int, default=10_000, help="queued with the sink down")
    p.add_argument(
        "--log-ab",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="the statement log's cost: log on and off, alternating, in each round",
    )
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--rss-only", action="store_true", help="only the queued-RSS measurement")
    p.add_argument(
        "--compare",
        type=int,
        metavar="ROUNDS",
        default=0,
        help="interleave with the Postfix+OpenDKIM peer's run.sh (root)",
    )
    p.add_argument(
        "--netns",
        type=int,
        choices=(0, 1),
        default=1,
        help="run.sh NETNS (1: the peer in a private network namespace)",
    )
    p.add_argument(
        "--quiet-pct",
        type=float,
        default=10.0,
        help="before a measured run, wait until the machine is below this busy %%",
    )
    p.add_argument("--quiet-wait", type=float, default=180.0, help="... for at most this long")
    p.add_argument("--attempts", type=int, default=3, help="tries of a disturbed run")
    p.add_argument("--run-timeout", type=float, default=600.0)
    p.add_argument("--stall-timeout", type=float, default=60.0)
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temporary directory")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = p.parse_args(argv)
    for name in ("messages", "sessions", "latency_messages", "rss_messages", "attempts"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be 1 or more")
    if args.latency_rate <= 0:
        p.error("--latency-rate must be more than 0")
    return args


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    # Once only: the cleanup that follows must not be cut short by a second Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def scratch(parent: Path | None, keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sealpost-gwbench-", dir=parent))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("smtp-source", "smtp-sink"):
        if shutil.which(tool) is None:
            print(
                f"{tool} not found: install Debian's postfix package (see bench/README.md)",
                file=sys.stderr,
            )
            return 2
    if not args.gateway.exists():
        print(f"{args.gateway}: no such gateway executable", file=sys.stderr)
        return 2
    opts = Options(
        load=Load(
            args.message.resolve(),
            args.sessions,
            args.run_timeout,
            args.stall_timeout,
            args.quiet_pct,
            args.quiet_wait,
            args.attempts,
        ),
        binary=args.gateway,
        messages=args.messages,
        warmup=args.warmup,
        workers=args.workers,
        concurrency=args.delivery_concurrency,
        log_level=args.log_level,
        lanes=args.lanes,
        latency_rate=args.latency_rate,
        latency_messages=args.latency_messages,
        rss_messages=args.rss_messages,
        netns=bool(args.netns),
    )
    # Set explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    procs = Processes()
    with scratch(args.workdir, args.keep) as workdir:
        try:
            if args.compare:
                run_compare(procs, opts, workdir, args.compare)
            elif args.log_ab:
                run_log_ab(procs, opts, workdir, args.log_ab)
            elif args.rss_only:
                run_rss_only(procs, opts, workdir)
            else:
                run_main(procs, opts, workdir, args.skip_latency, args.skip_rss)
        except BenchError as error:
            where = f"logs in {workdir}" if args.keep else "--keep keeps the logs"
            log(f"FAILED: {error} ({where})")
            return 1
        except (KeyboardInterrupt, Interrupted):
            log("interrupted: stopping everything started")
            return 130
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
