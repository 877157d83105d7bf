// The web Administrator Console over a pool of two members, in real headless Chromium
// (Debian's /usr/bin/chromium driven by playwright-core). Started by
// crates/corral/tests/console_pool.rs, which runs a 3-member etcd, two agents (xen01, whose
// web console this page uses, and xen02) and a running counting guest on xen01.
//
// Checked: both hosts head their VMs in the tree; the graphical and text consoles of a VM on
// xen01; the Migrate action shows the pre-checks and their result before anything moves; the
// tree puts the VM under xen02 once the migration ends (pushed, not polled); the graphical
// console reconnects by itself to the VM on its new host, through xen01, within 3 s; the text
// console reaches the guest there and it is still counting (no restart); the Overview's charts
// are fed by one pushed statistics stream, forwarded by xen01; xen02 turns down in the tree when
// its agent freezes and up again when it thaws (asked of the test process through files in
// OUT_DIR: freeze-xen02, thaw-xen02).
//
// Environment: CORRAL_URL (xen01's https://127.0.0.1:PORT), CORRAL_TOKEN, VM (the running
// guest's name), OUT_DIR (trace and screenshot on failure), SHOTS_DIR. Prints one JSON line
// of measured figures on success; exits 1 on failure. Every wait has a timeout.

import { canvasStats, openBrowser, waitFor as waitForOn } from "./lib.mjs";
import fs from "node:fs";
import path from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing environment variable ${k}`);
  return v;
};
const URL = env("CORRAL_URL");
const TOKEN = env("CORRAL_TOKEN");
const VM = env("VM");
const OUT = env("OUT_DIR");
const SHOTS = env("SHOTS_DIR");
fs.mkdirSync(OUT, { recursive: true });
fs.mkdirSync(SHOTS, { recursive: true });

const figures = {};
const t0 = Date.now();
const log = (m) => process.stderr.write(`[pool +${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}\n`);

const { browser, context, page } = await openBrowser();
// The Migrate action asks for the target (prompt), then shows the pre-checks (confirm).
const dialogs = [];
page.on("dialog", (d) => {
  dialogs.push({ type: d.type(), message: d.message() });
  return d.type() === "prompt" ? d.accept("xen02") : d.accept();
});

const vmRow = (name) => page.locator(`.row.vm[data-vm="${name}"]`);
const vncStatus = () => page.locator("[data-testid=vnc-status]");

const waitFor = (what, timeoutMs, f) => waitForOn(page, what, timeoutMs, f);
const canvasLit = async () => (await canvasStats(page)).lit;

/** The guest's counts in the text console, in order. */
const counts = async () =>
  [...((await page.locator("[data-testid=serial-text]").textContent()) ?? "").matchAll(/CORRAL-COUNT (\d+)/g)].map((m) =>
    Number(m[1]),
  );

try {
  await page.goto(URL);
  await page.fill("#token", TOKEN);
  await page.click("button[type=submit]");
  await page.locator('[data-testid=live]:has-text("live")').waitFor();
  for (const h of ["xen01", "xen02"]) await page.locator(`.row.host[data-host="${h}"]`).waitFor();
  await page.locator(`.row.vm[data-vm="${VM}"][data-host="xen01"][data-state="running"]`).waitFor();
  await vmRow(VM).click();
  log("both hosts in the tree, the VM under xen01");

  // The consoles of the VM where it runs now.
  await page.click("#tab-text");
  await waitFor("the guest counting in the text console", 60_000, async () => (await counts()).length >= 2);
  const countedBefore = Math.max(...(await counts()));
  await page.click("#tab-graphical");
  await page.locator('[data-testid=vnc-status]:has-text("connected")').waitFor();
  await waitFor("a non-blank graphical console", 60_000, async () => (await canvasLit()) > 50);
  const connectsBefore = Number(await vncStatus().getAttribute("data-connects"));
  log("graphical console connected on xen01");

  // Migrate: the target asked, the pre-checks shown, then the move.
  const clicked = Date.now();
  await page.click("#act-migrate");
  await page.locator('[data-testid=last-task]:has-text("vm.migrate")').waitFor({ timeout: 30_000 });
  const confirm = dialogs.find((d) => d.type === "confirm");
  if (!confirm || !/Migrate .* to xen02 live\?/.test(confirm.message) || !/ok +memory/.test(confirm.message))
    throw new Error(`the pre-checks were not shown before the migration: ${JSON.stringify(dialogs)}`);
  log(`pre-checks shown: ${confirm.message.split("\n").length - 1} checks`);
  await page.locator(`.row.vm[data-vm="${VM}"][data-host="xen02"][data-state="running"]`).waitFor({ timeout: 90_000 });
  const moved = Date.now();
  figures.migrate_click_to_tree_ms = moved - clicked;
  log(`the tree shows the VM under xen02 ${figures.migrate_click_to_tree_ms} ms after the click`);

  // The graphical console follows the VM to its new host by itself.
  await waitFor("the graphical console to reconnect after the migration", 10_000, async () => {
    const n = Number(await vncStatus().getAttribute("data-connects"));
    return n > connectsBefore && (await vncStatus().textContent()) === "connected";
  });
  figures.reconnect_after_migration_ms = Date.now() - moved;
  if (figures.reconnect_after_migration_ms > 3000)
    throw new Error(`the graphical console took ${figures.reconnect_after_migration_ms} ms to reconnect (bound: 3 s)`);
  await waitFor("a non-blank console on xen02", 30_000, async () => (await canvasLit()) > 50);
  await page.screenshot({ path: path.join(SHOTS, "pool-after-migration.png") });
  log(`graphical console reconnected ${figures.reconnect_after_migration_ms} ms after the move`);

  // The text console reaches the guest on xen02, and it kept counting (a restarted guest
  // would count from 1 again, below what it had counted on xen01).
  await page.click("#tab-text");
  await waitFor("the guest counting on xen02", 30_000, async () => Math.max(0, ...(await counts())) >= countedBefore + 2);
  const after = await counts();
  const restart = after.findIndex((n, i) => i > 0 && n < after[i - 1]);
  if (restart >= 0) throw new Error(`the guest restarted: ${after.join(",")}`);
  log(`text console on xen02: counting on (${countedBefore} before the move, ${Math.max(...after)} now)`);

  // The Overview's charts of the VM on xen02 are pushed: one stats request (a stream,
  // forwarded by xen01), and new samples arrive on it.
  const statsRequests = [];
  page.on("request", (r) => r.url().includes("/stats") && statsRequests.push(r.url()));
  await page.click("#tab-overview");
  const chartPoints = () =>
    page.evaluate(
      () => (document.querySelector(".stats .chart polyline")?.getAttribute("points") ?? "").split(" ").filter(Boolean).length,
    );
  const firstPoints = await waitFor("the charts' first points", 40_000, async () => (await chartPoints()) || null);
  await waitFor("a new sample pushed to the charts", 20_000, async () => (await chartPoints()) > firstPoints);
  if (statsRequests.length !== 1 || !statsRequests[0].includes("follow=true"))
    throw new Error(`the charts were not fed by one pushed stream: ${JSON.stringify(statsRequests)}`);
  log(`charts: ${firstPoints} points, then more pushed on one stream`);

  // A member that stops answering turns "down" in the tree, and "up" again when it is back,
  // pushed (host_changed events): the test process freezes xen02's agent when asked to.
  const hostDetail = (h) => page.locator(`.row.host[data-host="${h}"] .detail`).textContent();
  fs.writeFileSync(path.join(OUT, "freeze-xen02"), "");
  const frozen = Date.now();
  await waitFor("xen02 down in the tree", 40_000, async () => /^down/.test(await hostDetail("xen02")));
  figures.host_down_in_tree_ms = Date.now() - frozen;
  fs.writeFileSync(path.join(OUT, "thaw-xen02"), "");
  const thawed = Date.now();
  await waitFor("xen02 up again in the tree", 40_000, async () => /^up/.test(await hostDetail("xen02")));
  figures.host_up_in_tree_ms = Date.now() - thawed;
  log(`xen02 down in the tree ${figures.host_down_in_tree_ms} ms after its agent froze (lease 10 s), up ${figures.host_up_in_tree_ms} ms after it thawed`);

  await context.tracing.stop();
  await browser.close();
  process.stdout.write(JSON.stringify(figures) + "\n");
} catch (e) {
  log(`FAILED: ${e.stack ?? e}`);
  await page.screenshot({ path: path.join(OUT, "failure.png") }).catch(() => {});
  await context.tracing.stop({ path: path.join(OUT, "trace.zip") }).catch(() => {});
  await browser.close().catch(() => {});
  process.exit(1);
}
