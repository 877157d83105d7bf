#!/usr/bin/env python3
"""The pools benchmark (issue 9), in one run on one machine:

1. a 3-member etcd cluster on loopback and 3 agents (release build) in one pool;
2. COUNT VMs (kernel boot, no disks) created through the API, spread over the 3 members;
3. `GET /v1/vms` p50/p95 on every member (served from the pool view), against the same
   records read straight from etcd (one range read over etcd's JSON gateway) in the same run;
4. a state change on host A seen in `/v1/events` on host B: pause/resume of a running VM on
   A, the time from A's event to B's event (both streams read by this process, one clock);
5. each agent's RSS before the VMs were created and after.

Prints a table; with --doc FILE writes it under "## Pools (issue 9)" in that file.
Usage: pool_bench.py --corral target/release/corral --kernel K --initrd I [--count 5000]
"""
import argparse, base64, concurrent.futures, http.client, json, os, shutil, signal, socket
import subprocess, sys, tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import bench  # noqa: E402
from bench import Api, pct, ms, wait_for  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class Etcd:
    def __init__(self, root, n=3):
        self.procs = []
        self.ports = [(free_port(), free_port()) for _ in range(n)]
        cluster = ",".join(f"e{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(self.ports))
        for i, (c, p) in enumerate(self.ports):
            d = os.path.join(root, f"etcd{i}")
            self.procs.append(subprocess.Popen(
                ["etcd", "--name", f"e{i}", "--data-dir", d,
                 "--listen-client-urls", f"http://127.0.0.1:{c}",
                 "--advertise-client-urls", f"http://127.0.0.1:{c}",
                 "--listen-peer-urls", f"http://127.0.0.1:{p}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
                 "--initial-cluster", cluster, "--initial-cluster-state", "new",
                 "--heartbeat-interval", "50", "--election-timeout", "250",
                 "--quota-backend-bytes", str(4 << 30)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(self.healthy, 30, 0.2, "etcd cluster")

    def url(self, i=0):
        return f"http://127.0.0.1:{self.ports[i][0]}"

    def urls(self):
        return ",".join(self.url(i) for i in range(len(self.ports)))

    def healthy(self):
        try:
            with urllib.request.urlopen(self.url() + "/health", timeout=1) as r:
                return json.load(r).get("health") == "true"
        except Exception:
            return False

    def range_prefix(self, prefix):
        """One range read of every key under prefix (etcd's JSON gateway, by curl): the
        reference. Answers (seconds, number of keys)."""
        key = prefix.encode()
        end = key[:-1] + bytes([key[-1] + 1])
        body = json.dumps({"key": base64.b64encode(key).decode(),
                           "range_end": base64.b64encode(end).decode()})
        out = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{time_total}", "-X", "POST",
                              "-H", "content-type: application/json", "--data", body,
                              self.url() + "/v3/kv/range"], capture_output=True, check=True,
                             text=True).stdout
        raw, t = out.rsplit("\n", 1)
        return float(t), len(json.loads(raw).get("kvs", []))

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


class Agent:
    def __init__(self, corral, root, name, etcd_urls, token=None):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.sock = os.path.join(self.dir, "corral.sock")
        args = [corral, "serve", "--state-dir", self.dir, "--accel", "tcg", "--no-autostart",
                "--etcd", etcd_urls, "--host-name", name,
                "--listen", f"127.0.0.1:{free_port()}"]
        if token:
            args += ["--join-token", token]
        self.log = open(os.path.join(self.dir, "agent.log"), "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        wait_for(lambda: os.path.exists(self.sock), 60, 0.1, f"agent {name}")
        self.api = Api(self.sock)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Events(threading.Thread):
    """Reads one agent's NDJSON event stream; remembers when each power change arrived."""

    def __init__(self, sock, vm):
        super().__init__(daemon=True)
        self.sock, self.vm = sock, vm
        self.seen = {}  # (to_state, n) -> time
        self.counts = {}
        self.ready = threading.Event()

    def run(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.sock)
        s.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        f = s.makefile("rb")
        while f.readline() not in (b"\r\n", b""):
            pass  # headers
        self.ready.set()
        while True:
            line = f.readline()
            if not line:
                return
            t = time.monotonic()
            line = line.strip()
            if not line or not line.startswith(b"{"):
                continue  # chunk sizes
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("type") == "power_state_changed" and ev.get("vm") == self.vm:
                to = ev["to"]
                n = self.counts.get(to, 0)
                self.counts[to] = n + 1
                self.seen[(to, n)] = t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--changes", type=int, default=40)
    ap.add_argument("--doc")
    ap.add_argument("--hold", type=float, default=0,
                    help="keep the pool running this many seconds after the run (to look at it)")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="corral-pool-bench-")
    etcd = Etcd(root)
    agents = []
    try:
        agents.append(Agent(a.corral, root, "h1", etcd.urls()))
        token = open(os.path.join(agents[0].dir, "pool/join-token")).read().strip()
        for name in ("h2", "h3"):
            agents.append(Agent(a.corral, root, name, etcd.urls(), token))
        time.sleep(3)  # first planner reports
        rss_before = [rss_mib(x.proc.pid) for x in agents]

        body = lambda i: {"name": f"vm{i:05d}", "kernel": a.kernel, "initrd": a.initrd,
                          "cmdline": "console=ttyS0 no_timer_check", "memory_bytes": 64 << 20,
                          "vcpus": 1, "disks": [], "nics": []}

        def worker(k):
            api = Api(agents[k % 3].sock)
            for i in range(k, a.count, 6):
                st, resp = api.request("POST", "/v1/vms", body(i))
                if st != 201:
                    raise SystemExit(f"create {i}: {st} {resp}")

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            list(ex.map(worker, range(6)))
        create_s = time.perf_counter() - t0
        print(f"created {a.count} VMs over 3 members in {create_s:.1f} s")
        for x in agents:
            wait_for(lambda: len(x.api.request("GET", "/v1/vms")[1]) >= a.count, 120, 0.5,
                     "every member to list every VM")
        time.sleep(5)
        rss_after = [rss_mib(x.proc.pid) for x in agents]

        # Both sides timed by curl (time to the last byte): Python's http.client reading a
        # few MB would be the bottleneck, not the agent.
        def curl_list(sock):
            out = subprocess.run(["curl", "-s", "--unix-socket", sock, "-o", "/dev/null", "-w",
                                  "%{http_code} %{time_total} %{size_download}",
                                  "http://corral/v1/vms"], capture_output=True, check=True,
                                 text=True).stdout.split()
            assert out[0] == "200", out
            return float(out[1]), int(out[2])
        lists, size = [], 0
        for x in agents:
            times = []
            for _ in range(a.requests):
                t, size = curl_list(x.sock)
                times.append(t)
            lists.append(times)
        ref = []
        for _ in range(max(5, a.requests // 10)):
            t, n = etcd.range_prefix("vms/")
            ref.append(t)
        assert n >= a.count, n

        # Events: pause/resume a running VM on h1, seen on h2.
        A, B = agents[0], agents[1]
        st, resp = A.api.request("POST", "/v1/vms", dict(body(999999), name="evt", memory_bytes=128 << 20))
        assert st == 201, resp
        st, resp = A.api.request("POST", "/v1/vms/evt/actions/start")
        assert st == 200, resp
        ea, eb = Events(A.sock, "evt"), Events(B.sock, "evt")
        ea.start(); eb.start(); ea.ready.wait(5); eb.ready.wait(5)
        time.sleep(1)
        for _ in range(a.changes):
            for act in ("pause", "resume"):
                st, resp = A.api.request("POST", f"/v1/vms/evt/actions/{act}")
                assert st == 200, resp
                time.sleep(0.05)
        time.sleep(2)
        delays = []
        for key, ta in ea.seen.items():
            tb = eb.seen.get(key)
            if tb is not None:
                delays.append(tb - ta)
        missing = len(ea.seen) - len(delays)
        A.api.request("POST", "/v1/vms/evt/actions/poweroff")

        rows = []
        for x, times in zip(agents, lists):
            p50, p95 = ms(pct(times, 50)), ms(pct(times, 95))
            rows.append((f"`GET /v1/vms`, {a.count} VMs, on {os.path.basename(x.dir)} (p50 / p95)",
                         f"{p50:.1f} / {p95:.1f} ms", f"{ms(pct(ref, 50)):.1f} ms",
                         f"{p50 / ms(pct(ref, 50)):.2f}", "p50 ≤ 20 ms",
                         "pass" if p50 <= 20 else "FAIL"))
        ep50, ep95 = ms(pct(delays, 50)), ms(pct(delays, 95))
        rows.append((f"power change on h1 seen on h2 ({len(delays)} changes; {missing} not seen)",
                     f"p50 {ep50:.1f} / p95 {ep95:.1f} ms", "-", "-", "p95 ≤ 200 ms",
                     "pass" if ep95 <= 200 and missing == 0 else "FAIL"))
        for x, b, r in zip(agents, rss_before, rss_after):
            rows.append((f"RSS of {os.path.basename(x.dir)}, {a.count} pool VMs",
                         f"{r:.1f} MiB", f"{b:.1f} MiB (empty pool)", f"{r / b:.2f}",
                         "≤ 64 MiB", "pass" if r <= 64 else "FAIL"))
        load = open("/proc/loadavg").read().split()[:3]
        table = ["| measure | figure | reference (same run) | ratio | goal | verdict |",
                 "|---|---|---|---|---|---|"]
        table += ["| " + " | ".join(r) + " |" for r in rows]
        head = (f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
                f"{' '.join(load)} at the end; {a.count} VMs created through the API over the "
                f"3 members in {create_s:.0f} s. `vm list` answers {size} bytes; it and the "
                f"reference, one range read of the same `vms/` records straight from etcd "
                f"(its JSON gateway), are timed by curl to the last byte.")
        out = head + "\n\n" + "\n".join(table) + "\n"
        print(out)
        if a.doc:
            write_section(a.doc, out)
        if a.hold:
            print("holding; sockets:", " ".join(x.sock for x in agents), flush=True)
            time.sleep(a.hold)
    finally:
        for x in agents:
            x.stop()
        etcd.stop()
        # Guests of the run (the event VM) die with their pid files' owners gone.
        subprocess.run(["pkill", "-f", root], check=False)
        shutil.rmtree(root, ignore_errors=True)


def write_section(doc, body):
    bench.write_section(doc, "## Pools (issue 9)", ("One command: `scripts/bench-pool.sh [--count N]` (release build; a 3-member etcd "
             "and 3 agents on loopback; `scripts/bench/pool_bench.py`).\n\n"), body)


if __name__ == "__main__":
    main()
