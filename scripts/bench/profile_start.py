#!/usr/bin/env python3
"""Where does `POST /v1/vms/NAME/actions/start` spend its time? (diagnostic, not part of the run)

Attaches strace to the agent's threads only (not to QEMU), starts and powers off NAME RUNS
times, and splits each start into phases from syscall timestamps:

  request → spawn     HTTP request's first bytes read until QEMU is spawned (task record, argv, files)
  QEMU init           spawn until the daemonizing parent exits (QEMU initialised)
  cgroup wait         daemonized until the QMP connect: what is left of the cgroup move (it runs
                      in a blocking thread from the moment QEMU writes its pid file, overlapping
                      QEMU's init; `RUST_LOG=corral_agent=debug` logs its own duration) + check
  QMP handshake       connect, greeting, qmp_capabilities
  cont                `cont` sent until its answer arrives
  reply               answer until the HTTP response is written (store writes, events)

Usage: profile_start.py --pid AGENT_PID --sock SOCKET --name VM [--runs 5]
Needs strace; the agent must be idle otherwise.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

LINE = re.compile(r"^(\d+)\s+(\d\d):(\d\d):(\d\d\.\d+) (.*)$")


def ts(m):
    return int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))


def phases(path):
    marks = {}
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            t, call = ts(m), m.group(5)
            if call.startswith("recvfrom(") and '"POST /v1/vms/' in call and "accept" not in marks:
                marks["accept"] = t  # the request's first bytes read
            elif call.startswith(("clone3(", "clone(", "vfork(")) and "spawn" not in marks:
                marks["spawn"] = t
            elif call.startswith("wait4(") and "WIFEXITED" in call and "spawn" in marks \
                    and "daemonized" not in marks:
                marks["daemonized"] = t
            elif call.startswith("connect(") and "qmp.sock" in call and "connect" not in marks:
                marks["connect"] = t
            elif '"execute\\":\\"cont\\"' in call or '\\"cont\\"' in call:
                marks.setdefault("cont_sent", t)
            elif call.startswith("recvfrom(") and "cont_sent" in marks and "cont_done" not in marks:
                marks["cont_done"] = t
            elif call.startswith("writev(") and "HTTP/1.1 200" in call and "cont_done" in marks \
                    and "reply" not in marks:
                marks["reply"] = t
    need = ["accept", "spawn", "daemonized", "connect", "cont_sent", "cont_done", "reply"]
    if any(k not in marks for k in need):
        return None
    out = {
        "request → spawn (incl. cgroup mkdir + weight)": marks["spawn"] - marks["accept"],
        "QEMU init (spawn → daemonized)": marks["daemonized"] - marks["spawn"],
        "cgroup wait (daemonized → QMP connect)": marks["connect"] - marks["daemonized"],
        "QMP handshake": marks["cont_sent"] - marks["connect"],
        "cont (sent → answered)": marks["cont_done"] - marks["cont_sent"],
        "reply (store, response)": marks["reply"] - marks["cont_done"],
        "total": marks["reply"] - marks["accept"],
    }
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--sock", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    api = bench.Api(a.sock)
    if bench.power_state(api, a.name) != "halted":
        bench.poweroff(api, a.name)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.runs):
            out = os.path.join(tmp, f"strace.{i}")
            tids = [x for x in os.listdir(f"/proc/{a.pid}/task")]
            cmd = ["strace", "-tt", "-s", "200", "-o", out,
                   "-e", "trace=clone,clone3,vfork,wait4,connect,sendto,recvfrom,"
                         "writev,openat,mkdir"]
            for t in tids:
                cmd += ["-p", t]
            st = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # let strace attach
            time.sleep(0.5)  # and let the cgroup rwsem go idle, as before a real start
            t0 = time.perf_counter()
            status, body = api.request("POST", f"/v1/vms/{a.name}/actions/start")
            dt = time.perf_counter() - t0
            time.sleep(0.1)
            st.terminate()
            st.wait(timeout=10)
            if status != 200:
                raise SystemExit(f"start: {status} {body}")
            bench.poweroff(api, a.name)
            ph = phases(out)
            if ph is None:
                print(f"run {i + 1}: could not find every phase in the trace", file=sys.stderr)
                continue
            ph["client-side"] = dt
            rows.append(ph)
            print(f"run {i + 1}: " + ", ".join(f"{k.split(' ')[0]} {v * 1000:.1f}"
                                               for k, v in ph.items()), file=sys.stderr)
    if not rows:
        raise SystemExit("no run could be profiled")
    print(f"\nphase medians over {len(rows)} runs (strace attached to the agent only):\n")
    print("| phase | median ms | min ms | max ms |\n|---|---|---|---|")
    for k in rows[0]:
        xs = [r[k] * 1000 for r in rows]
        print(f"| {k} | {statistics.median(xs):.1f} | {min(xs):.1f} | {max(xs):.1f} |")


if __name__ == "__main__":
    main()
