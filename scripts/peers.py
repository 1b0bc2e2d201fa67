#!/usr/bin/env python3
"""Side-by-side benchmark: doorman vs NGINX vs HAProxy on this machine.

Three upstream replicas (one nginx worker answering "ok" on three ports) and one
certificate (P-256, TLS 1.3) are shared by every proxy. Each proxy runs ONE worker pinned
to CPU 0; the load generator and the replicas share CPU 1. The primary figure is the
proxy's CPU time per request (utime + stime from /proc over the run / completed requests).
Every run is bounded in time and aimed at 127.0.0.1 only. Writes target/bench/report.md.

Usage: scripts/peers.py [--runs N] [--seconds S] [--connections C] [--only SCENARIO,...]
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "target" / "bench"
DOORMAN = ROOT / "target" / "release" / "doorman"
TICK = os.sysconf("SC_CLK_TCK")
PROXY_CPU, CLIENT_CPU = "0", "1"
REPLICA_PORTS = [19001, 19002, 19003]
# Below the ephemeral range (32768+), so no client socket can hold one.
PORTS = {  # proxy -> (plain, tls)
    "doorman": (18080, 18443),
    "nginx": (28080, 28443),
    "haproxy": (30080, 30443),
}


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def wait_port(port, timeout=10.0):
    import socket
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def cpu_ticks(pids):
    """utime + stime of the processes (all threads), in clock ticks."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def rss_kib(pids):
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def core_times(cpu):
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + v[4]
            return sum(v), idle
    raise SystemExit(f"no cpu{cpu} in /proc/stat")


def children(pid):
    """pid and its direct children (nginx master + workers)."""
    out = [pid]
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int(p.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if ppid == pid:
                out.append(int(p.name))
    return out


class Proc:
    def __init__(self, name, args, env=None, cpu=PROXY_CPU):
        self.name = name
        log = open(WORK / f"{name}.log", "w")
        self.p = subprocess.Popen(["taskset", "-c", cpu, *args], stdout=log, stderr=log,
                                  env=env, start_new_session=True)

    def pids(self):
        return children(self.p.pid)

    def stop(self):
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
            self.p.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.p.pid, signal.SIGKILL)


def setup_certs():
    certs = WORK / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    key, crt = certs / "key.pem", certs / "cert.pem"
    if not crt.exists():
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2",
           "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (certs / "combined.pem").write_text(crt.read_text() + key.read_text())
    return key, crt, certs / "combined.pem"


def nginx_conf(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""
worker_processes 1;
daemon off;
master_process on;
pid {path.parent}/nginx.pid;
error_log {path.parent}/error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {path.parent}/tmp;
  proxy_temp_path {path.parent}/tmp;
  fastcgi_temp_path {path.parent}/tmp;
  uwsgi_temp_path {path.parent}/tmp;
  scgi_temp_path {path.parent}/tmp;
  keepalive_requests 1000000;
{body}
}}
""")
    (path.parent / "tmp").mkdir(exist_ok=True)


def start_replicas():
    listens = "\n".join(f"    listen 127.0.0.1:{p};" for p in REPLICA_PORTS)
    conf = WORK / "replicas" / "nginx.conf"
    nginx_conf(conf, f"""  server {{
{listens}
    location / {{ return 200 "ok"; }}
  }}""")
    p = Proc("replicas", ["nginx", "-c", str(conf), "-p", str(conf.parent)], cpu=CLIENT_CPU)
    for port in REPLICA_PORTS:
        wait_port(port)
    return p


def start_doorman(key, crt):
    plain, tls = PORTS["doorman"]
    servers = ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in REPLICA_PORTS)
    conf = WORK / "doorman" / "proxy.toml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f"""
