// End-to-end test of the web Administrator Console in real headless Chromium (Debian's
// /usr/bin/chromium driven by playwright-core), against a real `corral serve --listen`
// with the test guest. Started by crates/corral/tests/console.rs, which prepares the agent
// and checks what the browser produced (the exported archive imports back with the CLI).
//
// Environment: CORRAL_URL (https://127.0.0.1:PORT), CORRAL_TOKEN, GUEST_KERNEL,
// GUEST_INITRD, BIG_VM (a halted VM with a large disk, for a copy to watch and cancel),
// OUT_DIR (downloads; trace and screenshot on failure), SHOTS_DIR (screenshots of the main
// screens). Prints one JSON line of measured figures on success; exits 1 on failure.
// Every wait has a timeout.

import { canvasStats as canvasStatsOf, openBrowser, waitFor as waitForOn } from "./lib.mjs";
import fs from "node:fs";
import path from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing environment variable ${k}`);
  return v;
};
const URL = env("CORRAL_URL");
const TOKEN = env("CORRAL_TOKEN");
const KERNEL = env("GUEST_KERNEL");
const INITRD = env("GUEST_INITRD");
const BIG = env("BIG_VM");
const OUT = env("OUT_DIR");
const SHOTS = env("SHOTS_DIR");
const TREE = env("INSTALL_TREE");
const MARKER = "CORRAL-GUEST-READY";
fs.mkdirSync(OUT, { recursive: true });
fs.mkdirSync(SHOTS, { recursive: true });

const figures = {};
const t0 = Date.now();
const log = (m) => process.stderr.write(`[e2e +${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}\n`);

const { browser, context, page } = await openBrowser({ acceptDownloads: true });
const consoleErrors = [];
page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
page.on("pageerror", (e) => consoleErrors.push(String(e)));
// Prompts (clone/copy names) and confirms (delete) are answered by the test.
let promptAnswer = "";
page.on("dialog", (d) => (d.type() === "prompt" ? d.accept(promptAnswer) : d.accept()));

const shot = (name) => page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
const vmRow = (name) => page.locator(`.row.vm[data-vm="${name}"]`);

const waitFor = (what, timeoutMs, f) => waitForOn(page, what, timeoutMs, f);
const canvasStats = () => canvasStatsOf(page);

try {
  // ---- login: a wrong token is refused, the right one lets in ----
  const loadStart = Date.now();
  await page.goto(URL);
  await page.locator("#token").waitFor();
  figures.login_page_ms = Date.now() - loadStart;
  await page.fill("#token", "not-the-token");
  await page.click("button[type=submit]");
  const refusal = await page.locator("#login-error").textContent();
  if (!/wrong token/.test(refusal)) throw new Error(`wrong token not refused clearly: ${refusal}`);
  await shot("login");
  log(`wrong token refused: ${refusal}`);
  await page.fill("#token", TOKEN);
  await page.click("button[type=submit]");
  await page.locator('[data-testid=live]:has-text("live")').waitFor();
  await vmRow(BIG).waitFor();
  // The pool's hosts (a pool of one here) head their VMs, with their load.
  await page.locator(".row.host .detail", { hasText: "running" }).first().waitFor();
  // A reload keeps the session (the page asks for its CSRF token again).
  await page.reload();
  await vmRow(BIG).waitFor();
  log("logged in; tree shows the prepared VM; a reload keeps the session");

  // The CSP header is on the page and no inline script exists.
  const resp = await page.request.get(URL + "/");
  const csp = resp.headers()["content-security-policy"] ?? "";
  if (!csp.includes("script-src 'self'")) throw new Error(`no strict CSP: ${csp}`);

  // A cookie-authenticated mutating request without the CSRF header is refused.
  const csrfless = await page.evaluate(async () => {
    const r = await fetch("/v1/vms", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    return { status: r.status, body: await r.json() };
  });
  if (csrfless.status !== 401 || !/CSRF/.test(csrfless.body.message))
    throw new Error(`a request without the CSRF header was not refused: ${JSON.stringify(csrfless)}`);

  // ---- create through the wizard: a validation error first, shown at its field ----
  await page.click("#new-vm");
  await page.fill("#wiz-name", "bad name!");
  await page.selectOption("#wiz-source", "kernel");
  await page.fill("#wiz-kernel", KERNEL);
  await page.fill("#wiz-initrd", INITRD);
  await page.fill("#wiz-cmdline", "console=tty0 console=ttyS0 no_timer_check");
  await page.fill("#wiz-memory", "192");
  await page.click("#wiz-create");
  const nameError = await page.locator("#wiz-name-error").textContent();
  if (!/name/i.test(nameError)) throw new Error(`validation error not shown at the name: ${nameError}`);
  log(`wizard shows the API's message at the field: ${nameError}`);
  await shot("wizard");
  await page.fill("#wiz-name", "web1");
  await page.fill("#wiz-cpu_weight", "99999");
  await page.click("#wiz-create");
  const weightError = await page.locator("#wiz-cpu_weight-error").textContent();
  if (!/99999/.test(weightError)) throw new Error(`CPU weight error not at its field: ${weightError}`);
  log(`and at the CPU weight: ${weightError}`);
  await page.fill("#wiz-cpu_weight", "high");
  await page.click("#wiz-create");
  await vmRow("web1").waitFor();
  await page.locator('[data-testid=vm-title]:has-text("web1")').waitFor();
  log("web1 created through the wizard");

  // ---- a console websocket without a ticket, or with a forged one, is refused ----
  const noTicket = await page.evaluate(
    (u) =>
      new Promise((res) => {
        const ws = new WebSocket(u);
        ws.onopen = () => res("opened");
        ws.onclose = (e) => res(`closed ${e.code}`);
        setTimeout(() => res("timeout"), 10000);
      }),
    URL.replace("https:", "wss:") + "/v1/vms/web1/console/ws",
  );
  const forged = await page.evaluate(
    (u) =>
      new Promise((res) => {
        const ws = new WebSocket(u);
        ws.onopen = () => res("opened");
        ws.onclose = (e) => res(`closed ${e.code}`);
        setTimeout(() => res("timeout"), 10000);
      }),
    URL.replace("https:", "wss:") + "/v1/vms/web1/vnc?ticket=forged",
  );
  if (noTicket === "opened" || forged === "opened") throw new Error(`console without a valid ticket opened: ${noTicket} ${forged}`);
  log(`websocket without ticket: ${noTicket}; forged ticket: ${forged}`);

  // ---- start: the task shows at once, the tree follows the event ----
  const startClick = Date.now();
  await page.click("#act-start");
  await page.locator('[data-testid=last-task]:has-text("vm.start")').waitFor();
  await page.locator('.row.vm[data-vm="web1"][data-state="running"]').waitFor({ timeout: 60_000 });
  figures.start_click_to_running_in_tree_ms = Date.now() - startClick;
  log(`web1 running in the tree ${figures.start_click_to_running_in_tree_ms} ms after the click`);

  // ---- text console: the guest's marker, with scroll-back ----
  await page.click("#tab-text");
  await waitFor("the guest's marker in the text console", 120_000, async () =>
    ((await page.locator("[data-testid=serial-text]").textContent()) ?? "").includes(MARKER),
  );
  await page.locator('[data-testid=serial-status]:has-text("connected")').waitFor();
  // Type into the guest's shell and see its answer.
  await page.locator(".xterm-host").click();
  await page.keyboard.type("echo web-$((6*7))\n");
  await waitFor("the guest's answer to typed input", 30_000, async () =>
    ((await page.locator("[data-testid=serial-text]").textContent()) ?? "").includes("web-42"),
  );
  await shot("text-console");
  log("text console shows the marker and answers typed input");

  // ---- graphical console: ticket to first frame, a non-blank canvas ----
  const ticketStart = Date.now();
  await page.click("#tab-graphical");
  await page.locator('[data-testid=vnc-status]:has-text("connected")').waitFor();
  const first = await waitFor("a non-blank graphical console", 60_000, async () => {
    const s = await canvasStats();
    return s.lit > 50 && s.colours > 1 ? s : null;
  });
  figures.open_tab_to_first_frame_ms = Date.now() - ticketStart;
  log(`graphical console: ${first.w}x${first.h}, ${first.lit} lit samples, ${first.colours} colours, ${figures.open_tab_to_first_frame_ms} ms`);
  await shot("graphical-console");

  // ---- reboot: QEMU resets the guest in place; the console stays and keeps drawing ----
  await page.click("#act-reboot");
  await page.locator('[data-testid=last-task]:has-text("vm.reboot")').waitFor();
  await page.locator('[data-testid=last-task][data-state="succeeded"]').waitFor({ timeout: 30_000 });
  await waitFor("the console after the reboot", 60_000, async () => {
    const s = await canvasStats();
    const status = await page.locator("[data-testid=vnc-status]").textContent();
    return status === "connected" && s.lit > 50;
  });
  const markers = async () => ((await (await page.request.get(`${URL}/v1/vms/web1/console/log`)).text()).match(new RegExp(MARKER, "g")) ?? []).length;
  await waitFor("the guest to boot again after the reboot", 120_000, async () => (await markers()) >= 2);
  log("reboot: the guest booted again; the graphical console stayed connected and drawing");

  // ---- pause and resume: the tree follows ----
  await page.click("#act-pause");
  await page.locator('.row.vm[data-vm="web1"][data-state="paused"]').waitFor();
  await page.click("#act-resume");
  await page.locator('.row.vm[data-vm="web1"][data-state="running"]').waitFor();
  log("pause and resume");

  // ---- force off and start again: a new QEMU, the console reconnects by itself ----
  const connectsBefore = Number(await page.locator("[data-testid=vnc-status]").getAttribute("data-connects"));
  await page.click("#act-poweroff");
  await page.locator('.row.vm[data-vm="web1"][data-state="halted"]').waitFor({ timeout: 30_000 });
  await page.click("#act-start");
  await page.locator('.row.vm[data-vm="web1"][data-state="running"]').waitFor({ timeout: 60_000 });
  const runningAt = Date.now();
  await waitFor("the graphical console to reconnect", 10_000, async () => {
    const n = Number(await page.locator("[data-testid=vnc-status]").getAttribute("data-connects"));
    const status = await page.locator("[data-testid=vnc-status]").textContent();
    return n > connectsBefore && status === "connected";
  });
  figures.reconnect_after_restart_ms = Date.now() - runningAt;
  if (figures.reconnect_after_restart_ms > 3000)
    throw new Error(`the graphical console took ${figures.reconnect_after_restart_ms} ms to reconnect (bound: 3 s)`);
  await waitFor("a non-blank console after the restart", 60_000, async () => (await canvasStats()).lit > 50);
  log(`graphical console reconnected ${figures.reconnect_after_restart_ms} ms after the VM ran again`);

  // ---- overview: every field, an edit through PATCH ----
  await page.click("#tab-overview");
  await page.locator("[data-testid=overview]").waitFor();
  const ov = await page.locator("[data-testid=overview]").textContent();
  for (const want of ["MAC", "nic0", "cdrom0", "kernel"])
    if (!ov.includes(want)) throw new Error(`overview lacks ${want}: ${ov}`);
  await page.fill("#ov-description", "made in the browser");
  await page.click("#ov-save");
  await page.locator('[data-testid=vm-title]:has-text("made in the browser")').waitFor();
  await shot("overview");
  log("overview shows the VM and saves an edit");

  // ---- shut down (the guest's ACPI handler powers off) ----
  await page.click("#act-shutdown");
  await page.locator('.row.vm[data-vm="web1"][data-state="halted"]').waitFor({ timeout: 60_000 });

  // ---- devices of the halted VM from the Overview: a disk and a NIC added, the NIC removed ----
  await page.click("#tab-overview");
  await page.fill("#ov-disk-size", "1");
  await page.click("#ov-disk-add");
  await page.locator('[data-testid=overview] .dev[data-device="disk0"]').waitFor();
  await page.click("#ov-nic-add");
  await page.locator('[data-testid=overview] .dev[data-device="nic1"]').waitFor();
  await page.locator('[data-testid=overview] .dev[data-device="nic1"] button').click();
  await page.locator('[data-testid=overview] .dev[data-device="nic1"]').waitFor({ state: "detached" });
  log("overview: disk added, NIC added and removed");

  // ---- export: a download to this machine (the test imports it back with the CLI) ----
  const [download] = await Promise.all([page.waitForEvent("download", { timeout: 60_000 }), page.click("#act-export")]);
  const exported = path.join(OUT, "web1.corral");
  await download.saveAs(exported);
  const failure = await download.failure();
  if (failure) throw new Error(`export download failed: ${failure}`);
  figures.export_bytes = fs.statSync(exported).size;
  log(`export downloaded: ${figures.export_bytes} bytes`);

  // ---- import: the same archive uploaded from this machine ----
  promptAnswer = "web1-up";
  await page.setInputFiles("#import-file", exported);
  await vmRow("web1-up").waitFor({ timeout: 60_000 });
  log("the download uploaded back through the Import button");

  // ---- a long task: its progress bar moves, then it is cancelled from the History tab ----
  // Copies and exports of a test-sized disk end in under a second here, so the long task is
  // an export of the prepared VM's incompressible disk at zstd level 19 (about 2 MB/s),
  // read by the page itself as the Export button's download would be.
  await vmRow(BIG).click();
  await page.locator(`[data-testid=vm-title]:has-text("${BIG}")`).waitFor();
  await page.click("#tab-history");
  await page.evaluate((big) => {
    window.__slowExport = (async () => {
      try {
        const r = await fetch(`/v1/vms/${big}/export?compress=zstd&level=19`);
        const reader = r.body.getReader();
        for (;;) if ((await reader.read()).done) return "ended";
      } catch (e) {
        return `broken: ${e}`;
      }
    })();
  }, BIG);
  const row = page.locator('tr.task[data-op="vm.export"][data-state="running"]').first();
  await row.waitFor({ timeout: 30_000 });
  const p1 = await waitFor("the export's progress to start", 30_000, async () => {
    const v = Number(await row.locator("progress").getAttribute("data-progress"));
    return v > 0 ? v : null;
  });
  const p2 = await waitFor("the export's progress bar to move", 60_000, async () => {
    const v = Number(await row.locator("progress").getAttribute("data-progress"));
    return v > p1 ? v : null;
  });
  figures.export_progress_seen = [p1, p2];
  await shot("history");
  const taskId = await row.getAttribute("data-task");
  await row.locator("button.cancel").click();
  await page.locator(`tr.task[data-task="${taskId}"][data-state="cancelled"]`).waitFor({ timeout: 30_000 });
  const ending = await page.evaluate(() => window.__slowExport);
  if (ending === "ended") throw new Error("a cancelled export ended its body cleanly");
  log(`export progress moved ${p1.toFixed(4)} -> ${p2.toFixed(4)}, then cancelled (download: ${ending})`);

  // ---- copy through the toolbar: the new VM appears in the tree ----
  promptAnswer = `${BIG}-copy`;
  await page.click("#act-copy");
  await vmRow(`${BIG}-copy`).waitFor({ timeout: 60_000 });
  log("copy made through the toolbar");

  // ---- keyboard: arrows move the selection in the tree ----
  await vmRow(BIG).click();
  await page.focus(".tree");
  await page.keyboard.press("ArrowDown");
  await page.locator('.row.vm.selected[data-vm="big-copy"]').waitFor();
  await page.keyboard.press("ArrowUp");
  await page.locator(`.row.vm.selected[data-vm="${BIG}"]`).waitFor();

  // ---- CD media from the ISO library, eject, the guest-tools ISO; then a template ----
  await vmRow("web1-up").click();
  await page.locator('[data-testid=vm-title]:has-text("web1-up")').waitFor();
  await page.click("#tab-overview");
  const overviewText = async () => (await page.locator("[data-testid=overview]").textContent()) ?? "";
  await page.selectOption("#ov-iso", { label: "installer.iso" });
  await page.click("#ov-iso-insert");
  await waitFor("the CD inserted", 30_000, async () => /cdrom0: \S*installer\.iso/.test(await overviewText()));
  await page.click("#act-cd-eject");
  await waitFor("the CD ejected", 30_000, async () => /cdrom0: empty/.test(await overviewText()));
  await page.click("#act-tools");
  await waitFor("the guest-tools ISO inserted", 30_000, async () => /cdrom0: \S*virtio-win[^ ]*\.iso/.test(await overviewText()));
  log("CD inserted from the ISO library, ejected, guest-tools ISO inserted");
  await vmRow(`${BIG}-copy`).click();
  await page.locator(`[data-testid=vm-title]:has-text("${BIG}-copy")`).waitFor();
  await page.click("#act-template");
  await waitFor("the copy turned into a template", 30_000, async () =>
    (await vmRow(`${BIG}-copy`).locator(".icon").textContent()) === "❏" && (await page.locator("#act-start").isDisabled()),
  );
  log("the copy converted to a template: template icon, Start disabled");

  // ---- delete (confirmed), the tree follows ----
  await vmRow("web1").click();
  await page.click("#act-delete");
  await vmRow("web1").waitFor({ state: "detached", timeout: 30_000 });
  await shot("tree");
  log("web1 deleted");

  // ---- linked clone of a halted VM ----
  await vmRow(BIG).click();
  promptAnswer = `${BIG}-clone`;
  await page.click("#act-clone");
  await vmRow(`${BIG}-clone`).waitFor({ timeout: 60_000 });
  log("linked clone made through the toolbar");

  // ---- install wizard: detection of a network install tree (dry run, nothing created) ----
  await page.click("#new-vm");
  await page.fill("#wiz-name", "inst1");
  await page.selectOption("#wiz-source", "location");
  await page.fill("#wiz-location", TREE);
  await page.click("#wiz-detect");
  // No template names a disk: the API says an install needs one.
  const diskError = await page.locator("#wiz-error").textContent();
  if (!/disk/.test(diskError)) throw new Error(`install without a disk not refused clearly: ${diskError}`);
  await page.uncheck("#wiz-template-disks");
  await page.click("#wiz-add-disk");
  await page.click("#wiz-detect");
  const plan = await page.locator("#wiz-plan").textContent();
  if (!/corral-test-installer/.test(plan) || !/vmlinuz/.test(plan)) throw new Error(`detection not shown: ${plan}`);
  await shot("wizard-install");
  await page.click("#wiz-cancel");
  if (await vmRow("inst1").count()) throw new Error("a dry run created a VM");
  log(`install wizard: "${diskError}" first, then the detected tree shown`);

  // ---- log out: the session ends, and so does an event stream opened under it ----
  await page.evaluate(() => {
    window.__stream = (async () => {
      const r = await fetch("/v1/events");
      const reader = r.body.getReader();
      try {
        while (!(await reader.read()).done);
        return "ended";
      } catch (e) {
        return `broken: ${e}`;
      }
    })();
  });
  await page.click("#logout");
  await page.locator("#token").waitFor();
  const streamEnd = await page.evaluate(() => Promise.race([window.__stream, new Promise((r) => setTimeout(() => r("still open"), 5000))]));
  if (streamEnd === "still open") throw new Error("an event stream outlived the logout");
  const after = await page.evaluate(async () => (await fetch("/v1/vms")).status);
  if (after !== 401) throw new Error(`after logout /v1/vms answered ${after}`);
  log(`logged out: the open event stream ${streamEnd}, the API answers 401`);
  // Without credentials only the page and the login are open: a VM named like a console
  // route is still an API read, and console routes want a ticket.
  // A console route of a VM that does not exist answers the same 401: no ticket, no answer.
  for (const p of ["/v1/vms/vnc", "/v1/vms/web1-up", "/v1/vms/web1-up/vnc", "/v1/vms/web1-up/console/ws", "/v1/vms/no-such-vm/vnc", "/v1/events"]) {
    const st = (await page.request.get(URL + p)).status();
    if (st !== 401) throw new Error(`GET ${p} without credentials answered ${st}`);
  }
  if ((await page.request.get(URL + "/")).status() !== 200) throw new Error("the page is not open");

  if (consoleErrors.length) log(`page console errors (not fatal): ${consoleErrors.join(" | ")}`);
  await context.tracing.stop();
  await browser.close();
  process.stdout.write(JSON.stringify(figures) + "\n");
} catch (e) {
  log(`FAILED: ${e.stack || e}`);
  try {
    await page.screenshot({ path: path.join(OUT, "failure.png"), fullPage: true });
    await context.tracing.stop({ path: path.join(OUT, "trace.zip") });
    log(`screenshot ${path.join(OUT, "failure.png")}, trace ${path.join(OUT, "trace.zip")} (npx playwright show-trace)`);
  } catch (e2) {
    log(`cannot save the failure artefacts: ${e2}`);
  }
  if (consoleErrors.length) log(`page console errors: ${consoleErrors.join(" | ")}`);
  await browser.close();
  process.exit(1);
}
