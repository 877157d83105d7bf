#!/usr/bin/env python3
"""Measurements for the issue-2 host-agent benchmark (driven by scripts/bench-agent.sh).

Each subcommand measures one thing and merges its figures into a JSON results file; `report`
prints the summary table and writes the "## Host agent (issue 2)" section of docs/benchmarks.md.
Standard library only. Every wait has a timeout.
"""

import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time

SECTION = "## Host agent (issue 2)"


# --- small helpers ---------------------------------------------------------------------------

def log(msg):
    print(msg, file=sys.stderr, flush=True)


def median(xs):
    return statistics.median(xs)


def pct(xs, p):
    """Nearest-rank percentile."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def ms(seconds):
    return seconds * 1000.0


def merge_results(path, key, value):
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data[key] = value
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over an AF_UNIX socket; one connection reused for many requests."""

    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Api:
    def __init__(self, sock, timeout=120):
        self.sock = sock
        self.timeout = timeout
        self.conn = UnixHTTPConnection(sock, timeout)

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if data is not None else {}
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, ConnectionError, BrokenPipeError):
                # Server closed an idle keep-alive connection: reconnect once.
                self.conn.close()
                self.conn = UnixHTTPConnection(self.sock, self.timeout)
                if attempt:
                    raise
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return resp.status, payload


