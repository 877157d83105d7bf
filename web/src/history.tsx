// The History tab: tasks with live progress bars (phase, bytes, rate, ETA), Cancel where the
// operation can be cancelled, and errors in full. Kept current by task events.

import { useEffect, useState } from "preact/hooks";
import { api, ApiError, CANCELLABLE, fmtBytes, Task, VmInfo } from "./api";
import { model, useModel } from "./state";

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

export function History({ vm }: { vm: VmInfo | null }) {
  useModel();
  // The page holds the agent's recent tasks (and every update since); a VM's older tasks
  // come from its own history when its tab opens.
  const vmName = vm?.name;
  useEffect(() => {
    if (vmName) void model.mergeHistory(vmName);
  }, [vmName]);
  const tasks = [...model.tasks.values()]
    .filter((t) => !vm || t.vm_id === vm.id || t.vm_name === vm.name)
    .sort((a, b) => b.started_at_ms - a.started_at_ms)
    // The newest first; a long history is in the API (`corral vm history`), not all on screen.
    .slice(0, vm ? 200 : 50);
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
