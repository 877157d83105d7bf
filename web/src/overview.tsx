// The Overview tab: every field of `vm show`, the settings `vm set` changes, devices of a
// halted VM, and charts of the agent's statistics.

import { useEffect, useState } from "preact/hooks";
import { api, ApiError, fmtBytes, followLines, VmInfo } from "./api";
import { model } from "./state";
import { useAction } from "./actions";

function Chart({ label, points, fmt }: { label: string; points: (number | null)[]; fmt: (n: number) => string }) {
  const vals = points.filter((p): p is number => p !== null);
  const max = Math.max(1e-9, ...vals);
  const w = 240;
  const h = 48;
  const step = points.length > 1 ? w / (points.length - 1) : w;
  const d = points
    .map((p, i) => (p === null ? null : `${(i * step).toFixed(1)},${(h - (p / max) * (h - 2)).toFixed(1)}`))
    .filter(Boolean)
    .join(" ");
  const lastVal = vals.length ? vals[vals.length - 1] : null;
  return (
    <div class="chart">
      <div class="chart-label">
        {label}: <b>{lastVal === null ? "not measured" : fmt(lastVal)}</b>
      </div>
      <svg width={w} height={h} viewBox={`0 0 ${w} ${h}`}>
        <polyline points={d} fill="none" stroke="currentColor" stroke-width="1.5" />
      </svg>
    </div>
  );
}

interface Sample {
  at_ms: number;
  cpu_percent: number;
  memory_bytes: number;
  net_rx_bytes_per_s: number | null;
  net_tx_bytes_per_s: number | null;
  disk_read_bytes_per_s: number | null;
  disk_write_bytes_per_s: number | null;
}

/** The last hour: minute points, then the 5 s samples newer than the last minute. */
function lastHour(s: StatsDoc): Sample[] {
  const minute = s.series.find((x) => x.resolution === "1m")?.points.slice(-60) ?? [];
  const fine = s.series.find((x) => x.resolution === "5s")?.points ?? [];
  const lastMinute = minute.length ? minute[minute.length - 1].at_ms : 0;
  return [...minute, ...fine.filter((p) => p.at_ms > lastMinute)];
}

interface StatsDoc {
  series: { resolution: string; points: Sample[] }[];
  not_available: string[];
}

const HOUR_MS = 3_600_000;

function Stats({ vm }: { vm: VmInfo }) {
  const [pts, setPts] = useState<Sample[]>([]);
  const [note, setNote] = useState("");
  useEffect(() => {
    // Pushed, not polled: `?follow=true` sends the statistics, then each new 5 s sample.
    // The stream ends when the VM leaves the member that answers (a migration): ask again,
    // and the pool forwards to the new one.
    let stopped = false;
    let controller: AbortController | null = null;
    (async () => {
      while (!stopped) {
        controller = new AbortController();
        let first = true;
        try {
          await followLines(`/v1/vms/${encodeURIComponent(vm.name)}/stats?follow=true`, controller.signal, () => {}, (line) => {
            if (first) {
              first = false;
              const s = JSON.parse(line) as StatsDoc;
              setPts(lastHour(s));
              setNote(s.not_available.join("; "));
            } else {
              const p = JSON.parse(line) as Sample;
              setPts((old) => [...old.filter((o) => o.at_ms > p.at_ms - HOUR_MS && o.at_ms < p.at_ms), p]);
            }
          });
        } catch (e) {
          // The VM went away, or the session ended.
          if (e instanceof ApiError && e.status === 401) return;
        }
        if (stopped) return;
        await new Promise((res) => setTimeout(res, 1000));
      }
    })();
    return () => {
      stopped = true;
      controller?.abort();
    };
  }, [vm.name]);
  const rate = (n: number) => `${fmtBytes(n)}/s`;
  return (
    <div class="stats">
      <Chart label="CPU" points={pts.map((p) => p.cpu_percent)} fmt={(n) => `${n.toFixed(1)} %`} />
      <Chart label="Memory" points={pts.map((p) => p.memory_bytes)} fmt={fmtBytes} />
      <Chart label="Disk read" points={pts.map((p) => p.disk_read_bytes_per_s)} fmt={rate} />
      <Chart label="Disk write" points={pts.map((p) => p.disk_write_bytes_per_s)} fmt={rate} />
      <Chart label="Network in" points={pts.map((p) => p.net_rx_bytes_per_s)} fmt={rate} />
      <Chart label="Network out" points={pts.map((p) => p.net_tx_bytes_per_s)} fmt={rate} />
      {note && <p class="note">{note}</p>}
    </div>
  );
}

