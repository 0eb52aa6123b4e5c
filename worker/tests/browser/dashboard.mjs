// The local dashboard in a real browser, during a live `taxi-worker local --dashboard` run.
//
//   node worker/tests/browser/dashboard.mjs URL SCREENSHOT
//
// Needs playwright-core on NODE_PATH and a Chromium binary in $CHROMIUM. Exits non-zero with a
// message naming the first check that failed; worker/tests/dashboard_browser.rs runs it.

import { createRequire } from "node:module";
import { join } from "node:path";

// ES modules ignore NODE_PATH; createRequire resolves through it, so the test needs no
// node_modules of its own.
const require = createRequire(join(process.cwd(), "noop.js"));
const { chromium } = require("playwright-core");

const [url, screenshot] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM;
const TIMEOUT_MS = Number(process.env.DASHBOARD_TEST_TIMEOUT_MS || 60000);
// Midtown Manhattan: the geohash cell dr5ru spans 40.737–40.781° N, 74.004–73.960° W, from
// Chelsea to the Upper East Side, river to river.
const MIDTOWN = "dr5ru";

class Failure extends Error {}
const fail = (message) => { throw new Failure(message); };

function check(condition, message) {
  if (!condition) fail(message);
}

/** Polls `probe` in Node until it returns a truthy value; `what` names the wait in the failure. */
async function waitFor(what, probe, timeoutMs = TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function main() {
  check(url && screenshot, "usage: node dashboard.mjs URL SCREENSHOT");
  check(executablePath, "CHROMIUM is not set: point it at a Chromium binary");
  const origin = new URL(url).origin;
  const api = async (path) => {
    const response = await fetch(new URL(path, origin));
    check(response.ok, `GET ${path}: HTTP ${response.status}`);
    return response.json();
  };

  // launch() gives the browser a fresh temporary profile, and newContext() a fresh context in it.
  const browser = await chromium.launch({
    executablePath,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
    ],
  });
  const problems = [];
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    // Anything outside the dashboard's origin is recorded and refused: the page must work offline.
    await context.route("**/*", (route) => {
      const target = route.request().url();
      if (new URL(target).origin === origin || target.startsWith("data:")) return route.continue();
      problems.push(`the page requested ${target}, outside ${origin}`);
      return route.abort();
    });
    const page = await context.newPage();
    page.on("console", (m) => { if (m.type() === "error") problems.push(`console error: ${m.text()}`); });
    page.on("pageerror", (e) => problems.push(`uncaught exception: ${e.message}`));
    const checkProblems = () => check(problems.length === 0, problems.join("\n"));

    const before = await api("/api/summary");
    check(before.state === "running",
      `the run is already ${before.state} before the page opened; make it longer (more --generate, lower --speedup)`);
    await page.goto(url);

    // Live drawing: cells on the map and both airports' lines.
    await waitFor("hot-spot cells on the map", () => page.locator("rect.cell").count());
    for (const airport of ["JFK", "LGA"]) {
      await waitFor(`the ${airport} series with at least 2 points`, async () => {
        const path = page.locator(`path.series[data-airport="${airport}"]`);
        return (await path.count()) === 1 && Number(await path.getAttribute("data-points")) >= 2;
      });
    }
    checkProblems();
    const stateWhenDrawn = await page.locator("#state").getAttribute("data-value");

    // Step back to an earlier window with the keyboard, as a user would.
    const slider = page.locator("#window-slider");
    await waitFor("at least 3 final windows", async () => Number(await slider.getAttribute("max")) >= 2);
    const newestBefore = Number(await slider.getAttribute("max"));
    await slider.focus();
    await page.keyboard.press("Home");
    await page.keyboard.press("ArrowRight");
    const chosen = Number(await page.locator("#window-label").getAttribute("data-start"));
    check(Number(await slider.inputValue()) === 1, `the slider is at ${await slider.inputValue()} after Home, ArrowRight; expected 1`);
    await expectMapShows(page, api, chosen);

    const summary = await waitForFinished(page);
    checkProblems();

    // Off live mode, newer windows must not move the selection.
    const total = Number(await slider.getAttribute("max")) + 1;
    check(Number(await page.locator("#window-label").getAttribute("data-start")) === chosen,
      "the selection moved while not in live mode");
    await expectMapShows(page, api, chosen);
    const results = await api("/api/results");
    check(total === results.windows.length,
      `the slider spans ${total} windows, /api/results has ${results.windows.length}`);

    await expectFigures(page, summary);

    // Live returns to the newest window.
    await page.locator("#live").click();
    const newest = results.windows[results.windows.length - 1].start_s;
    await expectMapShows(page, api, newest);
    const midtown = await expectMidtownOnManhattan(page);

    checkProblems();
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log(`ok: ${results.windows.length} windows (${newestBefore + 1} when the slider moved, state then `
      + `${stateWhenDrawn}), ${summary.records} records; busiest Midtown cell ${midtown} on Manhattan; `
      + `screenshot ${screenshot}`);
  } finally {
    await browser.close();
  }
}

