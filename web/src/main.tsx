// The corral Administrator Console: log in with the agent's token, then a tree of the pool
// (hosts, VMs with state icons, templates, repositories, networks, ISOs) beside the
// selected VM's actions and tabs (Overview, Graphical Console, Text Console, History).
// Everything goes through the public HTTP API (api.ts) and one event stream (model.ts).

import { render } from "preact";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import "@xterm/xterm/css/xterm.css";
import "./style.css";
import { api, ApiError, CANCELLABLE, csrfToken, fmtBytes, setCsrf, Task, VmInfo, whenUnauthorized } from "./api";
import { Model } from "./model";
import { GraphicalConsole, TextConsole } from "./consoles";
import { Wizard } from "./wizard";

const model = new Model();

function useModel(): number {
  const [v, setV] = useState(model.version);
  useEffect(() => model.subscribe(() => setV(model.version)), []);
  return v;
}

function Login({ onDone }: { onDone: () => void }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState("");
  const submit = async (e: Event) => {
    e.preventDefault();
    setError("");
    try {
      const s = await api<{ csrf: string }>("POST", "/v1/session", { token });
      setCsrf(s.csrf);
      onDone();
    } catch (err) {
      setError(err instanceof ApiError ? err.message : String(err));
    }
  };
  return (
    <form class="login" onSubmit={submit}>
      <h1>corral</h1>
      <p>Log in with the agent's token (STATE_DIR/token on the host).</p>
      <input
        id="token"
        type="password"
        autocomplete="current-password"
        placeholder="token"
        value={token}
        onInput={(e) => setToken((e.target as HTMLInputElement).value)}
      />
      <button type="submit">Log in</button>
      {error && (
        <p class="error" id="login-error" role="alert">
          {error}
        </p>
      )}
    </form>
  );
}

// ---- tree ----

type Row =
  | { kind: "group"; label: string; depth: number }
  | { kind: "vm"; vm: VmInfo; depth: number }
  | { kind: "item"; label: string; detail?: string; depth: number; group: string };

const ROW_H = 24;

const ICON: Record<string, string> = {
  running: "▶",
  paused: "❚❚",
  halted: "■",
};

function buildRows(filter: string): Row[] {
  const f = filter.trim().toLowerCase();
  const match = (s: string) => !f || s.toLowerCase().includes(f);
  const rows: Row[] = [{ kind: "group", label: "Pool", depth: 0 }];
  const host = (model.inv.host?.hostname as string) ?? "this host";
  rows.push({ kind: "group", label: host, depth: 1 });
  const vms = [...model.vms.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const vm of vms) if (!vm.is_template && match(vm.name)) rows.push({ kind: "vm", vm, depth: 2 });
  const group = (label: string, items: { label: string; detail?: string }[], vmItems: VmInfo[] = []) => {
    const shown = items.filter((i) => match(i.label));
    const shownVms = vmItems.filter((v) => match(v.name));
    if (f && !shown.length && !shownVms.length) return;
    rows.push({ kind: "group", label, depth: 1 });
    for (const v of shownVms) rows.push({ kind: "vm", vm: v, depth: 2 });
    for (const i of shown) rows.push({ kind: "item", label: i.label, detail: i.detail, depth: 2, group: label });
  };
  group(
    "Templates",
    model.inv.templates.map((t) => ({ label: t.name })),
    vms.filter((v) => v.is_template),
  );
  group(
    "Storage repositories",
    model.inv.srs.map((s) => ({ label: s.name, detail: s.free_bytes != null ? `${fmtBytes(s.free_bytes)} free` : "" })),
  );
  group(
    "Networks",
    model.inv.networks.map((n) => ({ label: n.name, detail: String(n.kind ?? "") })),
  );
  group(
    "ISO library",
    model.inv.isos.map((i) => ({ label: String(i.name ?? i.path), detail: fmtBytes(i.size_bytes) })),
  );
  return rows;
}