const WEIGHTS: Record<number, string> = { 128: "low", 256: "normal", 512: "high" };

export function Overview({ vm, onTask }: { vm: VmInfo; onTask: (id: string) => void }) {
  const [edit, setEdit] = useState<Record<string, string | boolean>>({});
  const { error, run } = useAction(onTask);
  const n = encodeURIComponent(vm.name);
  const halted = vm.power_state === "halted";
  const [disk, setDisk] = useState({ size: "1", sr: model.inv.srs[0]?.name ?? "" });
  const [net, setNet] = useState(model.inv.networks[0]?.name ?? "default");
  const [iso, setIso] = useState("");
  useEffect(() => setEdit({}), [vm.name]);
  const val = (k: string, d: string | boolean) => (k in edit ? edit[k] : d);
  const field = (k: string, label: string, d: string, type = "text") => (
    <label class="field">
      <span>{label}</span>
      <input
        id={`ov-${k}`}
        type={type}
        value={val(k, d) as string}
        onInput={(e) => setEdit({ ...edit, [k]: (e.target as HTMLInputElement).value })}
      />
    </label>
  );
  const save = () =>
    run(async () => {
      const body: Record<string, unknown> = {};
      if ("description" in edit) body.description = edit.description;
      if ("vcpus" in edit) body.vcpus = Number(edit.vcpus);
      if ("memory" in edit) body.memory_bytes = Math.round(Number(edit.memory) * 1024 * 1024);
      if ("autostart" in edit) body.autostart = edit.autostart;
      if ("cpu_weight" in edit) {
        const w = String(edit.cpu_weight).toLowerCase();
        body.cpu_weight = w === "low" ? 128 : w === "normal" ? 256 : w === "high" ? 512 : Number(w);
      }
      const r = await api<{ task: string }>("PATCH", `/v1/vms/${encodeURIComponent(vm.name)}`, body);
      setEdit({});
      return r;
    });
  return (
    <div class="overview">
      <div class="ov-grid">
        <div>
          <table class="props" data-testid="overview">
            <tbody>
              <tr><th>Name</th><td>{vm.name}</td></tr>
              <tr><th>State</th><td data-testid="ov-state">{vm.power_state}</td></tr>
              <tr><th>Host</th><td data-testid="ov-host">{model.inv.hosts.find((h) => h.id === vm.host)?.name ?? vm.host}</td></tr>
              <tr><th>Template</th><td>{vm.template ?? "–"}{vm.is_template ? " (this VM is a template)" : ""}</td></tr>
              <tr><th>Firmware</th><td>{vm.firmware}{vm.tpm ? ", TPM 2.0" : ""}</td></tr>
              <tr><th>Boot</th><td>{vm.kernel_boot ? `kernel ${vm.kernel_boot.kernel}` : vm.boot_device}</td></tr>
              <tr><th>Disks</th><td>{vm.disks.map((d) => <div key={d.device} class="dev" data-device={d.device}>{d.device}: {fmtBytes(d.size_bytes)} {d.format} on {d.bus}, repository {d.sr}{halted && <button class="link" title="remove the disk and delete its volume" onClick={() => { if (confirm(`Remove ${d.device} of ${vm.name} and delete its volume?`)) run(() => api("DELETE", `/v1/vms/${n}/disks/${d.device}`)); }}>remove</button>}</div>)}{vm.disks.length ? "" : "none"}
                {halted && <div class="dev-add">
                  <input id="ov-disk-size" class="small" type="number" min="1" value={disk.size} onInput={(e) => setDisk({ ...disk, size: (e.target as HTMLInputElement).value })} /> GiB on{" "}
                  <select id="ov-disk-sr" value={disk.sr} onChange={(e) => setDisk({ ...disk, sr: (e.target as HTMLSelectElement).value })}>{model.inv.srs.map((r) => <option value={r.name}>{r.name}</option>)}</select>{" "}
                  <button id="ov-disk-add" onClick={() => run(() => api("POST", `/v1/vms/${n}/disks`, { size_bytes: Math.round(Number(disk.size) * 1073741824), ...(disk.sr ? { sr: disk.sr } : {}) }))}>Add disk</button>
                </div>}</td></tr>
              <tr><th>CD-ROM</th><td>{vm.cdroms.map((c) => <div key={c.device}>{c.device}: {c.media ?? "empty"}{c.media && <button class="link" onClick={() => run(() => api("DELETE", `/v1/vms/${n}/cdrom`))}>eject</button>}</div>)}
                <div class="dev-add">
                  <select id="ov-iso" value={iso} onChange={(e) => setIso((e.target as HTMLSelectElement).value)}><option value="">(ISO library)</option>{model.inv.isos.map((i) => <option value={i.path}>{String(i.name ?? i.path)}</option>)}</select>{" "}
                  <button id="ov-iso-insert" disabled={!iso} onClick={() => run(() => api("POST", `/v1/vms/${n}/cdrom`, { iso }))}>Insert</button>
                </div></td></tr>
              <tr><th>NICs</th><td>{vm.nics.map((x) => <div key={x.device} class="dev" data-device={x.device}>{x.device}: {x.network}, {x.model}, MAC <code>{x.mac}</code>{halted && <button class="link" onClick={() => run(() => api("DELETE", `/v1/vms/${n}/nics/${x.device}`))}>remove</button>}</div>)}{vm.nics.length ? "" : "none"}
                {halted && <div class="dev-add">
                  <select id="ov-nic-network" value={net} onChange={(e) => setNet((e.target as HTMLSelectElement).value)}>{model.inv.networks.map((w) => <option value={w.name}>{w.name}</option>)}</select>{" "}
                  <button id="ov-nic-add" onClick={() => run(() => api("POST", `/v1/vms/${n}/nics`, { network: net }))}>Add NIC</button>
                </div>}</td></tr>
              <tr><th>QEMU</th><td>{vm.pid ? `pid ${vm.pid}` : "–"}{vm.vnc ? `, VNC ${vm.vnc}` : ""}</td></tr>
            </tbody>
          </table>
          <div class="edit">
            {field("description", "Description", vm.description)}
            {field("vcpus", "vCPUs", String(vm.vcpus), "number")}
            {field("memory", "Memory (MiB)", String(Math.round(vm.memory_bytes / 1048576)), "number")}
            {field("cpu_weight", "CPU weight (low, normal, high or 1..65535)", WEIGHTS[vm.cpu_weight] ?? String(vm.cpu_weight))}
            <label class="field check">
              <input
                id="ov-autostart"
                type="checkbox"
                checked={val("autostart", vm.autostart) as boolean}
                onChange={(e) => setEdit({ ...edit, autostart: (e.target as HTMLInputElement).checked })}
              />
              <span>Start on server boot</span>
            </label>
            <button id="ov-save" disabled={!Object.keys(edit).length} onClick={save}>
              Save
            </button>
            {error && <div class="error" id="ov-error">{error}</div>}
          </div>
        </div>
        <Stats vm={vm} />
      </div>
    </div>
  );
}
