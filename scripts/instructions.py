#!/usr/bin/env python3
"""User-space instructions per request, counted by callgrind: a figure that does not drift
with the machine's load, for judging a change to the hot path (before/after in one run).

doorman runs under `valgrind --tool=callgrind` with the same replicas, certificate and
config as scripts/peers.py; after a warm-up the counters are zeroed, h2load sends a fixed
number of requests, and the counters are dumped: instructions ÷ requests. Kernel time is not
counted (callgrind sees user space only), so this measures exactly the part of the CPU cost
that doorman's own code decides. With --nginx, nginx's one worker (no master, so valgrind
wraps it) is counted the same way on the same loads: the peer's user-space work per request.
Only 127.0.0.1 is used; every load is a fixed count.

With --logs, doorman (and nginx with --nginx) are counted a second time with their access log
on, writing to a file (`doorman_log`, `nginx_log`, configured as in peers.py): the difference
is what the log line costs in user space. The kernel's part (copying the lines into the page
cache) is not counted; it grows with the bytes per line, which the report also gives.

Usage: scripts/instructions.py [--binary PATH] [--baseline PATH] [--kinds plain,tls,h2,jwt,handshake,h2_rate,tls_rate]
                               [--requests N] [--nginx] [--logs]
Writes target/bench/instructions.md.
"""
import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

URLS = {  # kind -> (url, h2load flags)
    "plain": ("http://127.0.0.1:{plain}/", ["--h1", "-c", "32"]),
    "tls": ("https://127.0.0.1:{tls}/", ["--h1", "-c", "32"]),
    "h2": ("https://127.0.0.1:{tls}/", ["-c", "32", "-m", "10"]),
    # TLS keep-alive with an ES256 token checked (verified-token cache, revocation view).
    "jwt": ("https://127.0.0.1:{tls}/auth/es", ["--h1", "-c", "32", "-H", "Authorization: Bearer {es}"]),
    # A new TLS 1.3 connection per request (full handshake, no resumption), one at a time.
    "handshake": ("https://127.0.0.1:{tls}/", None),
    # A low fixed rate (16 connections x 10/s, one stream each): doorman wakes for almost
    # every request, as in peers.py's fixed-rate rows, so the cost of waking is counted.
    "h2_rate": ("https://127.0.0.1:{tls}/", ["-c", "16", "--rps", "10", "-m", "1"]),
    "tls_rate": ("https://127.0.0.1:{tls}/", ["--h1", "-c", "16", "--rps", "10", "-m", "1"]),
}
# Fewer requests where each costs more time: a handshake costs about ten keep-alive
# requests; the fixed-rate kinds run at 160 requests/s.
SHARE = {"handshake": 20, "h2_rate": 10, "tls_rate": 10}


