"""Benchmark of hark-backend: key requests per second and latency with 100 concurrent devices.

The backend (one uvicorn worker, SQLite) runs as its own process in front of hark_sim (its own
process, answering at once); 100 simulated devices (asyncio + httpx in this process, one
keep-alive connection each, each with its own token) mint keys.  Two phases:

1. throughput: every device sends its next request as soon as the last one is answered
   (closed loop), for ``HARK_BENCH_BACKEND_S`` seconds (default 10): requests/s.
2. latency: the devices together offer each rate in ``HARK_BENCH_BACKEND_RATES`` requests/s
   (default 300, the target, and 150), each device on its own schedule (open loop); latency
   is measured from the scheduled send time, so a server that falls behind shows it (no
   coordinated omission).

3. under attack: phase 1 again while ``ATTACKERS`` clients from one other address (sent as
   ``X-Forwarded-For``, which the backend trusts from loopback) send unknown ``hark_dt_``
   tokens back to back: the devices' requests/s, and what the attacker got.

(In phase 1 latency is just concurrency / throughput by Little's law, so the p99 target only
makes sense at a given offered rate: phase 2.)  It also prints the backend's and the sim's
CPU time per request, which does not depend on how busy the machine is.  It prints figures and
never fails on them.  Targets (issue 5): >= 300 requests/s, p99 <= 50 ms.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

DEVICES = 100
DURATION_S = float(os.environ.get("HARK_BENCH_BACKEND_S", "10"))
OFFERED_RATES_HZ = [
    float(r) for r in os.environ.get("HARK_BENCH_BACKEND_RATES", "300,150").split(",")
]
WARMUP_S = 1.0
SIM_KEY = "sk-sim-bench"
MINT = "/v1/realtime/client_secrets"
MAX_BEHIND_S = 2.0  # phase 2: a device this late skips a request (the server is saturated)
ATTACKERS = 4  # phase 3: concurrent connections sending unknown tokens
ATTACKER_ADDRESS = "203.0.113.66"


@dataclass
class Tally:
    """What one phase measured."""

    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    requests: int = 0  # warm-up included, for CPU per request
    errors: dict[str, int] = field(default_factory=dict)

    def record(self, status: int, latency_ms: float, measured: bool) -> None:
        self.requests += 1
        if not measured:
            return
        if status == 200:
            self.latencies_ms.append(latency_ms)
        else:
            self.failures += 1

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def _wait_port_in_log(log_path: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log_path.read_text())
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"hark-backend exited: {log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError("hark-backend did not log its port")


async def _post(http: httpx.AsyncClient, token: str, tally: Tally) -> int:
    try:
        response = await http.post(MINT, json={}, headers={"Authorization": f"Bearer {token}"})
    except httpx.TransportError as exc:
        tally.errors[type(exc).__name__] = tally.errors.get(type(exc).__name__, 0) + 1
        return 0
    return response.status_code


async def _open_loop(pairs: list[tuple[httpx.AsyncClient, str]], rate_hz: float) -> None:
    """Offer ``rate_hz`` requests/s spread over the devices; print latency from schedule."""
    tally = Tally()
    period_s = len(pairs) / rate_hz
    start = time.perf_counter() + 0.1
    measure_from = start + WARMUP_S
    stop_at = measure_from + DURATION_S
    rng = random.Random(5)
    dropped = 0

    async def scheduled(http: httpx.AsyncClient, token: str) -> None:
        nonlocal dropped
        due = start + rng.random() * period_s
        while due < stop_at:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if time.perf_counter() - due > MAX_BEHIND_S:
                dropped += due >= measure_from  # saturated: skip, but count it
            else:
                status = await _post(http, token, tally)
                tally.record(status, (time.perf_counter() - due) * 1000, due >= measure_from)
            due += period_s

    await asyncio.gather(*(scheduled(c, t) for c, t in pairs))
    answered_hz = len(tally.latencies_ms) / DURATION_S
    print(f"   phase 2, open loop, offered {rate_hz:.0f} requests/s over {len(pairs)} devices:")
    print(
        f"     answered {answered_hz:.0f} requests/s, {tally.failures} failed,"
        f" {dropped} skipped (over {MAX_BEHIND_S:.0f} s behind schedule);"
        f" latency from scheduled send p50 {tally.percentile(0.5):.1f} ms,"
        f" p99 {tally.percentile(0.99):.1f} ms   (target p99 <= 50 ms at 300/s)"
    )
    if tally.errors:
        print(f"     transport errors: {tally.errors}")


async def _phases(base_url: str, tokens: list[str], pids: tuple[int, int]) -> None:
    # One client (one keep-alive connection) per device, as in the field: one shared
    # 100-connection pool would make the client the bottleneck (httpcore scans its pool on
    # every request).  Clients are made and connected before the clock starts, with one
    # shared TLS context (each new context re-reads the CA bundle).
    tls = ssl.create_default_context()
    clients = [httpx.AsyncClient(base_url=base_url, timeout=30, verify=tls) for _ in tokens]
    pairs = list(zip(clients, tokens, strict=True))
    try:
        await asyncio.gather(*(c.get("/healthz") for c in clients))

        # Phase 1: closed loop.
        tally = Tally()
        cpu_before = [_cpu_s(pid) for pid in (*pids, os.getpid())]
        measure_from = time.perf_counter() + WARMUP_S
        stop_at = measure_from + DURATION_S

        async def eager(http: httpx.AsyncClient, token: str) -> None:
            while (t0 := time.perf_counter()) < stop_at:
                status = await _post(http, token, tally)
                tally.record(status, (time.perf_counter() - t0) * 1000, t0 >= measure_from)

        await asyncio.gather(*(eager(c, t) for c, t in pairs))
        cpu_ms = [
            (_cpu_s(pid) - b) * 1000 / max(tally.requests, 1)
            for pid, b in zip((*pids, os.getpid()), cpu_before, strict=True)
        ]
        print(f"   phase 1, closed loop ({DEVICES} devices back to back, {DURATION_S:.0f} s):")
        print(
            f"     throughput {len(tally.latencies_ms) / DURATION_S:.0f} requests/s"
            f" ({len(tally.latencies_ms)} ok, {tally.failures} failed)   (target >= 300)"
        )
        print(
            f"     latency p50 {tally.percentile(0.5):.1f} ms, p99 {tally.percentile(0.99):.1f} ms"
            " (= concurrency / throughput)"
        )
        print(
            f"     CPU per request: backend {cpu_ms[0]:.2f} ms (~{1000 / max(cpu_ms[0], 1e-9):.0f}"
            f" requests/s per free core), sim {cpu_ms[1]:.2f} ms, device client {cpu_ms[2]:.2f} ms"
        )
        if tally.errors:
            print(f"     transport errors: {tally.errors}")

        # Phase 2: open loop at each offered rate.
        for rate_hz in OFFERED_RATES_HZ:
            await _open_loop(pairs, rate_hz)

        # Phase 3: phase 1 under a flood of unknown tokens from another address.
        await _under_attack(base_url, pairs, tls)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


async def _under_attack(
    base_url: str, pairs: list[tuple[httpx.AsyncClient, str]], tls: ssl.SSLContext
) -> None:
    tally = Tally()
    refused: dict[int, int] = {}
    measure_from = time.perf_counter() + WARMUP_S
    stop_at = measure_from + DURATION_S
    wrong = {"Authorization": "Bearer hark_dt_" + "0" * 43, "X-Forwarded-For": ATTACKER_ADDRESS}

    async def eager(http: httpx.AsyncClient, token: str) -> None:
        while (t0 := time.perf_counter()) < stop_at:
            status = await _post(http, token, tally)
            tally.record(status, (time.perf_counter() - t0) * 1000, t0 >= measure_from)

    async def attacker() -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=30, verify=tls) as http:
            while (t0 := time.perf_counter()) < stop_at:
                try:
                    status = (await http.post(MINT, json={}, headers=wrong)).status_code
                except httpx.TransportError:
                    status = 0
                if t0 >= measure_from:
                    refused[status] = refused.get(status, 0) + 1

    await asyncio.gather(*(eager(c, t) for c, t in pairs), *(attacker() for _ in range(ATTACKERS)))
    attacks = " ".join(f"{n / DURATION_S:.0f}/s got {s}" for s, n in sorted(refused.items()))
    print(
        f"   phase 3, closed loop while {ATTACKERS} clients from {ATTACKER_ADDRESS} send unknown"
        f" tokens back to back:"
    )
    print(
        f"     devices: throughput {len(tally.latencies_ms) / DURATION_S:.0f} requests/s"
        f" ({tally.failures} failed), p50 {tally.percentile(0.5):.1f} ms;"
        f" attacker: {attacks or 'nothing answered'}"
    )


def main() -> None:
    """Start sim and backend, run 100 devices in two phases, print req/s and p50/p99."""
    from hark_backend.registry import Registry

    workdir = Path(tempfile.mkdtemp(prefix="hark-bench-backend-"))
    db_url = f"sqlite:///{workdir / 'devices.db'}"
    registry = Registry(db_url)
    registry.init_schema()
    tokens = [registry.add(f"bench{i:03d}", group=None, now_s=time.time()) for i in range(DEVICES)]
    registry.close()
    load_1m = os.getloadavg()[0]
    print(
        f"   backend: SQLite, 1 uvicorn worker, per-device rate limit off; upstream hark_sim at"
        f" zero delay; {os.cpu_count()} CPUs shared by client, backend and sim"
        f" (load average {load_1m:.1f} at start)"
    )

    sim_port = _free_port()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    sim = subprocess.Popen(
        [sys.executable, "-m", "hark_sim", "--port", str(sim_port), "--api-key", SIM_KEY,
         "--realtime-factor", "0", "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    backend_log = workdir / "backend.log"
    backend: subprocess.Popen[bytes] | None = None
    try:
        _wait_http(f"http://127.0.0.1:{sim_port}/", sim)
        with backend_log.open("w") as log_file:
            backend = subprocess.Popen(
                [sys.executable, "-m", "hark_backend", "serve", "--host", "127.0.0.1",
                 "--port", "0", "--db", db_url,
                 "--openai-base-url", f"http://127.0.0.1:{sim_port}/v1",
                 "--rate-limit", "1000000000/60", "--log-level", "info"],
                stdout=log_file, stderr=subprocess.STDOUT, env={**env, "OPENAI_API_KEY": SIM_KEY},
            )  # fmt: skip
        port = _wait_port_in_log(backend_log, backend)
        base_url = f"http://127.0.0.1:{port}"
        _wait_http(f"{base_url}/healthz", backend)
        asyncio.run(_phases(base_url, tokens, (backend.pid, sim.pid)))
    finally:
        for proc in (backend, sim):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if os.environ.get("HARK_BENCH_KEEP"):
            print(f"   kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
