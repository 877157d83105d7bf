// What the page knows, kept current by the event stream: VMs by name, tasks by id, and the
// host's inventory (templates, repositories, networks, ISOs). Components read it and
// re-render when `version` moves; nothing here polls.

import { api, EventEnvelope, streamEvents, Task, VmInfo } from "./api";

export interface Inventory {
  host: { hostname?: string; host_id?: string; [k: string]: unknown } | null;
  /** The pool's members (`GET /v1/hosts`; a host outside a pool is a pool of one). */
  hosts: HostSummary[];
  templates: { name: string; [k: string]: unknown }[];
  srs: { name: string; path?: string; free_bytes?: number; [k: string]: unknown }[];
  networks: { name: string; kind?: string; [k: string]: unknown }[];
  isos: { name?: string; path: string; size_bytes?: number; [k: string]: unknown }[];
}

export interface HostSummary {
  name: string;
  id: string;
  state: string;
  vms: number;
  vms_running: number;
  memory_total_bytes: number;
  memory_free_bytes: number;
  cpu_cores: number;
  this_host: boolean;
}

export class Model {
  vms = new Map<string, VmInfo>();
  tasks = new Map<string, Task>();
  inv: Inventory = { host: null, hosts: [], templates: [], srs: [], networks: [], isos: [] };
  version = 0;
  live = false;
  /** The last applied event and when (for the update-latency benchmark). */
  lastEvent: { seq: number; type: string; time_ms: number; applied_ms: number } | null = null;
  private listeners = new Set<() => void>();
  private stop: (() => void) | null = null;
  /** Byte counts seen per running task, for rates and ETAs: [time ms, bytes]. */
  rates = new Map<string, [number, number][]>();

  subscribe(f: () => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }
  private changed(): void {
    this.version++;
    for (const f of this.listeners) f();
  }

  async start(): Promise<void> {
    // Open the stream first, then load: a change that lands in between is seen by both.
    this.stop = streamEvents(
      (e) => this.apply(e),
      () => void this.reload(),
      (live) => {
        this.live = live;
        this.changed();
      },
    );
    await this.reload();
  }
  close(): void {
    this.stop?.();
  }

  async reload(): Promise<void> {
    // All reads start at once; the VMs are drawn as soon as they arrive (the tree is the
    // first thing a person looks at), the rest follows.
    const vmsRead = api<VmInfo[]>("GET", "/v1/vms");
    const rest = Promise.all([
      api<Task[]>("GET", "/v1/tasks"),
      api<Inventory["host"]>("GET", "/v1/host"),
      api<Inventory["templates"]>("GET", "/v1/templates"),
      api<Inventory["srs"]>("GET", "/v1/srs"),
      api<Inventory["networks"]>("GET", "/v1/networks"),
      api<Inventory["isos"]>("GET", "/v1/isos"),
      // An agent without the pool routes still has a console: the host alone.
      api<HostSummary[]>("GET", "/v1/hosts").catch(() => [] as HostSummary[]),
    ]);
    const vms = await vmsRead;
    this.vms = new Map(vms.map((v) => [v.name, v]));
    this.changed();
    const [tasks, host, templates, srs, networks, isos, hosts] = await rest;
    // Keep the recent history only: the page shows the tasks of a selection.
    this.tasks = new Map(tasks.slice(-2000).map((t) => [t.id, t]));
    this.inv = { host, hosts, templates, srs, networks, isos };
    this.changed();
  }

  private hostsReload: ReturnType<typeof setTimeout> | null = null;

  /** A member's state or load changed: read the hosts again (one read for a burst). */
  private refreshHosts(): void {
    if (this.hostsReload) return;
    this.hostsReload = setTimeout(async () => {
      this.hostsReload = null;
      try {
        this.inv = { ...this.inv, hosts: await api<HostSummary[]>("GET", "/v1/hosts") };
        this.changed();
      } catch {
        /* the next event tries again */
      }
    }, 200);
  }

  private async refreshVm(name: string): Promise<void> {
    try {
      const vm = await api<VmInfo>("GET", `/v1/vms/${encodeURIComponent(name)}`);
      // Renamed VMs: drop the entry under the old name that carries the same id.
      for (const [n, v] of this.vms) if (v.id === vm.id && n !== vm.name) this.vms.delete(n);
      this.vms.set(vm.name, vm);
    } catch {
      this.vms.delete(name);
    }
    this.changed();
  }

  apply(e: EventEnvelope): void {
    this.lastEvent = { seq: e.seq, type: e.type, time_ms: e.time_ms, applied_ms: Date.now() };
    switch (e.type) {
      case "power_state_changed": {
        const vm = e.vm ? this.vms.get(e.vm) : undefined;
        // Show the new state at once; the refresh brings the rest (pid, VNC address).
        if (vm && e.to) this.vms.set(vm.name, { ...vm, power_state: e.to });
        this.changed();
        if (e.vm) void this.refreshVm(e.vm);
        break;
      }
      case "vm_created":
      case "vm_changed":
        if (e.vm) void this.refreshVm(e.vm);
        break;
      case "vm_deleted":
        for (const [n, v] of this.vms) if (v.id === e.id || n === e.vm) this.vms.delete(n);
        this.changed();
        break;
      case "host_changed":
        this.refreshHosts();
        break;
      case "task_updated":
        if (e.task) {
          const t = e.task;
          this.tasks.set(t.id, t);
          if (t.state === "running" && t.bytes_done != null) {
            const r = this.rates.get(t.id) ?? [];
            r.push([e.time_ms, t.bytes_done]);
            this.rates.set(t.id, r.slice(-10));
          } else if (t.state !== "running") this.rates.delete(t.id);
          this.changed();
        }
        break;
    }
  }

  /** Add a VM's whole history (`GET /v1/vms/NAME/history`) to the tasks; newer states win. */
  async mergeHistory(name: string): Promise<void> {
    try {
      const tasks = await api<Task[]>("GET", `/v1/vms/${encodeURIComponent(name)}/history`);
      for (const t of tasks) if (!this.tasks.has(t.id)) this.tasks.set(t.id, t);
      this.changed();
    } catch {
      /* the VM went away */
    }
  }

  /** Bytes per second of a running task over its last updates, or null. */
  rate(id: string): number | null {
    const r = this.rates.get(id);
    if (!r || r.length < 2) return null;
    const [t0, b0] = r[0];
    const [t1, b1] = r[r.length - 1];
    if (t1 <= t0 || b1 < b0) return null;
    return ((b1 - b0) * 1000) / (t1 - t0);
  }
}
