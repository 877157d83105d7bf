// What the browser tests (e2e.mjs, pool.mjs) share: Chromium started the way this machine
// and CI allow, a bounded wait, and a look at the graphical console's canvas.

import { chromium } from "playwright-core";

/** Headless Chromium with a traced context and one page (30 s default timeout). */
export async function openBrowser({ acceptDownloads = false } = {}) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    // Root in CI: Chromium's sandbox needs user namespaces it may not have.
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
    timeout: 60_000,
  });
  const context = await browser.newContext({
    ignoreHTTPSErrors: true, // the agent's certificate is self-signed (clients pin it)
    acceptDownloads,
    viewport: { width: 1400, height: 900 },
  });
  await context.tracing.start({ screenshots: true, snapshots: true });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  return { browser, context, page };
}

/** `f()` until it answers something truthy (returned), for at most `timeoutMs`. */
export async function waitFor(page, what, timeoutMs, f) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await page.waitForTimeout(100);
  }
}

/** Non-background pixels and distinct colours of the noVNC canvas. */
export const canvasStats = (page) =>
  page.evaluate(() => {
    const c = document.querySelector(".vnc-screen canvas");
    if (!c || !c.width || !c.height) return { lit: 0, colours: 0, w: 0, h: 0 };
    const ctx = c.getContext("2d");
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let lit = 0;
    const colours = new Set();
    for (let i = 0; i < d.length; i += 4 * 7) {
      if (d[i] + d[i + 1] + d[i + 2] > 60) lit++;
      if (colours.size < 64) colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    }
    return { lit, colours: colours.size, w: c.width, h: c.height };
  });
