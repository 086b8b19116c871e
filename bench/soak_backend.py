"""Soak of hark-backend under load and faults: two replicas, one PostgreSQL, open-loop minting.

Two ``hark-backend serve`` processes share one throwaway PostgreSQL (started here with
initdb/pg_ctl, as the ``postgres`` user when run as root, on a private unix socket) in front
of ``hark_sim`` (its own process, answering at once).  ``DEVICES`` device tokens are
registered through the backend's own ``Registry``; then the client offers ``rate_hz`` key
requests per second (open loop: request *i* is due at ``start + i / rate_hz`` whatever the
server does, and latency is measured from that due time, so a stall is not hidden by
coordinated omission), round-robin over the devices and alternating the two replicas.  A
request whose connection fails (the replica is down) is sent once to the other replica, as a
load balancer would; its latency includes the failed attempt.

Faults, compressed into a short run: one replica is SIGKILLed at a quarter of the run and
restarted a few seconds later on the same port; PostgreSQL is stopped (``pg_ctl stop -m
fast``) at 60 % of the run and started again a few seconds later.

It checks, and ``run`` returns False unless all hold:

- no 500 (nor any 5xx but 503), and every 503 carries ``Retry-After`` and the error envelope;
- no registration lost: after the run every device token still mints (200), also right
  after a second restart of PostgreSQL (`-m immediate`, with no request in flight: every
  connection the replicas hold predates it, and none of those first requests may fail);
- rate limits held across replicas: one device sending ``2 * limit + 5`` requests at once,
  alternating replicas, gets exactly ``limit`` keys, before the faults and again after them;
- no request left unanswered once the other replica had a go, and no log line of an
  unhandled exception in either replica.

It prints statuses by code and p50/p99 latency of the 200s per minute (per 10 s in a short
run).  ``python -m bench.soak_backend --duration-s 600`` is the long run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

SIM_KEY = "sk-sim-soak"
MINT = "/v1/realtime/client_secrets"
RATE_LIMIT = (30, 60.0)  # per device: the open loop stays well under it (see run())
REQUEST_TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 2000  # past this the client skips (and counts) requests: the server is stuck
BURST = 2 * RATE_LIMIT[0] + 5  # requests at once from one device, to check the limit
RECOVERY_GRACE_S = 1.0  # a 503 answered later than this after PostgreSQL is back is a defect


# -- processes ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bindir() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("initdb")
    if found is None:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found")
    return Path(found).parent


class Postgres:
    """A throwaway PostgreSQL on a unix socket in ``root`` that can be stopped and restarted."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.bindir = _pg_bindir()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
            self.prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                           "--clear-groups"]  # fmt: skip
        self.env = {**os.environ, "LC_ALL": "C"}

    def url(self, dbname: str) -> str:
        return f"postgresql:///{dbname}?host={self.root}&user=postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
            check=True, capture_output=True, env=self.env,
        )  # fmt: skip

    def init(self) -> None:
        subprocess.run(
            [*self.prefix, str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
             "-A", "trust", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, env=self.env,
        )  # fmt: skip

    def start(self) -> None:
        options = f"-k {self.root} -c listen_addresses='' -p 5432 -F -c max_connections=100"
        self._ctl("-o", options, "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "-t", "60", "stop")


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Replica:
    """One ``hark-backend serve`` process on a fixed port (so a restart takes the same one)."""

    name: str
    port: int
    db_url: str
    sim_url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OPENAI_API_KEY": SIM_KEY}
        with self.log_path.open("a") as log_file:
            log_file.write(f"--- start {self.starts + 1} ---\n")
            log_file.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hark_backend", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port), "--db", self.db_url, "--openai-base-url", self.sim_url,
                 "--rate-limit", f"{RATE_LIMIT[0]}/{RATE_LIMIT[1]:g}", "--log-level", "info"],
                stdout=log_file, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        self.starts += 1

    def wait_up(self) -> None:
        assert self.proc is not None
        _wait_http(f"{self.url}/healthz", self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One key request as the client saw it."""

    due_s: float  # offset of its scheduled send time from the start of the run
    status: int  # 0: no answer from either replica
    latency_ms: float
    failover: bool
    bad_5xx: str = ""  # why a 5xx answer breaks the contract ("" if it does not)
    code: str = ""  # the envelope's error code, if any


@dataclass
class Soak:
    """Everything measured in one run."""

    outcomes: list[Outcome] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    skipped: int = 0
    db_up_s: float = float("inf")  # when PostgreSQL was back, from the start of the run
    quiet_restart_s: float = 0.0  # how long the restart with no traffic took
    max_in_flight: int = 0
    transport_errors: Counter[str] = field(default_factory=Counter)


def _check_error(response: httpx.Response) -> tuple[str, str]:
    """The envelope's code, and what is wrong with a 5xx answer ("" if it is a proper 503)."""
    code = ""
    try:
        error = response.json()["error"]
        code = str(error["code"])
        envelope_ok = all(key in error for key in ("message", "type", "code", "param"))
    except (ValueError, KeyError, TypeError):
        envelope_ok = False
    if response.status_code < 500:
        return code, ""
    if response.status_code != 503:
        return code, f"HTTP {response.status_code} {code or '(no envelope)'}"
    if not envelope_ok:
        return code, "503 without the error envelope"
    if "retry-after" not in response.headers:
        return code, f"503 {code} without Retry-After"
    return code, ""


async def _mint(
    clients: list[httpx.AsyncClient], first: int, token: str, soak: Soak
) -> tuple[httpx.Response | None, bool]:
    """POST to replica ``first``; on a connection failure once more to the other one."""
    headers = {"Authorization": f"Bearer {token}"}
    for attempt in range(2):
        client = clients[(first + attempt) % len(clients)]
        try:
            return await client.post(MINT, json={}, headers=headers), attempt > 0
        except httpx.TransportError as exc:
            soak.transport_errors[type(exc).__name__] += 1
    return None, True


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


async def _open_loop(
    clients: list[httpx.AsyncClient],
    tokens: list[str],
    rate_hz: float,
    duration_s: float,
    faults: Any,
    soak: Soak,
) -> None:
    """Offer ``rate_hz`` requests/s for ``duration_s``; run ``faults(t0)`` alongside."""
    t0 = time.perf_counter() + 0.2
    in_flight: set[asyncio.Task[None]] = set()

    async def one(i: int, due: float) -> None:
        response, failover = await _mint(clients, i % len(clients), tokens[i % len(tokens)], soak)
        latency_ms = (time.perf_counter() - due) * 1000
        if response is None:
            soak.outcomes.append(Outcome(due - t0, 0, latency_ms, failover))
            return
        code, bad = _check_error(response) if response.status_code != 200 else ("", "")
        soak.outcomes.append(
            Outcome(due - t0, response.status_code, latency_ms, failover, bad, code)
        )

    fault_task = asyncio.create_task(faults(t0))
    total = int(duration_s * rate_hz)
    for i in range(total):
        due = t0 + i / rate_hz
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= MAX_IN_FLIGHT:
            soak.skipped += 1
            continue
        task = asyncio.create_task(one(i, due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        soak.max_in_flight = max(soak.max_in_flight, len(in_flight))
    if in_flight:
        await asyncio.wait(in_flight)
    await fault_task


async def _burst(clients: list[httpx.AsyncClient], token: str, n: int) -> Counter[int]:
    """``n`` requests from one device at once, alternating replicas: statuses by code."""
    soak = Soak()
    answers = await asyncio.gather(*(_mint(clients, i, token, soak) for i in range(n)))
    return Counter(r.status_code if r is not None else 0 for r, _ in answers)


async def _every_token_mints(
    clients: list[httpx.AsyncClient], tokens: list[str]
) -> tuple[Counter[int], Counter[int]]:
    """Every token (20 at a time, alternating replicas), those not given a key retried up to
    3 times a second apart: statuses of the first pass, and the final ones."""
    soak = Soak()
    gate = asyncio.Semaphore(20)

    async def one(i: int, token: str) -> int:
        async with gate:
            response, _ = await _mint(clients, i, token, soak)
            return response.status_code if response is not None else 0

    statuses = await asyncio.gather(*(one(i, t) for i, t in enumerate(tokens)))
    first = Counter(statuses)
    for _ in range(3):
        again = [i for i, status in enumerate(statuses) if status != 200]
        if not again:
            break
        await asyncio.sleep(1.0)
        answers = await asyncio.gather(*(one(i, tokens[i]) for i in again))
        for i, status in zip(again, answers, strict=True):
            statuses[i] = status
    return first, Counter(statuses)


# -- the run -----------------------------------------------------------------------------------


def _report_buckets(soak: Soak, duration_s: float) -> None:
    bucket_s = 60.0 if duration_s >= 300 else 10.0
    buckets: dict[int, list[Outcome]] = {}
    for outcome in soak.outcomes:
        buckets.setdefault(int(outcome.due_s // bucket_s), []).append(outcome)
    events: dict[int, list[str]] = {}
    for at_s, what in soak.events:
        events.setdefault(int(at_s // bucket_s), []).append(f"{what} @{at_s:.0f}s")
    print(f"   per {bucket_s:.0f} s (statuses by code; latency of the 200s from their due time):")
    for index in range(math.ceil(duration_s / bucket_s)):
        rows = buckets.get(index, [])
        statuses = Counter(o.status for o in rows)
        shown = " ".join(f"{'none' if s == 0 else s}:{n}" for s, n in sorted(statuses.items()))
        ok_ms = [o.latency_ms for o in rows if o.status == 200]
        failovers = sum(o.failover for o in rows)
        note = ("   <- " + ", ".join(events[index])) if index in events else ""
        print(
            f"     {index * bucket_s:4.0f}-{(index + 1) * bucket_s:4.0f} s  {shown or '-':<26}"
            f" p50 {_percentile(ok_ms, 0.5):6.1f} ms  p99 {_percentile(ok_ms, 0.99):7.1f} ms"
            f"  failover {failovers}{note}"
        )


def _log_problems(replicas: list[Replica]) -> list[str]:
    """Lines in the replicas' logs that show a bug (an unhandled exception, a traceback)."""
    found = []
    for replica in replicas:
        if not replica.log_path.exists():
            continue
        for line in replica.log_path.read_text(errors="replace").splitlines():
            if re.search(r"unhandled|Traceback|status=500", line):
                found.append(f"{replica.name}: {line.strip()[:200]}")
    return found


def run(duration_s: float = 600.0, rate_hz: float = 40.0, devices: int = 200) -> bool:
    """Soak two replicas for ``duration_s`` with faults; print figures; True if it held."""
    from hark_backend.registry import Registry

    per_device_per_window = rate_hz / devices * RATE_LIMIT[1]
    if per_device_per_window > RATE_LIMIT[0] / 2:
        raise ValueError(
            f"{rate_hz:g} requests/s over {devices} devices is {per_device_per_window:.0f} per"
            f" device per {RATE_LIMIT[1]:g} s: keep it under half the limit ({RATE_LIMIT[0]})"
            " so the open loop never meets a 429; add devices"
        )
    import psycopg

    workdir = Path(tempfile.mkdtemp(prefix="hark-soak-backend-"))
    pg = Postgres(workdir)
    sim: subprocess.Popen[bytes] | None = None
    replicas: list[Replica] = []
    soak = Soak()
    kill_at_s, down_s = 0.25 * duration_s, (3.0 if duration_s < 300 else 5.0)
    db_at_s, db_down_s = 0.6 * duration_s, (2.0 if duration_s < 300 else 5.0)
    try:
        pg.init()
        pg.start()
        with psycopg.connect(pg.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE hark")
        db_url = pg.url("hark")
        registry = Registry(db_url)
        registry.init_schema()
        now_s = time.time()
        tokens = [registry.add(f"soak{i:04d}", group=None, now_s=now_s) for i in range(devices)]
        burst_tokens = [registry.add(f"burst{i}", group=None, now_s=now_s) for i in range(2)]

        sim_port = _free_port()
        sim = subprocess.Popen(
            [sys.executable, "-m", "hark_sim", "--port", str(sim_port), "--api-key", SIM_KEY,
             "--realtime-factor", "0", "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )  # fmt: skip
        _wait_http(f"http://127.0.0.1:{sim_port}/", sim)
        sim_url = f"http://127.0.0.1:{sim_port}/v1"
        replicas = [
            Replica(name, _free_port(), db_url, sim_url, workdir / f"replica-{name}.log")
            for name in ("A", "B")
        ]
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_up()
        print(
            f"   2 hark-backend replicas on one PostgreSQL, upstream hark_sim; {devices} devices,"
            f" open loop {rate_hz:g} requests/s for {duration_s:.0f} s, per-device limit"
            f" {RATE_LIMIT[0]}/{RATE_LIMIT[1]:g}s; {os.cpu_count()} CPUs, load average"
            f" {os.getloadavg()[0]:.1f} at start"
        )

        async def faults(t0: float) -> None:
            victim = replicas[1]
            await asyncio.sleep(max(0.0, t0 + kill_at_s - time.perf_counter()))
            soak.events.append((time.perf_counter() - t0, "replica B SIGKILL"))
            victim.kill()
            await asyncio.sleep(down_s)
            soak.events.append((time.perf_counter() - t0, "B restarting"))
            victim.start()
            await asyncio.to_thread(victim.wait_up)
            soak.events.append((time.perf_counter() - t0, "B up"))
            await asyncio.sleep(max(0.0, t0 + db_at_s - time.perf_counter()))
            soak.events.append((time.perf_counter() - t0, "PostgreSQL stop -m fast"))
            await asyncio.to_thread(pg.stop, "fast")
            await asyncio.sleep(db_down_s)
            await asyncio.to_thread(pg.start)
            soak.db_up_s = time.perf_counter() - t0
            soak.events.append((soak.db_up_s, "PostgreSQL up"))

        async def campaign() -> tuple[Counter[int], ...]:
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
            clients = [
                httpx.AsyncClient(base_url=r.url, timeout=REQUEST_TIMEOUT_S, limits=limits)
                for r in replicas
            ]
            try:
                before = await _burst(clients, burst_tokens[0], BURST)
                await _open_loop(clients, tokens, rate_hz, duration_s, faults, soak)
                after = await _burst(clients, burst_tokens[1], BURST)
                # The database once more, now with no request in flight: the replicas'
                # connections all predate it, and the first requests after it must not fail.
                stop = time.perf_counter()
                await asyncio.to_thread(pg.stop, "immediate")
                await asyncio.to_thread(pg.start)
                soak.quiet_restart_s = time.perf_counter() - stop
                first, final = await _every_token_mints(clients, tokens)
            finally:
                for client in clients:
                    await client.aclose()
            return before, after, first, final

        burst_before, burst_after, first, final = asyncio.run(campaign())
        registry.close()
        # A fresh registry: the bench's own connection predates the database restart.
        check = Registry(db_url)
        try:
            listed = check.devices()
        finally:
            check.close()
        counted = sum(d.request_count for d in listed if d.name.startswith("soak"))
        registry_devices = len(listed)
    finally:
        for replica in replicas:
            replica.stop()
        if sim is not None:
            sim.terminate()
            try:
                sim.wait(15)
            except subprocess.TimeoutExpired:
                sim.kill()
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop("immediate")
        problems = _log_problems(replicas)
        if os.environ.get("HARK_BENCH_KEEP"):
            print(f"   kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    # -- figures and verdict --
    _report_buckets(soak, duration_s)
    statuses = Counter(o.status for o in soak.outcomes)
    codes = Counter(f"{o.status} {o.code}" for o in soak.outcomes if o.code)
    ok_ms = [o.latency_ms for o in soak.outcomes if o.status == 200]
    bad = Counter(o.bad_5xx for o in soak.outcomes if o.bad_5xx)
    unanswered = statuses.get(0, 0)
    answered_by_backend = sum(n for s, n in (statuses + final).items() if s in (200, 429))
    late_503 = [
        o.due_s + o.latency_ms / 1000 - soak.db_up_s
        for o in soak.outcomes
        if o.status == 503 and o.due_s + o.latency_ms / 1000 > soak.db_up_s
    ]
    print(
        f"   whole run: {len(soak.outcomes)} requests, statuses {dict(sorted(statuses.items()))},"
        f" {soak.skipped} skipped (client over {MAX_IN_FLIGHT} in flight), max in flight"
        f" {soak.max_in_flight}; p50 {_percentile(ok_ms, 0.5):.1f} ms,"
        f" p99 {_percentile(ok_ms, 0.99):.1f} ms, max {max(ok_ms, default=float('nan')):.0f} ms"
    )
    print(
        f"   error codes {dict(codes) or '{}'}; failovers"
        f" {sum(o.failover for o in soak.outcomes)}, transport errors"
        f" {dict(soak.transport_errors) or '{}'}"
    )
    print(
        f"   registry: {registry_devices} devices, {counted} requests counted for the soak"
        f" devices vs {answered_by_backend} answered 200/429, run and final check"
        " (counted >= answered: no lost write)"
    )
    limit = RATE_LIMIT[0]
    bursts_ok = burst_before.get(200, 0) == limit and burst_after.get(200, 0) == limit
    bursts_ok = bursts_ok and burst_before.get(429, 0) == BURST - limit
    bursts_ok = bursts_ok and burst_after.get(429, 0) == BURST - limit
    print(
        f"   rate limit across replicas ({BURST} at once from one device, alternating):"
        f" before faults {dict(sorted(burst_before.items()))}, after"
        f" {dict(sorted(burst_after.items()))} (want {limit} x 200)"
    )
    print(
        f"   then PostgreSQL stop -m immediate and start with no traffic"
        f" ({soak.quiet_restart_s:.1f} s); every device token once, first pass:"
        f" {dict(sorted(first.items()))}, after retrying (3 x 1 s): {dict(sorted(final.items()))}"
    )
    print(
        f"   503s answered after PostgreSQL was back: {len(late_503)}"
        f" (last {max(late_503, default=0.0):.2f} s after; over {RECOVERY_GRACE_S:g} s is a defect)"
    )
    checks = {
        "no 500 / bad 5xx": not bad,
        "no registration lost": final.get(200, 0) == devices and registry_devices == devices + 2,
        "rate limit held across replicas": bursts_ok,
        "no lost write": counted >= answered_by_backend,
        "registry recovered with the database": max(late_503, default=0.0) <= RECOVERY_GRACE_S
        and first.get(200, 0) == devices,
        "no unanswered request": unanswered == 0,
        "no unhandled exception logged": not problems,
    }
    if bad:
        print(f"   bad 5xx answers: {dict(bad)}")
    for line in problems[:10]:
        print(f"   log: {line}")
    held = all(checks.values())
    failed = [name for name, ok in checks.items() if not ok]
    print(f"   soak {'HELD' if held else 'FAILED: ' + ', '.join(failed)}")
    return held


def main() -> None:
    """``make bench``: the short run (kill and database restart compressed into 45 s)."""
    run(duration_s=float(os.environ.get("HARK_BENCH_SOAK_BACKEND_S", "45")))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests/s offered")
    parser.add_argument("--devices", type=int, default=200)
    args = parser.parse_args()
    sys.exit(0 if run(args.duration_s, args.rate, args.devices) else 1)
