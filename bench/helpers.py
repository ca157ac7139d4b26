#!/usr/bin/env python3
"""Helpers for bench/run.sh (standard library only).

    helpers.py ports N                      N free TCP ports on 127.0.0.1
    helpers.py mint-hs256 SECRET            an HS256 access token (simplejwt's shape)
    helpers.py tree-rss PID                 VmRSS (KiB) summed over PID and its descendants
    helpers.py json-field KEY               print KEY of the JSON object on stdin
    helpers.py sink PORT                    upload sink: reads whole request bodies, answers their size
    helpers.py transfer ...                 one curl transfer with CPU and RSS sampling of the server
    helpers.py idle ...                     hold N idle keep-alive connections, report RSS per connection
    helpers.py report ...                   the JSON results and the tables

Every wait is bounded: no loop here runs without a deadline.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import resource
import secrets
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- /proc

def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rpartition(") ")[2].split()
        except OSError:
            continue
        kids.setdefault(int(rest[1]), []).append(int(d))
    return kids


def tree(pid):
    kids, out, todo = children_map(), [], [pid]
    while todo and len(out) < 10000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_kib(pids, field):
    return sum(status_kib(p, field) for p in pids)


def tree_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rpartition(") ")[2].split()
            total += int(rest[11]) + int(rest[12])
        except OSError:
            pass
    return total


def reset_peak(pids):
    """Resets VmHWM to the current RSS (clear_refs 5, Linux 4.0+)."""
    ok = True
    for p in pids:
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


# ---------------------------------------------------------------- small commands

def cmd_ports(a):
    socks = [socket.socket() for _ in range(a.n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    print(*(s.getsockname()[1] for s in socks))


def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def cmd_mint(a):
    def part(obj):
        return b64(json.dumps(obj, separators=(",", ":")).encode())
    now = int(time.time())
    claims = {"token_type": "access", "exp": now + 10 * 365 * 24 * 3600, "iat": now,
              "jti": secrets.token_hex(16), "user_id": "42"}
    signing_input = part({"alg": "HS256", "typ": "JWT"}) + "." + part(claims)
    sig = hmac.new(a.secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    print(signing_input + "." + b64(sig))


def cmd_tree_rss(a):
    print(tree_kib(tree(a.pid), "VmRSS"))


def cmd_json_field(a):
    print(json.load(sys.stdin)[a.key])


def cmd_describe(_a):
    d = json.load(sys.stdin)
    if d["kind"] == "idle":
        text = (f"{d['held']} held, RSS {d['rss_before_kib'] / 1024:.1f} -> {d['rss_after_kib'] / 1024:.1f} MiB, "
                f"{d['rss_per_conn_kib']} KiB/conn")
    else:
        text = f"{d['mib_per_s']} MiB/s, RSS +{d['rss_growth_kib']} KiB"
    print(text + ("" if d["ok"] else " FAILED"))


# ---------------------------------------------------------------- upload sink

class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return n
                left = size
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        return n
                    left -= len(chunk)
                    n += len(chunk)
                self.rfile.readline()
        left = int(self.headers.get("Content-Length") or 0)
        while left:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
            n += len(chunk)
        return n

    def answer(self):
        body = str(self.read_body()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_GET = answer


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def cmd_sink(a):
    ThreadingServer(("127.0.0.1", a.port), Sink).serve_forever()


# ---------------------------------------------------------------- transfer

def cmd_transfer(a):
    """Runs one curl (upload or download), samples the server tree's VmRSS
    every 10 ms, and prints one JSON line."""
    pids = tree(a.pid)
    reset_ok = reset_peak(pids)
    rss0 = tree_kib(pids, "VmRSS")
    t0 = tree_ticks(pids)
    cmd = list(a.pin) + ["curl", "-sS", "--max-time", str(a.timeout), "-o", a.body_out,
                         "-w", "%{http_code} %{size_download} %{size_upload}"]
    if a.mode == "upload":
        cmd += ["-H", "Content-Type: application/octet-stream", "--data-binary", "@" + a.file]
    cmd.append(a.url)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = rss0
    deadline = start + a.timeout + 10
    while proc.poll() is None and time.monotonic() < deadline:
        peak = max(peak, tree_kib(pids, "VmRSS"))
        time.sleep(0.01)
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate(timeout=10)
    wall = time.monotonic() - start
    t1 = tree_ticks(pids)
    hwm = tree_kib(pids, "VmHWM") if reset_ok else 0
    peak = max(peak, hwm)
    fields = out.split()
    status = fields[0] if fields else "?"
    moved = int(float(fields[1 if a.mode == "download" else 2])) if len(fields) == 3 else 0
    ok = proc.returncode == 0 and status == "200" and moved == a.size
    if ok and a.mode == "upload":
        with open(a.body_out) as f:
            ok = f.read().strip() == str(a.size)  # the sink got every byte
    r = {"rep": a.rep, "scenario": a.scenario, "target": a.target, "kind": "transfer",
         "ok": ok, "exit_code": proc.returncode, "status": status, "bytes": moved,
         "seconds": round(wall, 3), "mib_per_s": round(moved / wall / (1 << 20), 1) if wall else None,
         "server_cpu_s": round((t1 - t0) / CLK_TCK, 3), "rss_before_kib": rss0, "rss_peak_kib": peak,
         "rss_growth_kib": peak - rss0, "peak_from": "VmHWM after clear_refs + 10 ms VmRSS samples"
         if reset_ok else "10 ms VmRSS samples"}
    if not ok:
        r["error"] = (err or out)[-500:]
    print(json.dumps(r))


# ---------------------------------------------------------------- idle connections

async def idle_main(a):
    pids = tree(a.pid)
    rss0 = tree_kib(pids, "VmRSS")
    request = f"GET {a.path} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n\r\n".encode()
    gate = asyncio.Semaphore(200)
    conns, errors = [], []

    async def one():
        async with gate:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
            except OSError as e:
                errors.append(repr(e))
                return
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if not head.startswith(b"HTTP/1.1 200") or not m:
                    raise ValueError(head[:60])
                await reader.readexactly(int(m.group(1)))
                conns.append(writer)
            except (OSError, ValueError, asyncio.IncompleteReadError) as e:
                errors.append(repr(e))
                writer.close()

    start = time.monotonic()
    tasks = [asyncio.ensure_future(one()) for _ in range(a.conns)]
    done, pending = await asyncio.wait(tasks, timeout=a.timeout)
    for t in pending:
        t.cancel()
    opened = time.monotonic() - start
    await asyncio.sleep(a.settle)  # idle: let the server settle with every connection open
    alive = sum(1 for w in conns if not w.is_closing())
    rss1 = tree_kib(pids, "VmRSS")
    for w in conns:  # with a reset: no 10,000 sockets left in TIME_WAIT
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.close()
    await asyncio.sleep(0.2)
    r = {"scenario": "idle_10k", "target": a.target, "kind": "idle", "requested": a.conns,
         "held": alive, "errors": len(errors) + len(pending), "first_errors": errors[:3],
         "open_seconds": round(opened, 2), "rss_before_kib": rss0, "rss_after_kib": rss1,
         "rss_per_conn_kib": round((rss1 - rss0) / alive, 2) if alive else None,
         "ok": alive >= a.conns * 0.99}
    print(json.dumps(r))


def cmd_idle(a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.conns + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
    asyncio.run(idle_main(a))


# ---------------------------------------------------------------- report

UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return round(float(m.group(1)) * UNIT_MS[m.group(2)], 4) if m else None


def search(pattern, text, conv=float):
    m = re.search(pattern, text, re.M)
    return conv(m.group(1)) if m else None


def parse_wrk(text, _log):
    r = {"rps": search(r"^Requests/sec:\s*([\d.]+)", text),
         "requests": search(r"^\s*(\d+) requests in", text, int)}
    for p in (50, 99):
        r[f"p{p}_ms"] = search(rf"^\s*{p}%\s+(\S+)", text, ms)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["socket_errors"] = sum(map(int, m.groups())) if m else 0
    r["non_2xx"] = search(r"Non-2xx or 3xx responses: (\d+)", text, int) or 0
    return r


def parse_h2load(text, log):
    """One or more h2load runs (tls_handshakes runs it in batches)."""
    done = [int(x) for x in re.findall(r"^requests: .*? (\d+) done", text, re.M)]
    r = {"rps": search(r"^finished in [^,]*, ([\d.]+) req/s", text), "requests": sum(done) if done else None}
    err = re.findall(r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    r["socket_errors"] = sum(int(e) + int(t) for _, e, t in err)
    codes = re.findall(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", text)
    r["non_2xx"] = sum(int(a) + int(b) for a, b in codes)
    lat = []
    if log and os.path.exists(log):
        with open(log) as f:
            for line in f:
                cols = line.split("\t")
                if len(cols) >= 3 and cols[2].strip().isdigit():
                    lat.append(int(cols[2]) / 1000.0)
    lat.sort()
    for p in (50, 99):
        r[f"p{p}_ms"] = lat[max(0, -(-p * len(lat) // 100) - 1)] if lat else None
    return r


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    values = [v for v in values if v is not None]
    return {"median": med(values), "min": min(values), "max": max(values)} if values else None


def table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for cells in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                        for i, (c, w) in enumerate(zip(cells, widths))))


def num(v, fmt):
    return "-" if v is None else format(v, fmt)


def fmt_ms(v):
    return "-" if v is None else f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def cmd_report(a):
    with open(a.meta) as f:
        meta = json.load(f)
    reps = meta["reps"]
    runs = []
    if os.path.exists(a.manifest):
        with open(a.manifest) as f:
            for line in f:
                if not line.strip():
                    continue
                rep, scen, target, tool, raw, rc, ticks, hwm, wall_us = line.rstrip("\n").split("\t")
                with open(raw + ".out", errors="replace") as g:
                    text = g.read()
                r = {"rep": int(rep), "scenario": scen, "target": target, "kind": "load", "tool": tool,
                     "exit_code": int(rc)}
                r.update((parse_wrk if tool == "wrk" else parse_h2load)(text, raw + ".log"))
                wall = int(wall_us) / 1e6
                r["wall_s"] = round(wall, 3)
                if scen == "tls_handshakes" and r["requests"]:
                    # batches of h2load: new connections over the loop's wall time
                    r["rps"] = round(r["requests"] / wall, 1)
                cpu_s = int(ticks) / CLK_TCK
                r["server_cpu_s"] = round(cpu_s, 3)
                r["server_cpu_pct"] = round(100 * cpu_s / wall, 1)
                r["server_cpu_s_per_10k_req"] = round(cpu_s / r["requests"] * 1e4, 4) if r["requests"] else None
                r["server_peak_rss_kib"] = int(hwm)
                r["ok"] = r["exit_code"] == 0 and r["rps"] is not None and not r["socket_errors"] \
                    and not r["non_2xx"]
                if not r["ok"]:
                    r["output_tail"] = text[-1500:]
                runs.append(r)
    extra = []
    if os.path.exists(a.extra):
        with open(a.extra) as f:
            extra = [json.loads(line) for line in f if line.strip()]

    load_scen = list(dict.fromkeys(r["scenario"] for r in runs))
    summary = {}
    for s in load_scen:
        row = {}
        for t in ("nginx", "gateway"):
            rs = [r for r in runs if r["scenario"] == s and r["target"] == t]
            if rs:
                row[t] = {"rps": spread([r["rps"] for r in rs]),
                          "p50_ms": med([r["p50_ms"] for r in rs]), "p99_ms": med([r["p99_ms"] for r in rs]),
                          "server_cpu_pct": med([r["server_cpu_pct"] for r in rs]),
                          "server_cpu_s_per_10k_req": med([r["server_cpu_s_per_10k_req"] for r in rs]),
                          "server_peak_rss_kib": max(r["server_peak_rss_kib"] for r in rs),
                          "all_ok": all(r["ok"] for r in rs)}
        by_rep = {}
        for r in runs:
            if r["scenario"] == s:
                by_rep.setdefault(r["rep"], {})[r["target"]] = r
        for key in ("rps", "p50_ms", "p99_ms", "server_cpu_s_per_10k_req", "server_peak_rss_kib"):
            row[f"ratio_{key}"] = spread([d["gateway"][key] / d["nginx"][key] for d in by_rep.values()
                                          if len(d) == 2 and d["nginx"][key] and d["gateway"][key] is not None])
        summary[s] = row

    transfers = [e for e in extra if e.get("kind") == "transfer"]
    for s in dict.fromkeys(e["scenario"] for e in transfers):
        row = {}
        for t in ("nginx", "gateway"):
            rs = [e for e in transfers if e["scenario"] == s and e["target"] == t]
            if rs:
                row[t] = {"mib_per_s": spread([e["mib_per_s"] for e in rs]),
                          "server_cpu_s": med([e["server_cpu_s"] for e in rs]),
                          "rss_growth_kib_max": max(e["rss_growth_kib"] for e in rs),
                          "all_ok": all(e["ok"] for e in rs)}
        by_rep = {}
        for e in transfers:
            if e["scenario"] == s:
                by_rep.setdefault(e["rep"], {})[e["target"]] = e
        row["ratio_mib_per_s"] = spread([d["gateway"]["mib_per_s"] / d["nginx"]["mib_per_s"]
                                         for d in by_rep.values() if len(d) == 2 and d["nginx"]["mib_per_s"]
                                         and d["gateway"]["mib_per_s"] is not None])
        summary[s] = row
    idle = {e["target"]: e for e in extra if e.get("kind") == "idle"}
    if idle:
        row = dict(idle)
        if "nginx" in idle and "gateway" in idle and idle["nginx"]["rss_per_conn_kib"] and \
                idle["gateway"]["rss_per_conn_kib"] is not None:
            row["ratio_rss_per_conn"] = round(idle["gateway"]["rss_per_conn_kib"] /
                                              idle["nginx"]["rss_per_conn_kib"], 2)
        summary["idle_10k"] = row

    with open(a.out, "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": runs + extra}, f, indent=2)
        f.write("\n")

    def g(d, *keys):
        for k in keys:
            d = d.get(k) if isinstance(d, dict) else None
        return d

    def ratio(d, full=True):
        if not d:
            return "-"
        return f"{d['median']:.2f}" + (f" ({d['min']:.2f}-{d['max']:.2f})" if full and reps > 1 else "")

    def pair(row, fmt, *keys):
        return "/".join(fmt(g(row, t, *keys)) for t in ("nginx", "gateway"))

    def rate(row, t, key="rps"):
        d = row.get(t)
        return num(g(d, key, "median"), ",.0f") + ("!" if d and not d["all_ok"] else "")

    what = f"medians of {reps} reps, (min-max) of the per-rep ratios" if reps > 1 else "1 rep"
    print(f"\n{meta['duration_s']}s per run, warmup {meta['warmup_s']}s, {meta['conns']} conns, "
          f"{meta['workers']} worker(s) each, {what}; load average {meta['load_average_start']} -> "
          f"{meta['load_average_end']}; pinned: {meta['pinning']}\n")
    if load_scen:
        rows = []
        for s in load_scen:
            row = summary[s]
            rows.append([s, rate(row, "nginx"), rate(row, "gateway"), ratio(row.get("ratio_rps")),
                         pair(row, fmt_ms, "p50_ms"), pair(row, fmt_ms, "p99_ms"),
                         ratio(row.get("ratio_p99_ms"), False),
                         pair(row, lambda v: num(v, ".3f"), "server_cpu_s_per_10k_req"),
                         ratio(row.get("ratio_server_cpu_s_per_10k_req"), False),
                         pair(row, lambda v: num(v and v / 1024, ".1f"), "server_peak_rss_kib")])
        table(["scenario", "nginx req/s", "gw req/s", "ratio gw/nginx", "p50 ms n/g", "p99 ms n/g",
               "p99 ratio", "cpu-s/10k n/g", "cpu ratio", "peak RSS MiB n/g"], rows)
        print("(cpu-s/10k: server CPU seconds per 10,000 requests, lower is better; peak RSS: VmHWM summed over"
              " the server's processes; tls_handshakes: new TLS connections/s, one request each)")
    tr = [s for s in summary if s.endswith("_100m") or s.startswith(("upload", "download"))]
    if tr:
        print()
        table(["transfer", "nginx MiB/s", "gw MiB/s", "ratio gw/nginx", "server cpu-s n/g",
               "RSS growth MiB n/g"],
              [[s, rate(summary[s], "nginx", "mib_per_s"), rate(summary[s], "gateway", "mib_per_s"),
                ratio(summary[s].get("ratio_mib_per_s")),
                pair(summary[s], lambda v: num(v, ".2f"), "server_cpu_s"),
                pair(summary[s], lambda v: num(v and v / 1024, ".1f"), "rss_growth_kib_max")] for s in tr])
        print("(RSS growth: peak RSS during the transfer minus RSS before it, worst rep)")
    if idle:
        print()
        table(["idle conns", "held", "RSS fresh MiB", "RSS held MiB", "KiB/conn", "errors"],
              [[t, e["held"], num(e["rss_before_kib"] / 1024, ".1f"), num(e["rss_after_kib"] / 1024, ".1f"),
                num(e["rss_per_conn_kib"], ".2f"), e["errors"]] for t, e in idle.items()])
        if "ratio_rss_per_conn" in summary["idle_10k"]:
            print(f"RSS per idle connection, ratio gw/nginx: {summary['idle_10k']['ratio_rss_per_conn']:.2f}")
    if meta.get("rss_at_start_kib"):
        print("\nRSS right after start (before any load): " + ", ".join(
            f"{k} {v / 1024:.1f} MiB" for k, v in meta["rss_at_start_kib"].items()))
    for r in runs:
        if not r["ok"]:
            print(f"! rep {r['rep']} {r['scenario']} {r['target']}: exit {r['exit_code']}, "
                  f"{r['socket_errors']} socket errors, {r['non_2xx']} non-2xx")
    for e in extra:
        if not e.get("ok"):
            print(f"! {e['scenario']} {e['target']}: {e.get('error') or e.get('first_errors') or 'failed'}")
    for k, v in meta.get("skipped", {}).items():
        print(f"skipped {k}: {v}")
    print(f"\nJSON: {a.out}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ports")
    s.add_argument("n", type=int)
    s.set_defaults(fn=cmd_ports)
    s = sub.add_parser("mint-hs256")
    s.add_argument("secret")
    s.set_defaults(fn=cmd_mint)
    s = sub.add_parser("tree-rss")
    s.add_argument("pid", type=int)
    s.set_defaults(fn=cmd_tree_rss)
    s = sub.add_parser("json-field")
    s.add_argument("key")
    s.set_defaults(fn=cmd_json_field)
    s = sub.add_parser("describe")
    s.set_defaults(fn=cmd_describe)
    s = sub.add_parser("sink")
    s.add_argument("port", type=int)
    s.set_defaults(fn=cmd_sink)
    s = sub.add_parser("transfer")
    for name in ("--scenario", "--target", "--url", "--file", "--body-out"):
        s.add_argument(name, required=name != "--file", default="")
    s.add_argument("--mode", choices=("upload", "download"), required=True)
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--rep", type=int, default=1)
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--timeout", type=int, default=60)
    s.add_argument("pin", nargs="*", help="taskset prefix for curl")
    s.set_defaults(fn=cmd_transfer)
    s = sub.add_parser("idle")
    s.add_argument("--target", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--conns", type=int, default=10000)
    s.add_argument("--path", default="/static/1k.bin")
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--settle", type=float, default=1.0)
    s.set_defaults(fn=cmd_idle)
    s = sub.add_parser("report")
    for name in ("--meta", "--manifest", "--extra", "--out"):
        s.add_argument(name, required=True)
    s.set_defaults(fn=cmd_report)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
