// The selected VM's actions. Each request is sent with `wait=false` where the API offers it,
// so its task shows at once (under the toolbar and in History); refusals show the API's message.

import { useRef, useState } from "preact/hooks";
import { api, ApiError, csrfToken, VmInfo } from "./api";

/** `POST /v1/vms/{name}/migrate`'s answer (corral_model::migrate::MigrateAnswer). */
interface MigrateAnswer {
  vm: string;
  to: string;
  mode: string;
  checks: { name: string; ok: boolean; detail: string }[];
  task?: string;
}
import { model } from "./state";

export function useAction(onTask: (id: string) => void) {
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

export function Toolbar({ vm, onTask, onDeleted }: { vm: VmInfo; onTask: (id: string) => void; onDeleted: () => void }) {
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
      <button
        id="act-migrate"
        disabled={model.inv.hosts.length < 2 || vm.is_template}
        title="Move the VM to another host: live when it runs; the pre-checks are shown first"
        onClick={() =>
          run(async () => {
            const others = model.inv.hosts.filter((h) => h.name !== vm.host).map((h) => h.name);
            const to = prompt(`Migrate ${vm.name} to which host? (${others.join(", ")}, or auto)`, others[0] ?? "auto");
            if (!to) return;
            const check = await api<MigrateAnswer>("POST", `/v1/vms/${n}/migrate`, { to, check: true });
            const lines = check.checks.map((c) => `${c.ok ? "ok  " : "FAIL"} ${c.name}: ${c.detail}`).join("\n");
            if (check.checks.some((c) => !c.ok)) {
              alert(`${vm.name} cannot migrate to ${check.to}:\n${lines}`);
              return;
            }
            if (!confirm(`Migrate ${vm.name} to ${check.to}${running ? " live" : ""}?\n${lines}`)) return;
            return api<MigrateAnswer>("POST", `/v1/vms/${n}/migrate`, { to: check.to });
          })
        }
      >
        Migrate…
      </button>
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
