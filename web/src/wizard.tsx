// The Create / Install wizard: every Install-XenVM field. The page checks nothing itself:
// the request goes to the API (POST /v1/vms, or POST /v1/installs for an install source),
// and the API's own message is shown next to the field it is about. The API names the
// offending value in its messages (`VM name "a b" contains ' '`), so the message goes to
// the field holding that value; one that names none is shown above the buttons.

import { useState } from "preact/hooks";
import { api, ApiError } from "./api";
import type { Model } from "./model";

interface DiskRow {
  size_gib: string;
  sr: string;
}
interface NicRow {
  network: string;
}

type Source = "none" | "kernel" | "location" | "cdrom" | "pxe" | "image";

/** `InstallPlan` (crates/corral-model/src/install.rs): what a dry run found and would do. */
interface Plan {
  source: string;
  detected?: { os?: string | null; name: string; version: string; family: string; layout: string; kernel: string; initrd: string } | null;
  template: { name?: string | null; reason: string; explanation: string };
  kernel_args?: string | null;
  vcpus: number;
  memory_bytes: number;
  disks: { device: string; size_bytes: number; sr: string }[];
  nics: { device: string; network: string }[];
  notes: string[];
}

function PlanView({ plan }: { plan: Plan }) {
  const d = plan.detected;
  return (
    <div class="plan" id="wiz-plan">
      <div><b>Source:</b> {plan.source}</div>
      {d ? (
        <>
          <div><b>Detected:</b> {d.name} {d.version} ({d.os ?? "unknown to osinfo-db"}, {d.layout} layout)</div>
          <div><b>Kernel:</b> {d.kernel}</div>
          <div><b>Initrd:</b> {d.initrd}</div>
        </>
      ) : (
        <div><b>Detected:</b> nothing to detect for this source</div>
      )}
      <div><b>Template:</b> {plan.template.name ?? "none"}: {plan.template.explanation}</div>
      {plan.kernel_args && <div><b>Kernel arguments:</b> {plan.kernel_args}</div>}
      <div><b>VM:</b> {plan.vcpus} vCPU, {Math.round(plan.memory_bytes / 1048576)} MiB; disks {plan.disks.map((x) => `${x.device} ${Math.round(x.size_bytes / 1073741824)} GiB on ${x.sr}`).join(", ") || "none"}; NICs {plan.nics.map((x) => `${x.device} on ${x.network}`).join(", ") || "none"}</div>
      {plan.notes.map((n) => <div class="note">note: {n}</div>)}
    </div>
  );
}

