#!/usr/bin/env python3
"""The live-migration benchmark (issue 10), in one run on one machine:

1. raw reference: two QEMU processes started by hand with the same guest (kernel boot,
   512 MiB, TCG), the target with -incoming defer, migrated over QMP with the same
   parameters corral sets (no bandwidth cap, downtime limit 50 ms); QEMU's own downtime and
   total time;
2. corral: a 3-member etcd and two agents on loopback; the same guest (shared disk) migrated
   back and forth with `POST /v1/vms/NAME/migrate`, over TLS and with --insecure-stream;
   downtime and total as the task reports them (QEMU's figures);
3. --with-storage: a 1 GiB raw disk with 256 MiB of random data; bytes the mirror moved
   (the task's disk_bytes and the loopback interface's byte counter) against the allocated
   data, and the total time against the shared-storage case.

Ratios against the raw reference are printed; with --doc FILE the table goes under
"## Live migration (issue 10)".
"""
import argparse, json, os, shutil, signal, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from bench import Api, median, wait_for  # noqa: E402
from pool_bench import Agent, Etcd  # noqa: E402

MEM = 512


def qmp(path, *cmds):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rw")
    f.readline()
    out = []
    for c in ({"execute": "qmp_capabilities"},) + cmds:
        f.write(json.dumps(c) + "\n")
        f.flush()
        while True:
            line = json.loads(f.readline())
            if "return" in line or "error" in line:
                out.append(line)
                break
    s.close()
    return out[1:]


def raw_once(kernel, initrd, root, i):
    d = os.path.join(root, f"raw{i}")
    os.makedirs(d)
    base = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max",
            "-m", str(MEM), "-nodefaults", "-display", "none", "-kernel", kernel, "-initrd", initrd,
            "-append", "console=ttyS0 no_timer_check corral.count", "-daemonize"]
    src, dst = os.path.join(d, "src.sock"), os.path.join(d, "dst.sock")
    subprocess.run(base + ["-qmp", f"unix:{src},server=on,wait=off", "-pidfile", f"{d}/src.pid",
                           "-serial", f"file:{d}/src.log"], check=True)
    subprocess.run(base + ["-qmp", f"unix:{dst},server=on,wait=off", "-pidfile", f"{d}/dst.pid",
                           "-serial", f"file:{d}/dst.log", "-incoming", "defer"], check=True)
    wait_for(lambda: "CORRAL-COUNT 2" in open(f"{d}/src.log", errors="replace").read(), 120, 0.2,
             "raw guest boot")
    r = qmp(dst, {"execute": "migrate-incoming", "arguments": {"uri": "tcp:127.0.0.1:0"}},
            {"execute": "query-migrate"})
    port = r[1]["return"]["socket-address"][0]["port"]
    qmp(src, {"execute": "migrate-set-parameters",
              "arguments": {"max-bandwidth": 100 << 30, "downtime-limit": 50}},
        {"execute": "migrate", "arguments": {"uri": f"tcp:127.0.0.1:{port}"}})
    while True:
        info = qmp(src, {"execute": "query-migrate"})[0]["return"]
        if info.get("status") in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.05)
    for p in ("src", "dst"):
        try:
            os.kill(int(open(f"{d}/{p}.pid").read()), signal.SIGKILL)
        except Exception:
            pass
    assert info["status"] == "completed", info
    return info["downtime"], info["total-time"]


def lo_bytes():
    return int(open("/sys/class/net/lo/statistics/tx_bytes").read())


