// The page's only way to the agent: the public HTTP API (same origin), authenticated by the
// session cookie, with the CSRF token on every mutating request. Errors come back as the
// API's own `ApiError` ({kind, message, causes}), shown to the user as they are.

export interface ApiErrorBody {
  kind: string;
  message: string;
  causes?: string[];
  details?: unknown;
}

export class ApiError extends Error {
  constructor(public status: number, public body: ApiErrorBody) {
    super([body.message, ...(body.causes ?? [])].join(": "));
  }
  get kind(): string {
    return this.body.kind;
  }
}

let csrf = "";
let onUnauthorized: () => void = () => {};

export function setCsrf(token: string): void {
  csrf = token;
}
export function csrfToken(): string {
  return csrf;
}
export function whenUnauthorized(f: () => void): void {
  onUnauthorized = f;
}

async function errorOf(r: Response): Promise<ApiError> {
  let body: ApiErrorBody;
  try {
    body = await r.json();
    if (typeof body?.message !== "string") throw new Error("not an ApiError");
  } catch {
    body = { kind: "internal", message: `HTTP ${r.status} ${r.statusText}` };
  }
  return new ApiError(r.status, body);
}

export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (method !== "GET") headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let r: Response;
  try {
    r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch (e) {
    throw new ApiError(0, { kind: "unavailable", message: `cannot reach the agent: ${e}` });
  }
  if (!r.ok) {
    const e = await errorOf(r);
    if (r.status === 401 && path !== "/v1/session") onUnauthorized();
    throw e;
  }
  if (r.status === 204 || r.status === 202) {
    const text = await r.text();
    return (text ? JSON.parse(text) : {}) as T;
  }
  return (await r.json()) as T;
}

// ---- wire types (crates/corral-model) ----

export type PowerState = "halted" | "running" | "paused" | "creating" | "deleting" | string;

export interface Disk {
  device: string;
  size_bytes: number;
  format: string;
  bus: string;
  sr: string;
  path: string;
}
export interface Nic {
  device: string;
  network: string;
  model: string;
  mac: string;
}
export interface VmInfo {
  id: string;
  name: string;
  host: string;
  power_state: PowerState;
  description: string;
  vcpus: number;
  memory_bytes: number;
  autostart: boolean;
  cpu_weight: number;
  firmware: string;
  tpm: boolean;
  disks: Disk[];
  cdroms: { device: string; bus: string; media: string | null }[];
  nics: Nic[];
  kernel_boot: { kernel: string; initrd?: string | null; cmdline?: string | null } | null;
  boot_device: string;
  template: string | null;
  is_template: boolean;
  pid: number | null;
  vnc: string | null;
  cpu_weight_status: unknown;
  created_at_ms: number;
}
export interface Task {
  id: string;
  vm_id?: string | null;
  vm_name?: string | null;
  operation: string;
  state: "running" | "succeeded" | "failed" | "cancelled";
  phase: string;
  progress: number;
  bytes_done?: number | null;
  bytes_total?: number | null;
  started_at_ms: number;
  finished_at_ms?: number | null;
  result?: string | null;
  error?: ApiErrorBody | null;
}
export interface EventEnvelope {
  seq: number;
  time_ms: number;
  type: "vm_created" | "vm_deleted" | "vm_changed" | "power_state_changed" | "task_updated" | "host_changed";
  vm?: string;
  host?: string;
  id?: string;
  from?: string;
  to?: string;
  task?: Task;
}

/** Operations that can be cancelled (corral_model::task::Operation::cancellable). */
export const CANCELLABLE = new Set(["vm.copy", "vm.install", "vm.import", "vm.export", "vm.shutdown"]);

/**
 * The one stream of typed updates: `/v1/events` (NDJSON) read with fetch, resumed with
 * `?since=` from the last sequence number seen after any break. `onGap` is called when the
 * agent's ring no longer holds what was missed (or nothing was seen yet): the caller reloads.
 */
export function streamEvents(
  onEvent: (e: EventEnvelope) => void,
  onGap: () => void,
  onStatus: (live: boolean) => void,
): () => void {
  let stopped = false;
  let last: number | null = null;
  let controller: AbortController | null = null;
  (async () => {
    let first = true;
    while (!stopped) {
      controller = new AbortController();
      try {
        const q = last === null ? "" : `?since=${last}`;
        let checkGap = last !== null;
        const gapAfterBreak = !first && last === null;
        await followLines(`/v1/events${q}`, controller.signal, () => {
          onStatus(true);
          // After a break with nothing seen, what happened meanwhile is unknown: reload.
          if (gapAfterBreak) onGap();
          first = false;
        }, (line) => {
          const e = JSON.parse(line) as EventEnvelope;
          if (checkGap && last !== null && e.seq > last + 1) onGap();
          checkGap = false;
          if (last !== null && e.seq <= last) return;
          last = e.seq;
          onEvent(e);
        });
      } catch (e) {
        // Logged out: the login page takes over. Otherwise a broken stream: retry.
        if (e instanceof ApiError && e.status === 401) return;
      }
      if (stopped) return;
      onStatus(false);
      await new Promise((res) => setTimeout(res, 1000));
    }
  })();
  return () => {
    stopped = true;
    controller?.abort();
  };
}

/**
 * Read a newline-delimited JSON stream (the event stream, a VM's statistics) until it ends or
 * `signal` aborts: `opened` once the answer is there, `onLine` for each line. A 401 sends the
 * page to its login; any other refusal throws.
 */
export async function followLines(
  path: string,
  signal: AbortSignal,
  opened: () => void,
  onLine: (line: string) => void,
): Promise<void> {
  const r = await fetch(path, { credentials: "same-origin", signal });
  if (r.status === 401) {
    onUnauthorized();
    throw new ApiError(401, { kind: "unauthorized", message: "logged out" });
  }
  if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
  opened();
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.trim()) onLine(line);
    }
  }
}

export function fmtBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