export function Wizard({
  model,
  onClose,
  onCreated,
}: {
  model: Model;
  onClose: () => void;
  onCreated: (name: string, task: string | null) => void;
}) {
  const inv = model.inv;
  const defaultSr = inv.srs.find((s) => (s as { is_default?: boolean }).is_default)?.name ?? inv.srs[0]?.name ?? "default";
  const [f, setF] = useState<Record<string, string>>({
    template: "",
    name: "",
    description: "",
    vcpus: "1",
    memory: "256",
    cpu_weight: "normal",
    sr: defaultSr,
    cdrom: "",
    kernel: "",
    initrd: "",
    cmdline: "console=ttyS0",
    location: "",
    iso: "",
    image: "",
    user_data: "",
  });
  const [autostart, setAutostart] = useState(false);
  const [start, setStart] = useState(false);
  const [disks, setDisks] = useState<DiskRow[]>([]);
  const [useTemplateDisks, setUseTemplateDisks] = useState(true);
  const [nics, setNics] = useState<NicRow[]>([{ network: inv.networks[0]?.name ?? "default" }]);
  const [source, setSource] = useState<Source>("none");
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState(false);
  const [plan, setPlan] = useState<Plan | null>(null);

  const set = (k: string) => (e: Event) => setF({ ...f, [k]: (e.target as HTMLInputElement).value });
  const input = (k: string, label: string, type = "text", extra: Record<string, unknown> = {}) => (
    <label class="field">
      <span>{label}</span>
      <input id={`wiz-${k}`} type={type} value={f[k]} onInput={set(k)} {...extra} />
      {errors[k] && (
        <span class="field-error" id={`wiz-${k}-error`} role="alert">
          {errors[k]}
        </span>
      )}
    </label>
  );

  const weight = (w: string): number | undefined => {
    const l = w.trim().toLowerCase();
    if (!l) return undefined;
    if (l === "low") return 128;
    if (l === "normal") return 256;
    if (l === "high") return 512;
    return Number(l);
  };

  const vmRequest = () => {
    const req: Record<string, unknown> = { name: f.name };
    if (f.template) req.template = f.template;
    if (f.description) req.description = f.description;
    if (f.vcpus) req.vcpus = Number(f.vcpus);
    if (f.memory) req.memory_bytes = Math.round(Number(f.memory) * 1048576);
    req.autostart = autostart;
    const w = weight(f.cpu_weight);
    if (w !== undefined) req.cpu_weight = w;
    if (!useTemplateDisks)
      req.disks = disks.map((d) => ({ size_bytes: Math.round(Number(d.size_gib) * 1073741824), sr: d.sr || f.sr }));
    req.nics = nics.map((n) => ({ network: n.network }));
    if (f.cdrom) req.cdrom = f.cdrom;
    if (source === "kernel") {
      req.kernel = f.kernel;
      if (f.initrd) req.initrd = f.initrd;
      if (f.cmdline) req.cmdline = f.cmdline;
    }
    return req;
  };

  /** Which field an API message is about: the one whose value it quotes. */
  const fieldOf = (message: string): string => {
    const candidates: [string, string][] = Object.entries(f).filter(([, v]) => v !== "");
    // Strings are quoted in the API's messages (`VM name "a b" contains ' '`) ...
    for (const [k, v] of candidates) if (message.includes(JSON.stringify(v))) return k;
    // ... numbers are not (`CPU weight 99999 is outside 1..65535`): whole numbers only, so a
    // common word in a message never pulls it to a field that merely contains it.
    for (const [k, v] of candidates)
      if (/^[0-9]+$/.test(v) && new RegExp(`(^|[^0-9.])${v}([^0-9.]|$)`).test(message)) return k;
    return "form";
  };

  const installSource = () => {
    switch (source) {
      case "location":
        return { kind: "location", location: f.location };
      case "cdrom":
        return { kind: "cdrom", iso: f.iso };
      case "pxe":
        return { kind: "pxe", ...(f.location ? { location: f.location } : {}) };
      case "image":
        return { kind: "disk_import", image: f.image };
      default:
        return null;
    }
  };

  const submit = async (dryRun: boolean) => {
    setErrors({});
    setBusy(true);
    setPlan(null);
    try {
      const src = installSource();
      if (src) {
        const body: Record<string, unknown> = { vm: vmRequest(), source: src };
        if (source === "image" && f.user_data) body.cloud_init = { user_data: f.user_data };
        if (dryRun) {
          setPlan(await api<Plan>("POST", "/v1/installs?dry_run=true", body));
          return;
        }
        const r = await api<{ task: string }>("POST", "/v1/installs?wait=false", body);
        onCreated(f.name, r.task);
      } else {
        const req = vmRequest();
        req.start = start;
        const r = await api<{ task: string }>("POST", "/v1/vms", req);
        onCreated(f.name, r.task);
      }
    } catch (e) {
      const msg = e instanceof ApiError ? e.message : String(e);
      setErrors({ [fieldOf(msg)]: msg });
    } finally {
      setBusy(false);
    }
  };

  return (
    <div class="modal" role="dialog" aria-label="New VM">
      <form
        class="wizard"
        onSubmit={(e) => {
          e.preventDefault();
          submit(false);
        }}
      >
        <h2>New VM</h2>
        <div class="cols">
          <fieldset>
            <legend>VM</legend>
            <label class="field">
              <span>Template</span>
              <select id="wiz-template" value={f.template} onChange={set("template")}>
                <option value="">(none)</option>
                {inv.templates.map((t) => (
                  <option value={t.name}>{t.name}</option>
                ))}
                {[...model.vms.values()]
                  .filter((v) => v.is_template)
                  .map((v) => (
                    <option value={v.name}>{v.name} (template VM)</option>
                  ))}
              </select>
              {errors.template && <span class="field-error">{errors.template}</span>}
            </label>
            {input("name", "Name")}
            {input("description", "Description")}
            {input("vcpus", "Virtual CPUs", "number")}
            {input("memory", "Initial memory (MiB)", "number")}
            <label class="field check">
              <input id="wiz-autostart" type="checkbox" checked={autostart} onChange={(e) => setAutostart((e.target as HTMLInputElement).checked)} />
              <span>Start on server boot</span>
            </label>
            <label class="field">
              <span>CPU weight</span>
              <input id="wiz-cpu_weight" list="weights" value={f.cpu_weight} onInput={set("cpu_weight")} />
              <datalist id="weights">
                <option value="low" />
                <option value="normal" />
                <option value="high" />
              </datalist>
              {errors.cpu_weight && <span class="field-error" id="wiz-cpu_weight-error">{errors.cpu_weight}</span>}
            </label>
          </fieldset>
          <fieldset>
            <legend>Storage and devices</legend>
            <label class="field">
              <span>Storage repository</span>
              <select id="wiz-sr" value={f.sr} onChange={set("sr")}>
                {inv.srs.map((s) => (
                  <option value={s.name}>{s.name}</option>
                ))}
              </select>
              {errors.sr && <span class="field-error">{errors.sr}</span>}
            </label>
            <label class="field check">
              <input id="wiz-template-disks" type="checkbox" checked={useTemplateDisks} onChange={(e) => setUseTemplateDisks((e.target as HTMLInputElement).checked)} />
              <span>Disks from the template</span>
            </label>
            {!useTemplateDisks && (
              <div class="list">
                {disks.map((d, i) => (
                  <div class="list-row">
                    disk{i}:{" "}
                    <input
                      class="small"
                      type="number"
                      value={d.size_gib}
                      onInput={(e) => setDisks(disks.map((x, j) => (j === i ? { ...x, size_gib: (e.target as HTMLInputElement).value } : x)))}
                    />{" "}
                    GiB
                    <button type="button" onClick={() => setDisks(disks.filter((_, j) => j !== i))}>
                      remove
                    </button>
                  </div>
                ))}
                <button type="button" id="wiz-add-disk" onClick={() => setDisks([...disks, { size_gib: "1", sr: f.sr }])}>
                  Add disk
                </button>
              </div>
            )}
            <label class="field">
              <span>CD-ROM media</span>
              <select id="wiz-cdrom" value={f.cdrom} onChange={set("cdrom")}>
                <option value="">(empty drive)</option>
                {inv.isos.map((i) => (
                  <option value={i.path}>{String(i.name ?? i.path)}</option>
                ))}
              </select>
              {errors.cdrom && <span class="field-error">{errors.cdrom}</span>}
            </label>
            <div class="list">
              {nics.map((n, i) => (
                <div class="list-row">
                  nic{i} on{" "}
                  <select value={n.network} onChange={(e) => setNics(nics.map((x, j) => (j === i ? { network: (e.target as HTMLSelectElement).value } : x)))}>
                    {inv.networks.map((x) => (
                      <option value={x.name}>{x.name}</option>
                    ))}
                  </select>
                  <button type="button" onClick={() => setNics(nics.filter((_, j) => j !== i))}>
                    remove
                  </button>
                </div>
              ))}
              <button type="button" onClick={() => setNics([...nics, { network: inv.networks[0]?.name ?? "default" }])}>
                Add NIC
              </button>
            </div>
          </fieldset>
          <fieldset>
            <legend>Install source</legend>
            <select id="wiz-source" value={source} onChange={(e) => setSource((e.target as HTMLSelectElement).value as Source)}>
              <option value="none">None (create only)</option>
              <option value="kernel">Direct kernel boot</option>
              <option value="location">Network install tree (URL)</option>
              <option value="cdrom">ISO media</option>
              <option value="pxe">PXE</option>
              <option value="image">Disk image + cloud-init</option>
            </select>
            {source === "kernel" && (
              <>
                {input("kernel", "Kernel (path on the host)")}
                {input("initrd", "Initrd")}
                {input("cmdline", "Command line")}
              </>
            )}
            {(source === "location" || source === "pxe") && input("location", "Install tree URL")}
            {source === "cdrom" && (
              <label class="field">
                <span>ISO</span>
                <select id="wiz-iso" value={f.iso} onChange={set("iso")}>
                  <option value="">(choose)</option>
                  {inv.isos.map((i) => (
                    <option value={i.path}>{String(i.name ?? i.path)}</option>
                  ))}
                </select>
                {errors.iso && <span class="field-error">{errors.iso}</span>}
              </label>
            )}
            {source === "image" && (
              <>
                {input("image", "Image (path on the host)")}
                <label class="field">
                  <span>cloud-init user-data</span>
                  <textarea id="wiz-user_data" value={f.user_data} onInput={set("user_data")} />
                </label>
              </>
            )}
            {(source === "none" || source === "kernel") && (
              <label class="field check">
                <input id="wiz-start" type="checkbox" checked={start} onChange={(e) => setStart((e.target as HTMLInputElement).checked)} />
                <span>Start once created</span>
              </label>
            )}
            {source !== "none" && source !== "kernel" && (
              <button type="button" id="wiz-detect" disabled={busy} onClick={() => submit(true)}>
                Check and detect
              </button>
            )}
            {plan && <PlanView plan={plan} />}
          </fieldset>
        </div>
        {errors.form && (
          <p class="error" id="wiz-error" role="alert">
            {errors.form}
          </p>
        )}
        <div class="buttons">
          <button type="button" id="wiz-cancel" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" id="wiz-create" disabled={busy}>
            {source === "none" || source === "kernel" ? "Create" : "Install"}
          </button>
        </div>
      </form>
    </div>
  );
}