def migrate(api, name, to, **extra):
    st, ans = api.request("POST", f"/v1/vms/{name}/migrate", dict(to=to, **extra))
    assert st == 202, (st, ans)
    task = ans["task"]
    while True:
        _, t = api.request("GET", f"/v1/tasks/{task}")
        if t["state"] != "running":
            break
        time.sleep(0.05)
    assert t["state"] == "succeeded", t
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--doc")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="corral-migbench-")
    etcd = agents = None
    try:
        raw = [raw_once(a.kernel, a.initrd, root, i) for i in range(a.rounds)]
        etcd = Etcd(root)
        x = Agent(a.corral, root, "xen01", etcd.urls())
        token = open(os.path.join(x.dir, "pool/join-token")).read().strip()
        y = Agent(a.corral, root, "xen02", etcd.urls(), token)
        agents = [x, y]
        shared = os.path.join(root, "shared")
        os.makedirs(shared)
        st, _ = x.api.request("POST", "/v1/srs", {"name": "shared1", "path": shared, "shared": True})
        assert st in (200, 201), st
        wait_for(lambda: len(y.api.request("GET", "/v1/hosts")[1]) == 2, 30, 0.2, "two members")
        vm = {"name": "bench", "vcpus": 1, "memory_bytes": MEM << 20,
              "kernel": a.kernel, "initrd": a.initrd,
              "cmdline": "console=ttyS0 no_timer_check corral.count",
              "disks": [{"size_bytes": 64 << 20, "sr": "shared1"}], "host": "xen01"}
        st, ans = x.api.request("POST", "/v1/vms", vm)
        assert st in (200, 201), (st, ans)
        st, ans = x.api.request("POST", "/v1/vms/bench/actions/start", {})
        assert st == 200, (st, ans)
        time.sleep(20)  # let the guest boot and settle
        res = {"tls": [], "clear": []}
        hosts = ["xen02", "xen01"]
        for i in range(a.rounds * 2):
            kind = "tls" if i % 2 == 0 else "clear"
            t = migrate(x.api, "bench", hosts[i % 2], insecure_stream=(kind == "clear"))
            res[kind].append((t["downtime_ms"], t["total_ms"]))
        # With storage: 1 GiB raw disk, 256 MiB of random data.
        vm2 = dict(vm, name="bench-st", disks=[{"size_bytes": 1 << 30, "format": "raw"}])
        st, ans = x.api.request("POST", "/v1/vms", vm2)
        assert st in (200, 201), (st, ans)
        _, info = x.api.request("GET", "/v1/vms/bench-st")
        owner = info["host"]
        path = info["disks"][0]["path"]
        subprocess.run(["dd", "if=/dev/urandom", f"of={path}", "bs=1M", "count=256",
                        "conv=notrunc"], check=True, capture_output=True)
        alloc = int(subprocess.run(["du", "-B1", path], capture_output=True, text=True).stdout.split()[0])
        x.api.request("POST", "/v1/vms/bench-st/actions/start", {})
        time.sleep(20)
        other = "xen02" if owner == "xen01" else "xen01"
        before = lo_bytes()
        t0 = time.monotonic()
        t = migrate(x.api, "bench-st", other, with_storage=True, insecure_stream=True)
        wall = time.monotonic() - t0
        wire = lo_bytes() - before
        shared_t = migrate(x.api, "bench", hosts[0] if info["host"] else "xen02", insecure_stream=True)
        # The lo counter carries the memory stream and the API too: subtract the memory
        # stream of a shared-storage migration of a guest of the same size.
        disk_wire = wire - (shared_t.get("bytes_total") or 0)

        def row(name, xs):
            d = median([v[0] for v in xs])
            tt = median([v[1] for v in xs])
            return d, tt, f"| {name} | {d:.0f} | {tt:.0f} |"
        rd, rt, r_raw = row("raw QMP migration (reference)", raw)
        td, tt, r_tls = row("corral, TLS stream", res["tls"])
        cd, ct, r_clear = row("corral, --insecure-stream", res["clear"])
        lines = [
            f"{a.rounds} rounds each, medians; idle {MEM} MiB TCG guest, shared storage, loopback.",
            "",
            "| migration | downtime ms | total ms |",
            "|---|---:|---:|",
            r_raw, r_tls, r_clear,
            "",
            f"- downtime ratio (corral TLS / raw): {td / max(rd, 1):.2f} (goal ≤ 1.2); "
            f"--insecure-stream: {cd / max(rd, 1):.2f}",
            f"- total ratio (corral TLS / raw): {tt / max(rt, 1):.2f} (goal ≤ 1.2); "
            f"--insecure-stream: {ct / max(rt, 1):.2f}",
            f"- --with-storage, 1 GiB raw disk with {alloc / 2**20:.0f} MiB allocated: mirror moved "
            f"{(t.get('disk_bytes') or 0) / 2**20:.0f} MiB of the disk (QEMU's count, zeros included); "
            f"bytes on loopback ≈ {max(disk_wire, 0) / 2**20:.0f} MiB beyond the memory stream "
            f"(ratio to allocated {max(disk_wire, 0) / max(alloc, 1):.2f}, goal ≤ 1.1); "
            f"total {t['total_ms']} ms of memory after the mirror, {wall:.1f} s wall",
        ]
        body = "\n".join(lines)
        print(body)
        if a.doc:
            write_section(a.doc, body)
    finally:
        for ag in agents or []:
            ag.stop()
        if etcd:
            etcd.stop()
        subprocess.run(["pkill", "-f", root], check=False)
        shutil.rmtree(root, ignore_errors=True)


def write_section(doc, body):
    title = "## Live migration (issue 10)"
    intro = ("One command: `scripts/bench-migrate.sh [--rounds N]` (release build; "
             "`scripts/bench/migrate_bench.py`).\n\n")
    text = open(doc).read()
    section = f"{title}\n\n{intro}{body}\n"
    if title in text:
        start = text.index(title)
        nxt = text.find("\n## ", start + len(title))
        text = text[:start] + section + (text[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    open(doc, "w").write(text)


if __name__ == "__main__":
    main()