/** The map shows exactly window `start`'s hot spots, geohash for geohash, count for count. */
async function expectMapShows(page, api, start) {
  const results = await api("/api/results");
  const win = results.windows.find((w) => w.start_s === start);
  check(win, `no window starting at ${start} in /api/results`);
  const want = new Map(win.hot_spots.map((h) => [h.geohash, h.pickup_count]));
  await waitFor(`the map to show the window starting at ${start} (${want.size} cells)`, async () => {
    const label = Number(await page.locator("#window-label").getAttribute("data-start"));
    const cells = await page.$$eval("rect.cell", (rects) => rects.map((r) => [r.dataset.geohash, Number(r.dataset.count)]));
    return label === start && cells.length === want.size && cells.every(([g, n]) => want.get(g) === n);
  }, 5000);
}

/** The busiest Midtown cell of the selected window (the first top-cells row in MIDTOWN) lies on
 *  the Manhattan the map draws, and on no other borough, and its row names Manhattan. Both use
 *  the page's own outlines. Returns the cell. */
async function expectMidtownOnManhattan(page) {
  const rows = await page.$$eval("#top-cells tr[data-geohash]",
    (trs) => trs.map((tr) => [tr.dataset.geohash, tr.querySelector(".where").textContent]));
  const row = rows.find(([geohash]) => geohash.startsWith(MIDTOWN));
  check(row, `no Midtown cell (${MIDTOWN}…) among the top cells ${rows.map(([g]) => g).join(" ")}`);
  const [geohash, label] = row;
  check(label === "≈ Manhattan", `the top cells label ${geohash} ${JSON.stringify(label)}, expected "≈ Manhattan"`);
  // The cell's centre, in the map's own coordinates, tested against each borough's drawn fill.
  const boroughs = await page.evaluate((g) => {
    const cell = document.querySelector(`#cells rect[data-geohash="${g}"]`);
    if (!cell) return null;
    const at = (name) => Number(cell.getAttribute(name));
    const centre = new DOMPoint(at("x") + at("width") / 2, at("y") + at("height") / 2);
    return [...document.querySelectorAll("#map path.land")]
      .filter((land) => land.isPointInFill(centre))
      .map((land) => land.dataset.borough);
  }, geohash);
  check(boroughs, `no cell ${geohash} on the map`);
  check(boroughs.length === 1 && boroughs[0] === "Manhattan",
    `the centre of ${geohash} lies on ${JSON.stringify(boroughs)} as the map draws them, expected Manhattan alone`);
  return geohash;
}

/** Waits for the state badge to say finished and returns the API's final summary. */
async function waitForFinished(page) {
  await waitFor("state finished", async () => {
    const state = await page.locator("#state").getAttribute("data-value");
    check(state !== "failed" && state !== "stopped", `the run ended ${state}`);
    return state === "finished";
  });
  return (await fetch(new URL("/api/summary", page.url()))).json();
}

/** Each headline figure carries the API's exact value. */
async function expectFigures(page, summary) {
  const figures = {
    "#fig-records": summary.records,
    "#fig-trips": summary.trips,
    "#fig-late": summary.late,
    "#fig-invalid": summary.invalid,
    "#fig-outside": summary.outside_region,
    "#fig-events-per-s": summary.events_per_s,
    "#fig-watermark": summary.watermark ?? "",
    "#state": summary.state,
  };
  // The page's last summary poll may lag the API's by one: give it a moment to settle.
  await waitFor("the headline figures to match /api/summary", async () => {
    for (const [id, want] of Object.entries(figures)) {
      const got = await page.locator(id).getAttribute("data-value");
      if (got !== String(want)) return false;
    }
    return true;
  }, 5000).catch(async (err) => {
    const lines = [];
    for (const [id, want] of Object.entries(figures)) {
      lines.push(`  ${id}: page ${JSON.stringify(await page.locator(id).getAttribute("data-value"))}, api ${JSON.stringify(String(want))}`);
    }
    fail(`${err.message}\n${lines.join("\n")}`);
  });
}

// A hung browser must not hang the Rust test that waits for this process.
setTimeout(() => {
  console.error(`FAIL: the browser test did not finish within ${3 * TIMEOUT_MS} ms`);
  process.exit(1);
}, 3 * TIMEOUT_MS).unref();

main().catch((err) => {
  console.error(err instanceof Failure ? `FAIL: ${err.message}` : `FAIL: ${err.stack || err}`);
  process.exit(1);
});