def wait_for(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def power_state(api, name):
    status, body = api.request("GET", f"/v1/vms/{name}")
    if status != 200:
        raise SystemExit(f"GET /v1/vms/{name}: {status} {body}")
    return body["power_state"]


def poweroff(api, name):
    status, body = api.request("POST", f"/v1/vms/{name}/actions/poweroff")
    if status != 200:
        raise SystemExit(f"poweroff {name}: {status} {body}")
    wait_for(lambda: power_state(api, name) == "halted", 30, what=f"{name} halted")


# --- QMP (reference side) --------------------------------------------------------------------

class Qmp:
    def __init__(self, path, timeout=30):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.f = self.s.makefile("rwb", buffering=0)
        self.greeting = self._read()
        if "QMP" not in self.greeting:
            raise RuntimeError(f"unexpected QMP greeting {self.greeting}")

    def _read(self):
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError("QMP closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, cmd, args=None):
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"{cmd}: {reply['error']}")
        return reply.get("return")

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def connect_qmp(path, deadline):
    """Connect, polling every millisecond until the socket accepts (normally the first try)."""
    while True:
        try:
            return Qmp(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_logged_argv(qemu_log):
    """The last command line corral logged in DIR/run/<id>/qemu.log."""
    line = None
    with open(qemu_log) as f:
        for l in f:
            if l.startswith("--- corral: starting QEMU at unix time"):
                line = l
    if line is None:
        raise SystemExit(f"no command line logged in {qemu_log}")
    m = re.match(r"--- corral: starting QEMU at unix time \d+: (.*)$", line.strip())
    if m is None:
        raise SystemExit(f"cannot parse the logged command line: {line!r}")
    return shlex.split(m.group(1))


# --- subcommands -----------------------------------------------------------------------------

class CorralApiStart:
    """One `POST /v1/vms/NAME/actions/start` (returns after QMP `cont`: the vCPUs run)."""

    label = "corral API start"

    def __init__(self, a):
        self.api = Api(a.sock)
        self.name = a.name
        if power_state(self.api, self.name) != "halted":
            poweroff(self.api, self.name)

    def once(self):
        t0 = time.perf_counter()
        status, body = self.api.request("POST", f"/v1/vms/{self.name}/actions/start")
        dt = time.perf_counter() - t0
        if status != 200:
            raise SystemExit(f"start {self.name}: {status} {body}")
        if body["vm"]["power_state"] != "running":
            raise SystemExit(f"start returned with power_state {body['vm']['power_state']!r}")
        poweroff(self.api, self.name)
        return dt, ""


class CorralCliStart(CorralApiStart):
    """One `corral vm start NAME` process, spawn to exit."""

    label = "corral vm start (CLI)"

    def __init__(self, a):
        super().__init__(a)
        self.corral = a.corral
        self.sock = a.sock

    def once(self):
        t0 = time.perf_counter()
        p = subprocess.run([self.corral, "--connect", self.sock, "vm", "start", self.name],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"corral vm start: {p.stderr.decode()}")
        if power_state(self.api, self.name) != "running":
            raise SystemExit("VM not running after corral vm start")
        poweroff(self.api, self.name)
        return dt, ""


class RawQemuStart:
    """Reference: spawn qemu-system-x86_64 with the argv corral logged (its run dir moved to a
    scratch dir), until QMP answers qmp_capabilities + query-status."""

    label = "raw QEMU spawn → QMP"

    def __init__(self, a):
        argv = read_logged_argv(a.qemu_log)
        run_dir = os.path.dirname(os.path.abspath(a.qemu_log))
        os.makedirs(a.scratch, exist_ok=True)
        argv = [x.replace(run_dir, a.scratch) for x in argv]
        self.argv = argv
        args = argv[1:]
        self.qmp_path = self.pidfile = None
        for i, x in enumerate(args):
            if x == "-pidfile":
                self.pidfile = args[i + 1]
            m = re.search(r"path=([^,]*qmp[^,]*)", x)
            if x.startswith("socket,") and m and self.qmp_path is None and args[i - 1] == "-chardev":
                self.qmp_path = m.group(1)
        if self.qmp_path is None or self.pidfile is None or "-daemonize" not in args:
            raise SystemExit(f"cannot find the QMP socket / pidfile / -daemonize in {argv}")
        with open(os.path.join(a.scratch, "argv.txt"), "w") as f:
            f.write(shlex.join(argv) + "\n")
        self.cont = []

    def once(self):
        for p in (self.qmp_path, self.pidfile):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        t0 = time.perf_counter()
        proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        # -daemonize: the parent exits once QEMU is initialised (monitor socket listening).
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SystemExit("QEMU did not daemonize within 30 s")
        if proc.returncode != 0:
            raise SystemExit(f"QEMU failed: {err.decode()}")
        qmp = connect_qmp(self.qmp_path, time.monotonic() + 30)
        qmp.execute("qmp_capabilities")
        st = qmp.execute("query-status")
        dt = time.perf_counter() - t0
        # Informational: what `cont` adds on top (corral's start includes its `cont`).
        t1 = time.perf_counter()
        qmp.execute("cont")
        dcont = time.perf_counter() - t1
        self.cont.append(dcont)
        if st.get("status") not in ("prelaunch", "paused"):
            log(f"  note: query-status said {st}")
        with open(self.pidfile) as f:
            pid = int(f.read().strip())
        try:
            qmp.execute("quit")
        except RuntimeError:
            pass
        qmp.close()
        deadline = time.monotonic() + 15
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if pid_alive(pid):
            os.kill(pid, 9)
        return dt, f" (+cont {ms(dcont):.2f} ms)"


class VirshStart:
    """One `virsh start DOMAIN` process, spawn to exit; `virsh destroy` afterwards."""

    label = "virsh start"

    def __init__(self, a):
        self.uri, self.domain = a.uri, a.domain
        if self.virsh("domstate", self.domain) != "shut off":
            self.virsh("destroy", self.domain, check=False)

    def virsh(self, *args, check=True):
        p = subprocess.run(["virsh", "-c", self.uri] + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=120)
        if check and p.returncode != 0:
            raise SystemExit(f"virsh {' '.join(args)}: {p.stderr.decode().strip()}")
        return p.stdout.decode().strip()

    def once(self):
        t0 = time.perf_counter()
        self.virsh("start", self.domain)
        dt = time.perf_counter() - t0
        state = self.virsh("domstate", self.domain)
        if state != "running":
            raise SystemExit(f"domain is {state!r} after virsh start")
        self.virsh("destroy", self.domain)
        wait_for(lambda: self.virsh("domstate", self.domain) == "shut off", 30,
                 what="domain shut off")
        return dt, ""


def compare(a, subject, reference, key_s, key_r):
    """Alternate subject and reference run by run (so both see the same background load on a
    shared machine), after one warm-up of each; store both series and their medians."""
    series = {key_s: [], key_r: []}
    for i in range(a.runs + a.warmup):
        order = [(subject, key_s), (reference, key_r)]
        if i % 2:
            order.reverse()
        for m, key in order:
            if m is None:
                continue
            # A real start follows idle time; back-to-back starts hide costs that only the
            # first one after a pause pays (e.g. the RCU grace period of a cgroup move).
            time.sleep(a.settle)
            dt, extra = m.once()
            warm = i < a.warmup
            if not warm:
                series[key].append(dt)
            log(f"  {m.label} #{i + 1}: {ms(dt):.1f} ms{extra}{' (warm-up)' if warm else ''}")
    for m, key in ((subject, key_s), (reference, key_r)):
        if m is None:
            continue
        res = {"runs_ms": [ms(t) for t in series[key]], "median_ms": ms(median(series[key]))}
        if isinstance(m, RawQemuStart):
            res["cont_median_ms"] = ms(median(m.cont[a.warmup:]))
            res["argv"] = m.argv
        merge_results(a.results, key, res)
        print(f"{m.label}: median {res['median_ms']:.1f} ms over {len(series[key])} runs")


def cmd_start_overhead(a):
    subject = CorralApiStart(a)
    # corral must have started the VM once for its argv to be in qemu.log.
    subject.once()
    compare(a, subject, RawQemuStart(a), "api_start", "raw_start")


def cmd_libvirt_compare(a):
    subject = CorralCliStart(a)
    reference = VirshStart(a) if a.domain else None
    compare(a, subject, reference, "cli_start", "virsh_start")

def cmd_create_many(a):
    """Define COUNT halted VMs (kernel boot, no disks) through the API, PARALLEL at a time."""
    body = lambda i: {"name": f"{a.prefix}{i:04d}", "kernel": a.kernel, "initrd": a.initrd,
                      "cmdline": a.cmdline, "memory_bytes": a.memory_mib << 20, "vcpus": 1,
                      "disks": []}
    chunks = [list(range(k, a.count, a.parallel)) for k in range(a.parallel)]

    def worker(idx):
        api = Api(a.sock)
        for i in idx:
            status, resp = api.request("POST", "/v1/vms", body(i))
            if status != 201:
                raise SystemExit(f"create {i}: {status} {resp}")
        return len(idx)

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(a.parallel) as ex:
        done = sum(ex.map(worker, chunks))
    dt = time.perf_counter() - t0
    status, vms = Api(a.sock).request("GET", "/v1/vms")
    merge_results(a.results, "create_many", {"count": done, "seconds": dt, "listed": len(vms)})
    print(f"defined {done} VMs in {dt:.1f} s ({ms(dt) / done:.1f} ms each, {a.parallel} in "
          f"parallel); GET /v1/vms lists {len(vms)}")


def cmd_list_latency(a):
    """p50/p95 of GET /v1/vms over one kept-alive connection."""
    api = Api(a.sock)
    status, vms = api.request("GET", "/v1/vms")  # warm-up, and the count
    if status != 200:
        raise SystemExit(f"GET /v1/vms: {status}")
    times = []
    size = 0
    for _ in range(a.requests):
        t0 = time.perf_counter()
        api.conn.request("GET", "/v1/vms")
        resp = api.conn.getresponse()
        raw = resp.read()
        dt = time.perf_counter() - t0
        if resp.status != 200:
            raise SystemExit(f"GET /v1/vms: {resp.status}")
        size = len(raw)
        times.append(dt)
    # Also time the JSON decode a client does, separately, for context.
    t0 = time.perf_counter()
    json.loads(raw)
    decode = time.perf_counter() - t0
    res = {"vms": len(vms), "requests": a.requests, "p50_ms": ms(pct(times, 50)),
           "p95_ms": ms(pct(times, 95)), "bytes": size, "client_decode_ms": ms(decode)}
    merge_results(a.results, a.key, res)
    print(f"GET /v1/vms with {len(vms)} VMs ({size} bytes): p50 {res['p50_ms']:.2f} ms, "
          f"p95 {res['p95_ms']:.2f} ms over {a.requests} requests")


def cmd_rss(a):
    rss = None
    with open(f"/proc/{a.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])  # kB
    if rss is None:
        raise SystemExit(f"no VmRSS for pid {a.pid}")
    merge_results(a.results, a.key, {"kib": rss, "mib": rss / 1024.0})
    print(f"agent VmRSS ({a.key}): {rss / 1024.0:.1f} MiB")


def cmd_report(a):
    with open(a.results) as f:
        r = json.load(f)
    rows = []  # measure, figure, reference, ratio, goal, verdict

    def row(measure, figure, reference, ratio, goal, ok):
        rows.append((measure, figure, reference, ratio, goal,
                     "—" if ok is None else ("PASS" if ok else "MISS")))

    def mins(key):
        return min(r[key]["runs_ms"])

    if "api_start" in r and "raw_start" in r:
        c, q = r["api_start"]["median_ms"], r["raw_start"]["median_ms"]
        row("Start overhead: `POST …/actions/start` until vCPUs run (median; min)",
            f"{c:.1f} ms; {mins('api_start'):.1f} ms",
            f"raw QEMU spawn → QMP answers: {q:.1f} ms; {mins('raw_start'):.1f} ms",
            f"{c / q:.2f}; {mins('api_start') / mins('raw_start'):.2f}", "≤ 1.10", c / q <= 1.10)
    if "cli_start" in r and "virsh_start" in r:
        c, v = r["cli_start"]["median_ms"], r["virsh_start"]["median_ms"]
        row("Start vs libvirt: `corral vm start` vs `virsh start`, CLI wall (median; min)",
            f"{c:.1f} ms; {mins('cli_start'):.1f} ms",
            f"virsh start: {v:.1f} ms; {mins('virsh_start'):.1f} ms",
            f"{c / v:.3f}; {mins('cli_start') / mins('virsh_start'):.3f}", "≤ 0.25", c / v <= 0.25)
    elif "cli_start" in r:
        c = r["cli_start"]["median_ms"]
        row("Start vs libvirt: `corral vm start`, CLI wall (median)", f"{c:.1f} ms",
            f"libvirt not measured: {r.get('virsh_skipped', 'skipped')}", "—", "≤ 0.25", None)
    if "rss_idle" in r:
        m = r["rss_idle"]["mib"]
        row("Idle agent RSS (fresh state dir, 2 s idle)", f"{m:.1f} MiB", "—",
            "—", "≤ 15 MiB", m <= 15)
    if "rss_1000" in r:
        m = r["rss_1000"]["mib"]
        n = r.get("create_many", {}).get("count", 1000)
        rows.append((f"Idle agent RSS with {n} defined VMs (+1 for the start test)",
                     f"{m:.1f} MiB", "—", "—", "report only (idle goal 15 MiB)",
                     "within 15 MiB" if m <= 15 else "over 15 MiB"))
    if "list_1000" in r:
        l = r["list_1000"]
        row(f"`GET /v1/vms` with {l['vms']} VMs, {l['requests']} requests (p50; p95)",
            f"{l['p50_ms']:.2f} ms; {l['p95_ms']:.2f} ms", "—", "—", "p50 ≤ 5 ms",
            l["p50_ms"] <= 5)

    header = ("Measure", "Figure", "Reference", "Ratio", "Goal", "Result")
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(x) + " |" for x in rows]
    text = "\n".join(table)
    print()
    print(text)

    details = []
    for key, label in (("api_start", "corral API start"), ("raw_start", "raw QEMU → QMP"),
                       ("cli_start", "corral CLI start"), ("virsh_start", "virsh start")):
        if key in r:
            runs = ", ".join(f"{x:.0f}" for x in r[key]["runs_ms"])
            details.append(f"- {label} runs (ms): {runs}")
    if "raw_start" in r:
        details.append(f"- QMP `cont` on the raw reference adds {r['raw_start']['cont_median_ms']:.2f} ms"
                       " (median); corral's figure includes its `cont`")
    if "create_many" in r:
        c = r["create_many"]
        details.append(f"- defining {c['count']} VMs through the API took {c['seconds']:.1f} s "
                       f"({c['seconds'] * 1000 / c['count']:.1f} ms each)")
    if "list_1000" in r:
        l = r["list_1000"]
        details.append(f"- `GET /v1/vms` body: {l['bytes']} bytes; client-side JSON decode "
                       f"{l['client_decode_ms']:.2f} ms (not in the figure)")
    if "list_idle" in r:
        l = r["list_idle"]
        details.append(f"- `GET /v1/vms` with {l['vms']} VM(s): p50 {l['p50_ms']:.2f} ms")

    if a.doc:
        now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        machine = a.machine
        section = [SECTION, "",
                   f"Measured {now} on {machine}; one run, same guest "
                   f"(test guest kernel + initramfs, `{a.guest_cmdline}`), measurements one "
                   f"after the other, each pair alternated run by run with 0.5 s idle before every "
                   f"start. {a.load}", "",
                   "Command:", "", "```", a.command, "```", "", text, ""]
        if details:
            section += details + [""]
        if a.notes and os.path.exists(a.notes):
            with open(a.notes) as f:
                section += [f.read().rstrip(), ""]
        write_section(a.doc, "\n".join(section))
        print(f"\nwrote {SECTION!r} in {a.doc}")


def write_section(doc, body):
    """Replace our section (heading to the next `## ` heading) or append it."""
    if os.path.exists(doc):
        with open(doc) as f:
            lines = f.read().split("\n")
    else:
        lines = ["# Benchmarks", ""]
    start = next((i for i, l in enumerate(lines) if l.strip() == SECTION), None)
    new = body.rstrip("\n").split("\n")
    if start is None:
        while lines and lines[-1] == "":
            lines.pop()
        lines += [""] + new + [""]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        lines[start:end] = new + [""]
    with open(doc + ".tmp", "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    os.replace(doc + ".tmp", doc)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, sock=True):
        sp.add_argument("--results", required=True)
        if sock:
            sp.add_argument("--sock", required=True)
        return sp

    s = common(sub.add_parser("start-overhead"))
    s.add_argument("--name", required=True)
    s.add_argument("--qemu-log", required=True)
    s.add_argument("--scratch", required=True)
    s.add_argument("--runs", type=int, default=10)
    s.add_argument("--warmup", type=int, default=1)
    s.add_argument("--settle", type=float, default=0.5, help="idle seconds before each run")
    s.set_defaults(fn=cmd_start_overhead)

    s = common(sub.add_parser("libvirt-compare"))
    s.add_argument("--name", required=True)
    s.add_argument("--corral", required=True)
    s.add_argument("--domain", help="libvirt domain; without it only corral is measured")
    s.add_argument("--uri", default="qemu:///system")
    s.add_argument("--runs", type=int, default=10)
    s.add_argument("--warmup", type=int, default=1)
    s.add_argument("--settle", type=float, default=0.5, help="idle seconds before each run")
    s.set_defaults(fn=cmd_libvirt_compare)

    s = common(sub.add_parser("create-many"))
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--parallel", type=int, default=4)
    s.add_argument("--prefix", default="bench-")
    s.add_argument("--kernel", required=True)
    s.add_argument("--initrd", required=True)
    s.add_argument("--cmdline", required=True)
    s.add_argument("--memory-mib", type=int, default=256)
    s.set_defaults(fn=cmd_create_many)

    s = common(sub.add_parser("list-latency"))
    s.add_argument("--requests", type=int, default=200)
    s.add_argument("--key", default="list_1000")
    s.set_defaults(fn=cmd_list_latency)

    s = common(sub.add_parser("rss"), sock=False)
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--key", required=True)
    s.set_defaults(fn=cmd_rss)

    s = common(sub.add_parser("report"), sock=False)
    s.add_argument("--doc")
    s.add_argument("--command", default="scripts/bench-agent.sh")
    s.add_argument("--machine", default="")
    s.add_argument("--guest-cmdline", default="")
    s.add_argument("--load", default="", help="a sentence about the machine's load")
    s.add_argument("--notes")
    s.set_defaults(fn=cmd_report)

    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()


def prepend_run(doc, title, intro, heading, body):
    """Put `body` under `### heading` at the top of the section `title` in `doc`, after its
    `intro`, keeping the runs recorded before (a section that keeps its history)."""
    text = open(doc).read()
    run = f"### {heading}\n\n{body.rstrip()}\n\n"
    if title not in text:
        write_section(doc, title, intro, run.rstrip("\n"))
        return
    start = text.index(title) + len(title)
    at = text.index(intro, start) + len(intro) if intro in text[start:] else start + 1
    text = text[:at] + run + text[at:].lstrip("\n")
    open(doc, "w").write(text)


def write_section(doc, title, intro, body):
    """Put `body` under the heading `title` in the markdown file `doc`, replacing the
    section a previous run wrote (the rest of the file stays)."""
    text = open(doc).read()
    section = f"{title}\n\n{intro}{body}\n"
    if title in text:
        start = text.index(title)
        nxt = text.find("\n## ", start + len(title))
        text = text[:start] + section + (text[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    open(doc, "w").write(text)