function Tree({ selected, onSelect }: { selected: string | null; onSelect: (n: string) => void }) {
  const version = useModel();
  const [filter, setFilter] = useState("");
  const [scroll, setScroll] = useState(0);
  const [height, setHeight] = useState(600);
  const box = useRef<HTMLDivElement>(null);
  const rows = useMemo(() => buildRows(filter), [version, filter]);
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const ro = new ResizeObserver(() => setHeight(el.clientHeight));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);
  // Only the rows in view (and a margin) exist in the DOM: thousands of VMs stay cheap.
  const first = Math.max(0, Math.floor(scroll / ROW_H) - 10);
  const last = Math.min(rows.length, Math.ceil((scroll + height) / ROW_H) + 10);
  const vmCount = rows.filter((r) => r.kind === "vm").length;
  return (
    <div class="tree-pane">
      <input
        id="filter"
        class="filter"
        placeholder="filter"
        value={filter}
        onInput={(e) => setFilter((e.target as HTMLInputElement).value)}
      />
      <div class="tree-count" data-testid="tree-count">
        {vmCount} VMs shown
      </div>
      <div
        class="tree"
        ref={box}
        role="tree"
        onScroll={(e) => setScroll((e.target as HTMLDivElement).scrollTop)}
      >
        <div style={{ height: `${rows.length * ROW_H}px`, position: "relative" }}>
          {rows.slice(first, last).map((r, i) => {
            const top = (first + i) * ROW_H;
            const style = { top: `${top}px`, paddingLeft: `${8 + r.depth * 14}px` };
            if (r.kind === "vm") {
              const s = r.vm.power_state;
              return (
                <div
                  key={`vm-${r.vm.id}`}
                  role="treeitem"
                  class={`row vm ${selected === r.vm.name ? "selected" : ""}`}
                  style={style}
                  data-vm={r.vm.name}
                  data-state={s}
                  onClick={() => onSelect(r.vm.name)}
                >
                  <span class={`icon ${s}`} title={s}>
                    {r.vm.is_template ? "❏" : ICON[s] ?? "…"}
                  </span>
                  {r.vm.name}
                </div>
              );
            }
            if (r.kind === "group")
              return (
                <div key={`g-${r.label}`} class="row group" style={style}>
                  {r.label}
                </div>
              );
            return (
              <div key={`i-${r.group}-${r.label}`} class="row item" style={style} title={r.detail}>
                {r.label} <span class="detail">{r.detail}</span>
              </div>
            );
          })}
        </div>
      </div>
    </div>
  );
}

// ---- actions ----

function useAction(onTask: (id: string) => void) {
  const [error, setError] = useState("");
  const run = async (f: () => Promise<{ task?: string } | void>) => {
    setError("");
    try {
      const r = await f();
      if (r && r.task) onTask(r.task);
    } catch (e) {
      setError(e instanceof ApiError ? e.message : String(e));
    }
  };
  return { error, run };
}

function Toolbar({ vm, onTask, onDeleted }: { vm: VmInfo; onTask: (id: string) => void; onDeleted: () => void }) {
  const { error, run } = useAction(onTask);
  const n = encodeURIComponent(vm.name);
  const s = vm.power_state;
  const act = (a: string) => run(() => api("POST", `/v1/vms/${n}/actions/${a}?wait=false`));
  const importRef = useRef<HTMLInputElement>(null);
  const running = s === "running";
  const halted = s === "halted";
  return (
    <div class="toolbar">
      <button id="act-start" disabled={!halted || vm.is_template} onClick={() => act("start")}>
        Start
      </button>
      <button id="act-shutdown" disabled={!running} onClick={() => act("shutdown")}>
        Shut down
      </button>
      <button id="act-reboot" disabled={!running} onClick={() => act("reboot")}>
        Reboot
      </button>
      {s === "paused" ? (
        <button id="act-resume" onClick={() => act("resume")}>
          Resume
        </button>
      ) : (
        <button id="act-pause" disabled={!running} onClick={() => act("pause")}>
          Pause
        </button>
      )}
      <button id="act-poweroff" disabled={halted} onClick={() => act("poweroff")}>
        Force off
      </button>
      <span class="sep" />
      <button
        id="act-clone"
        disabled={!halted}
        onClick={() => {
          const name = prompt(`Name of the linked clone of ${vm.name}:`);
          if (name) run(() => api("POST", `/v1/vms/${n}/clone`, { name }));
        }}
      >
        Clone
      </button>
      <button
        id="act-copy"
        disabled={!halted}
        onClick={() => {
          const name = prompt(`Name of the full copy of ${vm.name}:`);
          if (name) run(() => api("POST", `/v1/vms/${n}/copy?wait=false`, { name }));
        }}
      >
        Copy
      </button>
      <button
        id="act-template"
        disabled={!halted || vm.is_template}
        onClick={() => {
          if (confirm(`Convert ${vm.name} to a template? A template cannot start.`))
            run(() => api("POST", `/v1/vms/${n}/convert-to-template`));
        }}
      >
        To template
      </button>
      <a
        id="act-export"
        class={`button ${halted ? "" : "disabled"}`}
        href={halted ? `/v1/vms/${n}/export?format=corral` : undefined}
        download={`${vm.name}.corral`}
        title="Download an export of the halted VM to this computer"
      >
        Export
      </a>
      <button id="act-import" onClick={() => importRef.current?.click()}>
        Import…
      </button>
      <input
        ref={importRef}
        id="import-file"
        type="file"
        accept=".corral,.ova,.xva"
        hidden
        onChange={(e) => {
          const f = (e.target as HTMLInputElement).files?.[0];
          if (!f) return;
          const name = prompt("Name of the imported VM (empty: the archive's):") ?? "";
          run(async () => {
            const q = name ? `?name=${encodeURIComponent(name)}` : "";
            const r = await fetch(`/v1/imports${q}`, {
              method: "PUT",
              body: f,
              headers: { "X-CSRF-Token": csrfToken() },
              credentials: "same-origin",
            });
            const body = await r.json();
            if (!r.ok) throw new ApiError(r.status, body);
            return body;
          });
        }}
      />
      <span class="sep" />
      <button
        id="act-cd-insert"
        disabled={!model.inv.isos.length}
        onClick={() => {
          const names = model.inv.isos.map((i) => i.path).join("\n");
          const iso = prompt(`ISO to insert (path):\n${names}`, model.inv.isos[0]?.path ?? "");
          if (iso) run(() => api("POST", `/v1/vms/${n}/cdrom`, { iso }));
        }}
      >
        Insert CD
      </button>
      <button id="act-cd-eject" onClick={() => run(() => api("DELETE", `/v1/vms/${n}/cdrom`))}>
        Eject CD
      </button>
      <button id="act-tools" onClick={() => run(() => api("POST", `/v1/vms/${n}/tools`))}>
        Tools ISO
      </button>
      <span class="sep" />
      <button
        id="act-delete"
        class="danger"
        onClick={() => {
          if (!confirm(`Delete ${vm.name} and its disks?${halted ? "" : " It will be powered off."}`)) return;
          run(async () => {
            const r = await api<{ task: string }>("DELETE", `/v1/vms/${n}?force=${!halted}`);
            onDeleted();
            return r;
          });
        }}
      >
        Delete
      </button>
      {error && (
        <div class="error" id="action-error" role="alert">
          {error}
        </div>
      )}
    </div>
  );
}

