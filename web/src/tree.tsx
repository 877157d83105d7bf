// The tree of the pool: hosts, their VMs with state icons, templates, repositories,
// networks and ISOs, with a filter box. Virtualised: only the rows in view (and a margin)
// are in the DOM, so thousands of VMs cost what forty do.

import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { fmtBytes, VmInfo } from "./api";
import { model, useModel } from "./state";

type Row =
  | { kind: "group"; label: string; depth: number }
  | { kind: "host"; label: string; detail: string; depth: number }
  | { kind: "vm"; vm: VmInfo; depth: number }
  | { kind: "item"; label: string; detail?: string; depth: number; group: string };

const ROW_H = 24;

export const ICON: Record<string, string> = {
  running: "▶",
  paused: "❚❚",
  halted: "■",
};

function buildRows(filter: string): Row[] {
  const f = filter.trim().toLowerCase();
  const match = (s: string) => !f || s.toLowerCase().includes(f);
  const rows: Row[] = [{ kind: "group", label: "Pool", depth: 0 }];
  const vms = [...model.vms.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  // Hosts of the pool with their load, each with its VMs; before the member list has
  // arrived (or without pool routes), this host alone.
  const hosts = model.inv.hosts.length
    ? model.inv.hosts.map((h) => {
        // Counts from the VMs the event stream keeps current; state and memory as the
        // member last published them (re-read on each host_changed event).
        const mine = vms.filter((v) => v.host === h.id && !v.is_template);
        const running = mine.filter((v) => v.power_state !== "halted").length;
        return {
          id: h.id,
          label: h.name,
          detail: `${h.state}, ${running}/${mine.length} running, ${fmtBytes(h.memory_free_bytes)} free of ${fmtBytes(h.memory_total_bytes)}`,
        };
      })
    : [{ id: String(model.inv.host?.host_id ?? ""), label: String(model.inv.host?.hostname ?? "this host"), detail: "" }];
  const placed = new Set<string>();
  for (const h of hosts) {
    rows.push({ kind: "host", label: h.label, detail: h.detail, depth: 1 });
    for (const vm of vms)
      if (!vm.is_template && (vm.host === h.id || hosts.length === 1) && match(vm.name)) {
        rows.push({ kind: "vm", vm, depth: 2 });
        placed.add(vm.id);
      }
  }
  const elsewhere = vms.filter((v) => !v.is_template && !placed.has(v.id) && match(v.name));
  if (elsewhere.length) {
    rows.push({ kind: "host", label: "other hosts", detail: "", depth: 1 });
    for (const vm of elsewhere) rows.push({ kind: "vm", vm, depth: 2 });
  }
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

export function Tree({ selected, onSelect }: { selected: string | null; onSelect: (n: string) => void }) {
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
  // Up and down move the selection among the VM rows, scrolling it into view.
  const onKey = (e: KeyboardEvent) => {
    if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
    e.preventDefault();
    const vmRows = rows.map((r, i) => [r, i] as const).filter(([r]) => r.kind === "vm");
    if (!vmRows.length) return;
    const at = vmRows.findIndex(([r]) => r.kind === "vm" && r.vm.name === selected);
    const next = at < 0 ? 0 : Math.max(0, Math.min(vmRows.length - 1, at + (e.key === "ArrowDown" ? 1 : -1)));
    const [row, index] = vmRows[next];
    if (row.kind !== "vm") return;
    onSelect(row.vm.name);
    const el = box.current;
    if (el) {
      const top = index * ROW_H;
      if (top < el.scrollTop) el.scrollTop = top;
      else if (top + ROW_H > el.scrollTop + el.clientHeight) el.scrollTop = top + ROW_H - el.clientHeight;
    }
  };
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
        tabIndex={0}
        aria-label="VMs and host resources"
        onKeyDown={onKey}
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
                  aria-selected={selected === r.vm.name}
                  class={`row vm ${selected === r.vm.name ? "selected" : ""}`}
                  style={style}
                  data-vm={r.vm.name}
                  data-state={s}
                  data-host={r.vm.host ?? ""}
                  onClick={() => onSelect(r.vm.name)}
                >
                  <span class={`icon ${s}`} title={s}>
                    {r.vm.is_template ? "❏" : ICON[s] ?? "…"}
                  </span>
                  {r.vm.name}
                </div>
              );
            }
            if (r.kind === "host")
              return (
                <div key={`h-${r.label}`} class="row group host" style={style} title={r.detail} data-host={r.label}>
                  {r.label} <span class="detail">{r.detail}</span>
                </div>
              );
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