[server]
listen = "127.0.0.1:{tls}"
plain_listen = "127.0.0.1:{plain}"
admin_listen = "127.0.0.1:18901"
workers = 1
max_connections = 20000
[[tls.certificates]]
cert = "{crt}"
key = "{key}"
[upstreams.api]
servers = [{servers}]
keepalive = 256
[[routes]]
path_prefix = "/"
upstream = "api"
""")
    env = dict(os.environ, RUST_LOG="error")
    p = Proc("doorman", [str(DOORMAN), "run", "--config", str(conf)], env=env)
    wait_port(tls)
    wait_port(plain)
    return p


def start_nginx(key, crt):
    plain, tls = PORTS["nginx"]
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in REPLICA_PORTS)
    conf = WORK / "nginx" / "nginx.conf"
    nginx_conf(conf, f"""  upstream api {{
{servers}
    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{plain};
    listen 127.0.0.1:{tls} ssl http2;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    ssl_ecdh_curve X25519;
    ssl_session_cache off;
    location / {{
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}""")
    p = Proc("nginx", ["nginx", "-c", str(conf), "-p", str(conf.parent)])
    wait_port(tls)
    return p


def start_haproxy(combined):
    plain, tls = PORTS["haproxy"]
    servers = "\n".join(f"  server r{i} 127.0.0.1:{p}" for i, p in enumerate(REPLICA_PORTS))
    conf = WORK / "haproxy" / "haproxy.cfg"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f"""
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  option forwardfor
frontend fe
  bind 127.0.0.1:{plain}
  bind 127.0.0.1:{tls} ssl crt {combined} alpn h2,http/1.1 ssl-min-ver TLSv1.3 curves X25519
  default_backend api
backend api
  balance roundrobin
  http-reuse always
{servers}
""")
    p = Proc("haproxy", ["haproxy", "-f", str(conf)])
    wait_port(tls)
    return p


def wrk(url, seconds, connections, close=False):
    args = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
            "--latency", "--timeout", "5s"]
    if close:
        args += ["-H", "Connection: close"]
    out = subprocess.run([*args, url], check=True, capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    def lat(q):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if not m:
            return None
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return {"requests": requests, "p50": lat(50), "p90": lat(90), "p99": lat(99), "errors": errors}


def h2load(url, seconds, connections, rps=None):
    args = ["taskset", "-c", CLIENT_CPU, "h2load", "-D", str(seconds), "-c", str(connections),
            "-m", "10", "-t", "1"]
    if rps:
        args = ["taskset", "-c", CLIENT_CPU, "h2load", "-D", str(seconds), "-c",
                str(connections), "-t", "1", "--rps", str(rps)]
    out = subprocess.run([*args, url], check=True, capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    done, ok = int(m.group(1)), int(m.group(2))
    # h2load reports min/max/mean, not percentiles: latency columns stay empty here.
    return {"requests": ok, "p50": None, "p90": None, "p99": None, "errors": done - ok}


SCENARIOS = {
    "plain": ("plain HTTP/1.1 keep-alive GET", lambda proxy, s, c: wrk(f"http://127.0.0.1:{PORTS[proxy][0]}/", s, c)),
    "tls": ("TLS 1.3 keep-alive GET", lambda proxy, s, c: wrk(f"https://127.0.0.1:{PORTS[proxy][1]}/", s, c)),
    "handshake": ("TLS 1.3 new connection per request", lambda proxy, s, c: wrk(f"https://127.0.0.1:{PORTS[proxy][1]}/", s, min(c, 16), close=True)),
    "h2": ("HTTP/2 over TLS (h2load, 10 streams per connection)", lambda proxy, s, c: h2load(f"https://127.0.0.1:{PORTS[proxy][1]}/", s, c)),
}


def measure(proc, scenario, seconds, connections):
    pids = proc.pids()
    t0, i0 = core_times(CLIENT_CPU)
    c0 = cpu_ticks(pids)
    r = SCENARIOS[scenario][1](proc.name, seconds, connections)
    c1 = cpu_ticks(pids)
    t1, i1 = core_times(CLIENT_CPU)
    r["cpu_us"] = (c1 - c0) / TICK * 1e6 / max(r["requests"], 1)
    r["rps"] = r["requests"] / seconds
    r["client_busy"] = 100.0 * (1 - (i1 - i0) / max(t1 - t0, 1))
    r["rss_mib"] = rss_kib(pids) / 1024
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    a = ap.parse_args()
    for tool in ["nginx", "haproxy", "wrk", "h2load", "openssl", "taskset"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (scripts/bench.sh installs it)")
    if not DOORMAN.exists():
        raise SystemExit("build doorman first: cargo build --release")
    WORK.mkdir(parents=True, exist_ok=True)
    key, crt, combined = setup_certs()
    procs = []
    try:
        procs.append(start_replicas())
        proxies = {}
        for name, start in [("doorman", lambda: start_doorman(key, crt)),
                            ("nginx", lambda: start_nginx(key, crt)),
                            ("haproxy", lambda: start_haproxy(combined))]:
            proxies[name] = start()
            procs.append(proxies[name])
        results = {}
        for scenario in a.only.split(","):
            for proxy in proxies.values():  # warm-up
                measure(proxy, scenario, 2, a.connections)
            for run in range(a.runs):
                # Alternate the order each run, so drift hits every proxy alike.
                order = list(proxies.values())
                if run % 2:
                    order.reverse()
                for proxy in order:
                    r = measure(proxy, scenario, a.seconds, a.connections)
                    results.setdefault((scenario, proxy.name), []).append(r)
                    print(f"{scenario:10} {proxy.name:8} run {run + 1}: {r['rps']:9.0f} req/s "
                          f"{r['cpu_us']:7.1f} µs/req  p99 {r['p99']} ms  errors {r['errors']}",
                          flush=True)
        write_report(results, a)
    finally:
        for p in procs:
            p.stop()


def med(rs, key):
    vals = [r[key] for r in rs if r[key] is not None]
    return statistics.median(vals) if vals else None


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def write_report(results, a):
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown CPU")
    lines = [
        "# doorman vs NGINX vs HAProxy",
        "",
        f"{cpu}, {os.cpu_count()} CPUs; proxies pinned to CPU {PROXY_CPU} with one worker each, "
        f"load generator and replicas on CPU {CLIENT_CPU}. Median of {a.runs} alternating runs "
        f"of {a.seconds} s after a warm-up, {a.connections} connections. "
        f"nginx {version(['nginx', '-v'])}, haproxy {version(['haproxy', '-v'])}.",
        f"Command: `scripts/bench.sh peers --runs {a.runs} --seconds {a.seconds} --connections {a.connections}`",
        "",
        "| scenario | proxy | CPU µs/request | doorman ÷ this | req/s | p50 ms | p90 ms | p99 ms | errors | client core busy | RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in dict.fromkeys(s for s, _ in results):
        base = med(results.get((scenario, "doorman"), []), "cpu_us")
        for proxy in ["doorman", "nginx", "haproxy"]:
            rs = results.get((scenario, proxy))
            if not rs:
                continue
            cpu_us = med(rs, "cpu_us")
            busy = med(rs, "client_busy")
            ratio = base / cpu_us if base and cpu_us else None
            lines.append(
                f"| {SCENARIOS[scenario][0]} | {proxy} | {fmt(cpu_us, '.1f')} | "
                f"{'—' if proxy == 'doorman' else fmt(ratio, '.2f')} | {fmt(med(rs, 'rps'), '.0f')} | "
                f"{fmt(med(rs, 'p50'), '.2f')} | {fmt(med(rs, 'p90'), '.2f')} | {fmt(med(rs, 'p99'), '.2f')} | "
                f"{sum(r['errors'] for r in rs)} | {fmt(busy, '.0f')}%{' (client-bound)' if busy and busy > 95 else ''} | "
                f"{fmt(med(rs, 'rss_mib'), '.1f')} |")
    lines += ["", "CPU µs/request: the proxy's utime+stime over the run divided by completed "
              "requests (lower is better); `doorman ÷ this` below 1.00 means doorman spends less "
              "CPU per request than that proxy."]
    out = WORK / "report.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"report written to {out}")


def version(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"(\d+\.\d+\.\d+)", r.stdout + r.stderr)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    main()