def handshakes(url, n, strict=True):
    """`n` requests, each on a new TLS connection closed after its response."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    ctx = peers.insecure()
    ctx.set_alpn_protocols(["http/1.1"])
    ok = 0
    for _ in range(n):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
            ok += reply.startswith(b"HTTP/1.1 200")
        except OSError:
            pass
    if strict and ok != n:
        raise SystemExit(f"only {ok} of {n} handshake requests to {url} succeeded")


def load(url, flags, n, strict=True):
    if flags is None:
        return handshakes(url, n, strict)
    out = subprocess.run(["taskset", "-c", peers.CLIENT_CPU, "h2load", *flags, "-n", str(n), url],
                         capture_output=True, text=True, timeout=600).stdout
    done = [line for line in out.splitlines() if line.startswith("requests:")]
    if strict and (not done or f"{n} succeeded" not in done[0]):
        raise SystemExit(f"h2load did not complete {n} requests against {url}:\n{out[-1500:]}")


def count(binary, kind, n, key, crt, name):
    """Instructions per request for one binary (or nginx) and one kind of request; `name` is
    the proxy's name in peers.PORTS (`_log`: its access log on)."""
    out_dir = peers.WORK / "callgrind"
    out_dir.mkdir(parents=True, exist_ok=True)
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p"]
    wait = peers.wait_port
    peers.wait_port = lambda port, timeout=10.0: wait(port, 120.0)  # valgrind starts slowly
    try:
        if binary == "nginx":
            # Its one worker in the foreground, no master: valgrind wraps the worker.
            proc = peers.start_nginx(key, crt, launcher=valgrind, name=name)
        else:
            wrapper = out_dir / f"run-{Path(binary).name}.sh"
            wrapper.write_text(f"#!/bin/sh\nexec {' '.join(valgrind)} {binary} \"$@\"\n")
            wrapper.chmod(0o755)
            proc = peers.start_doorman(key, crt, peers.JWT, name=name, binary=wrapper)
    finally:
        peers.wait_port = wait
    try:
        plain, tls = peers.PORTS[name]
        url, flags = URLS[kind]
        url = url.format(plain=plain, tls=tls)
        n = max(n // SHARE.get(kind, 1), 100)
        if flags is not None:
            flags = [f.format(es=peers.JWT.es) for f in flags]
        # Warm-up: pools, caches, session state, the revocation view's first sync (under
        # valgrind the first requests may outlast the store timeout: not counted).
        load(url, flags, max(n // 10, 500 if flags else 20), strict=False)
        pid = str(proc.p.pid)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        load(url, flags, n)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        time.sleep(1)
        dumps = sorted(glob.glob(f"{out_dir}/cg.{pid}.*"), key=os.path.getmtime)
        if not dumps:
            raise SystemExit("callgrind wrote no dump")
        text = subprocess.run(["callgrind_annotate", dumps[-1]], capture_output=True,
                              text=True, check=True).stdout
        total = next(line for line in text.splitlines() if "PROGRAM TOTALS" in line)
        per_request = int(total.split()[0].replace(",", "")) / n
        log = peers.WORK / name / "access.log"
        if peers.LOGGED(name) and log.exists():
            lines = log.read_bytes().splitlines()
            print(f"  {name}: {len(lines)} lines so far, "
                  f"{sum(map(len, lines)) / max(len(lines), 1) + 1:.0f} bytes per line", flush=True)
        return per_request
    finally:
        proc.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", type=Path, default=peers.DOORMAN)
    ap.add_argument("--baseline", type=Path, help="another doorman binary, counted alongside")
    ap.add_argument("--kinds", default="plain,tls,h2,jwt")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--nginx", action="store_true",
                    help="count nginx's worker too, on the same loads (not the jwt kind: "
                         "nginx has no JWT verification)")
    ap.add_argument("--logs", action="store_true",
                    help="count doorman (and nginx) again with the access log on, to a file")
    a = ap.parse_args()
    for tool in ["valgrind", "callgrind_control", "callgrind_annotate", "h2load", "nginx",
                 "redis-server", "taskset", "openssl"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (scripts/bench.sh installs it)")
    kinds = a.kinds.split(",")
    unknown = [k for k in kinds if k not in URLS]
    if unknown:
        raise SystemExit(f"unknown kinds {unknown}; known: {', '.join(URLS)}")
    binaries = [("doorman", a.binary.resolve(), "doorman")]
    if a.baseline:
        binaries.append(("baseline", a.baseline.resolve(), "doorman_b"))
    if a.nginx:
        binaries.append(("nginx", "nginx", "nginx"))
    if a.logs:
        binaries += [(f"{label}_log", b, f"{name}_log") for label, b, name in binaries]
    peers.WORK.mkdir(parents=True, exist_ok=True)
    key, crt, _ = peers.setup_certs()
    peers.JWT = peers.Jwt()
    procs = []
    rows = []
    try:
        procs.append(peers.start_replicas())
        procs.append(peers.start_redis())
        for kind in kinds:
            got = {}
            for name, binary, proxy in binaries:
                if name.startswith("nginx") and kind == "jwt":
                    continue
                got[name] = count(binary, kind, a.requests, key, crt, proxy)
                print(f"{kind:6} {name:9} {got[name]:9.0f} instructions/request", flush=True)
            rows.append((kind, got))
    finally:
        for p in procs:
            p.stop()
    lines = [f"User-space instructions per request (callgrind), {a.requests} requests after a "
             "warm-up, 32 connections.",
             f"Command: `scripts/instructions.py --kinds {a.kinds} --requests {a.requests}"
             + (" --baseline BINARY" if a.baseline else "") + (" --nginx" if a.nginx else "")
             + (" --logs" if a.logs else "") + "`", "",
             "| request | doorman | baseline | doorman ÷ baseline | nginx | doorman ÷ nginx |",
             "|---|---:|---:|---:|---:|---:|"]
    def cell(got, name):
        v = got.get(name)
        return (f"{v:.0f}", f"{got['doorman'] / v:.3f}") if v else ("—", "—")
    for kind, got in rows:
        lines.append(f"| {kind} | {got['doorman']:.0f} | " + " | ".join(
            [*cell(got, "baseline"), *cell(got, "nginx")]) + " |")
    if a.logs:
        lines += ["", "The access log's user-space cost: instructions per request with the log on "
                  "minus with it off.", "", "| request | proxy | log off | log on | cost |",
                  "|---|---|---:|---:|---:|"]
        for kind, got in rows:
            for name in ["doorman", "baseline", "nginx"]:
                if name in got and f"{name}_log" in got:
                    off, on = got[name], got[f"{name}_log"]
                    lines.append(f"| {kind} | {name} | {off:.0f} | {on:.0f} | {on - off:.0f} |")
    report = peers.WORK / "instructions.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