// ---- overview ----

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

function Stats({ vm }: { vm: VmInfo }) {
  const [pts, setPts] = useState<Sample[]>([]);
  const [note, setNote] = useState("");
  useEffect(() => {
    let alive = true;
    // Statistics are sampled every 5 s by the agent and are not on the event bus, so this
    // is the page's one periodic read (docs/console.md says so).
    const load = async () => {
      try {
        const s = await api<{ series: { resolution: string; points: Sample[] }[]; not_available: string[] }>(
          "GET",
          `/v1/vms/${encodeURIComponent(vm.name)}/stats`,
        );
        if (!alive) return;
        const minute = s.series.find((x) => x.resolution === "1m")?.points.slice(-60) ?? [];
        const fine = s.series.find((x) => x.resolution === "5s")?.points ?? [];
        const lastMinute = minute.length ? minute[minute.length - 1].at_ms : 0;
        setPts([...minute, ...fine.filter((p) => p.at_ms > lastMinute)]);
        setNote(s.not_available.join("; "));
      } catch {
        /* the VM went away */
      }
    };
    load();
    const t = setInterval(load, 5000);
    return () => {
      alive = false;
      clearInterval(t);
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

function Overview({ vm, onTask }: { vm: VmInfo; onTask: (id: string) => void }) {
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
              <tr><th>Host</th><td>{vm.host}</td></tr>
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

// ---- history ----

function TaskRow({ t }: { t: Task }) {
  const [err, setErr] = useState("");
  const rate = model.rate(t.id);
  const left = t.bytes_total != null && t.bytes_done != null ? t.bytes_total - t.bytes_done : null;
  const eta = rate && left !== null && rate > 0 ? Math.round(left / rate) : null;
  return (
    <tr class={`task ${t.state}`} data-task={t.id} data-op={t.operation} data-state={t.state}>
      <td>{t.operation}</td>
      <td>{t.vm_name ?? ""}</td>
      <td class="progress-cell">
        <progress max={1} value={t.progress} data-progress={t.progress} />
        <span class="phase">{t.phase}</span>
        {t.bytes_done != null && (
          <span class="bytes">
            {" "}
            {fmtBytes(t.bytes_done)}
            {t.bytes_total != null ? ` of ${fmtBytes(t.bytes_total)}` : ""}
            {rate ? `, ${fmtBytes(rate)}/s` : ""}
            {eta !== null ? `, ETA ${eta} s` : ""}
          </span>
        )}
      </td>
      <td>{t.state}</td>
      <td>{new Date(t.started_at_ms).toLocaleTimeString()}</td>
      <td>
        {t.state === "running" && CANCELLABLE.has(t.operation) && (
          <button
            class="cancel"
            onClick={async () => {
              try {
                await api("POST", `/v1/tasks/${t.id}/cancel`);
              } catch (e) {
                setErr(e instanceof ApiError ? e.message : String(e));
              }
            }}
          >
            Cancel
          </button>
        )}
        {err && <span class="error">{err}</span>}
      </td>
      <td class="task-error">{t.error ? [t.error.message, ...(t.error.causes ?? [])].join(": ") : t.result ?? ""}</td>
    </tr>
  );
}

function History({ vm }: { vm: VmInfo | null }) {
  useModel();
  const tasks = [...model.tasks.values()]
    .filter((t) => !vm || t.vm_id === vm.id || t.vm_name === vm.name)
    .sort((a, b) => b.started_at_ms - a.started_at_ms)
    .slice(0, 200);
  return (
    <table class="history" data-testid="history">
      <thead>
        <tr><th>Operation</th><th>VM</th><th>Progress</th><th>State</th><th>Started</th><th /><th>Result</th></tr>
      </thead>
      <tbody>
        {tasks.map((t) => <TaskRow key={t.id} t={t} />)}
      </tbody>
    </table>
  );
}

// ---- app ----

type Tab = "overview" | "graphical" | "text" | "history";

function Main({ onLogout }: { onLogout: () => void }) {
  useModel();
  const [selected, setSelected] = useState<string | null>(null);
  const [tab, setTab] = useState<Tab>("overview");
  const [wizard, setWizard] = useState(false);
  const [lastTask, setLastTask] = useState<string | null>(null);
  const vm = selected ? model.vms.get(selected) ?? null : null;
  const task = lastTask ? model.tasks.get(lastTask) : undefined;
  const running = vm?.power_state === "running" || vm?.power_state === "paused";
  return (
    <div class="app">
      <header>
        <b>corral</b> Administrator Console
        <span class={`live ${model.live ? "on" : "off"}`} data-testid="live">
          {model.live ? "live" : "reconnecting…"}
        </span>
        <button id="new-vm" onClick={() => setWizard(true)}>
          New VM…
        </button>
        <button
          id="logout"
          onClick={async () => {
            try {
              await api("DELETE", "/v1/session");
            } finally {
              onLogout();
            }
          }}
        >
          Log out
        </button>
      </header>
      <div class="body">
        <Tree selected={selected} onSelect={(n) => setSelected(n)} />
        <main>
          {vm ? (
            <>
              <h2 data-testid="vm-title">
                <span class={`icon ${vm.power_state}`}>{ICON[vm.power_state] ?? "…"}</span> {vm.name}{" "}
                <small>{vm.description}</small>
              </h2>
              <Toolbar vm={vm} onTask={setLastTask} onDeleted={() => setSelected(null)} />
              {task && (
                <div class="last-task" data-testid="last-task" data-state={task.state}>
                  {task.operation}: {task.state} {task.phase}
                  <progress max={1} value={task.progress} />
                  {task.error && <span class="error"> {task.error.message}</span>}
                </div>
              )}
              <nav class="tabs">
                {(["overview", "graphical", "text", "history"] as Tab[]).map((t) => (
                  <button id={`tab-${t}`} class={tab === t ? "active" : ""} onClick={() => setTab(t)}>
                    {{ overview: "Overview", graphical: "Graphical Console", text: "Text Console", history: "History" }[t]}
                  </button>
                ))}
              </nav>
              <section class="tab-body">
                {tab === "overview" && <Overview vm={vm} onTask={setLastTask} />}
                {tab === "graphical" && <GraphicalConsole key={`g-${vm.name}`} vm={vm.name} running={running} />}
                {tab === "text" && <TextConsole key={`t-${vm.name}`} vm={vm.name} running={running} />}
                {tab === "history" && <History vm={vm} />}
              </section>
            </>
          ) : (
            <>
              <h2>All tasks</h2>
              <History vm={null} />
            </>
          )}
        </main>
      </div>
      {wizard && (
        <Wizard
          model={model}
          onClose={() => setWizard(false)}
          onCreated={(name, task) => {
            setWizard(false);
            setSelected(name);
            if (task) setLastTask(task);
          }}
        />
      )}
    </div>
  );
}

function App() {
  const [phase, setPhase] = useState<"checking" | "login" | "app">("checking");
  useEffect(() => {
    whenUnauthorized(() => {
      model.close();
      setPhase("login");
    });
    // A reloaded page with a live session goes straight in.
    api<{ csrf: string }>("GET", "/v1/session")
      .then((s) => {
        setCsrf(s.csrf);
        setPhase("app");
      })
      .catch(() => setPhase("login"));
  }, []);
  useEffect(() => {
    if (phase === "app") {
      model.start().catch(() => {});
      return () => model.close();
    }
  }, [phase]);
  if (phase === "checking") return <div class="loading">…</div>;
  if (phase === "login") return <Login onDone={() => setPhase("app")} />;
  return <Main onLogout={() => setPhase("login")} />;
}

// For the benchmark and tests: the model's last applied event.
(window as any).__corral = model;
render(<App />, document.getElementById("app")!);
