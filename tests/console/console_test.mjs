// The console in a real browser (Debian's chromium, headless, driven by
// playwright-core): run by console_test.cc, which starts the daemons and the
// console and passes what the page must show in CONSOLE_* variables.
// Prints one line per check and "N passed, M failed"; exits 1 on a failure.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const URL = env("CONSOLE_URL");
const TOKEN = env("CONSOLE_TOKEN");
const SERVICE = env("CONSOLE_SERVICE");
const ACTIVITY = env("CONSOLE_ACTIVITY");
const STUCK = env("CONSOLE_STUCK");
const TOPIC = env("CONSOLE_TOPIC");
const GROUP = env("CONSOLE_GROUP");
const DEAD_GROUP = env("CONSOLE_DEAD_GROUP");
const DEAD = env("CONSOLE_DEAD");
const HALF = env("CONSOLE_HALF");
const LAG = env("CONSOLE_LAG");
const SHOTS = env("CONSOLE_SCREENSHOTS");
const WAIT = { timeout: 15000 };

let passed = 0;
let failed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok      ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAILED  ${name}: ${e.message.split("\n")[0]}`);
  }
}
function expect(cond, why) { if (!cond) throw new Error(why); }

mkdirSync(SHOTS, { recursive: true });
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
const shot = (name) => page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
const row = (table, attr, value) => page.locator(`#${table} tr[${attr}="${value}"]`);
const message = page.locator("#message");
// The text of the traffic table's green and blue cells for the service.
const share = (color) => row("traffic-table", "data-service", SERVICE).locator(`[data-group="${color}"]`);
// Submits the shift form as an operator would, confirming in the dialog.
async function shift(percent, confirm = true) {
  await page.selectOption("#shift-service", SERVICE);
  await page.fill("#shift-target", "color=green");
  await page.fill("#shift-percent", String(percent));
  await page.click("#shift-submit");
}
async function confirmDialog() {
  await page.locator("#confirm-dialog[open]").waitFor(WAIT);
  await page.click("#confirm-yes");
}

try {
  await check("overview shows dsrd, dtsd and dmsd up", async () => {
    await page.goto(`${URL}#overview`);
    for (const d of ["dsrd", "dtsd", "dmsd"]) {
      await page.locator(`[data-daemon="${d}"] .up`).waitFor(WAIT);
    }
    // The test commits an activity and produces a message every 500 ms:
    // after a few refreshes both rates are plotted above zero.
    const plot = page.locator("#overview-plot");
    await plot.locator("text", { hasText: /activities committed: [1-9]/ }).waitFor(WAIT);
    await plot.locator("text", { hasText: /messages produced: [1-9]/ }).waitFor(WAIT);
    await page.waitForTimeout(6000);  // a longer line
    await shot("overview");
  });

  await check("services lists the published service and its providers", async () => {
    await page.goto(`${URL}#services`);
    await row("services-table", "data-service", SERVICE).locator("a").click(WAIT);
    await page.locator("#providers-table td", { hasText: "color=green" }).waitFor(WAIT);
    await page.locator("#providers-table td", { hasText: "color=blue" }).waitFor(WAIT);
    await shot("services");
  });

  await check("traffic view shows green 50% and blue 50% by weight", async () => {
    await page.goto(`${URL}#traffic`);
    await share("green").filter({ hasText: "50.0" }).waitFor(WAIT);
    await share("blue").filter({ hasText: "50.0" }).waitFor(WAIT);
  });

  await check("a shift without the token is refused and changes nothing", async () => {
    await page.fill("#operator", "ann");
    await page.fill("#token", "");
    await shift(80);
    await confirmDialog();
    await message.filter({ hasText: "needs the operator token" }).waitFor(WAIT);
    expect((await message.getAttribute("class")) === "error", "the refusal is not shown as an error");
    await page.waitForTimeout(2500);  // a refresh
    expect((await share("green").textContent()) === "50.0", "green moved without the token");
  });

  await check("bad form input gets a clear message", async () => {
    await page.fill("#token", TOKEN);
    await shift(150);
    await message.filter({ hasText: "The percent '150' is not a whole number from 0 to 100" }).waitFor(WAIT);
    // The server checks too: a route naming a tag no provider carries.
    await page.selectOption("#set-service", SERVICE);
    await page.fill("#set-route", "color=purple:100");
    await page.click("#set-submit");
    await confirmDialog();
    await message.filter({ hasText: "purple" }).waitFor(WAIT);
    const text = await message.textContent();
    expect(/carr/.test(text), `the server's message does not say why: ${text}`);
    // And answers a bad percent sent past the page with 400 and the reason.
    const answer = await page.evaluate(async ([service, token]) => {
      const r = await fetch("/api/traffic/shift", { method: "POST",
        headers: { "X-Formica-Token": token, "X-Formica-Operator": "ann" },
        body: JSON.stringify({ service, target: "color=green", percent: 150, confirmed: true }) });
      return { status: r.status, body: await r.json() };
    }, [SERVICE, TOKEN]);
    expect(answer.status === 400, `status ${answer.status}`);
    expect(answer.body.error === "the percent '150' is not a whole number from 0 to 100", answer.body.error);
  });

  await check("a cancelled confirmation changes nothing", async () => {
    await shift(80);
    await page.locator("#confirm-dialog[open]").waitFor(WAIT);
    await page.click("#confirm-no");
    await message.filter({ hasText: "Cancelled" }).waitFor(WAIT);
    expect((await share("green").textContent()) === "50.0", "green moved after cancel");
  });

  await check("a shift with the token moves green to 80% in the traffic view", async () => {
    await shift(80);
    await confirmDialog();
    await message.filter({ hasText: "color=green:80,color=blue:20" }).waitFor(WAIT);
    await share("green").filter({ hasText: "80.0" }).waitFor(WAIT);
    await share("blue").filter({ hasText: "20.0" }).waitFor(WAIT);
    await shot("traffic");
  });

  await check("releases shows the release and rolls it back", async () => {
    await page.goto(`${URL}#releases`);
    const release = row("releases-table", "data-service", "fund.trade");
    await release.locator("td", { hasText: "awaiting" }).first().waitFor(WAIT);
    await shot("releases");
    await release.locator("button", { hasText: "Roll back" }).click(WAIT);
    await confirmDialog();
    await message.filter({ hasText: "calls go to version=v1; rolling back" }).waitFor(WAIT);
    await release.locator("td", { hasText: "rolling_back" }).waitFor(WAIT);
  });

  await check("transactions shows the committed activity and its detail", async () => {
    await page.goto(`${URL}#transactions`);
    await page.selectOption("#activity-states", "COMMITTED");
    await row("activities-table", "data-activity", ACTIVITY).locator("a").click(WAIT);
    await page.locator("#activity-detail h3", { hasText: "committed" }).waitFor(WAIT);
    await shot("transactions");
  });

  await check("transactions shows a stuck activity's failing action, retries and settles it", async () => {
    await page.selectOption("#activity-states", "");
    await row("activities-table", "data-activity", STUCK).locator("a").click(WAIT);
    await page.locator("#activity-detail h3", { hasText: "committing" }).waitFor(WAIT);
    const action = page.locator("#actions-table tr", { hasText: "fund.ledger" });
    await action.waitFor(WAIT);
    const cells = await action.locator("td").allTextContents();
    expect(Number(cells[3]) >= 1, `attempts ${cells[3]}`);
    expect(cells[4] && cells[4] !== "-", "no last error shown");
    await shot("transactions-stuck");
    await page.click("#retry-submit");
    await confirmDialog();
    await message.filter({ hasText: `activity ${STUCK} is COMMITTING` }).waitFor(WAIT);
    await page.fill("#settle-reason", "");
    await page.click("#settle-submit");
    await message.filter({ hasText: "Give a reason to settle the activity." }).waitFor(WAIT);
    await page.fill("#settle-reason", "credited by hand, ticket 42");
    await page.waitForTimeout(2500);  // a refresh: what is typed stays
    await page.click("#settle-submit");
    await confirmDialog();
    await message.filter({ hasText: `activity ${STUCK} is COMMITTED` }).waitFor(WAIT);
    await page.locator("#activity-detail h3", { hasText: "committed" }).waitFor(WAIT);
  });

  await check("messaging shows the topic and the group's lag over time", async () => {
    await page.goto(`${URL}#messaging`);
    await row("topics-table", "data-topic", TOPIC).waitFor(WAIT);
    await page.fill("#lag-group", "bad group");
    await page.click("#lag-submit");
    await message.filter({ hasText: "may hold only letters" }).waitFor(WAIT);
    await page.fill("#lag-group", GROUP);
    await page.fill("#lag-topic", TOPIC);
    await page.click("#lag-submit");
    await page.locator("#lag-total", { hasText: `lag ${LAG}` }).waitFor(WAIT);
    await page.locator("#half-table td", { hasText: HALF }).waitFor(WAIT);
    await page.waitForTimeout(4500);  // more points on the plot
    const points = await page.locator(`#lag-plot path[data-series="${TOPIC}"]`).getAttribute("d");
    expect(points && points.split("L").length >= 2, `the lag plot has too few points: ${points}`);
    await shot("messaging");
  });

  await check("messaging lists a group's dead letters and replays them", async () => {
    await page.fill("#lag-group", DEAD_GROUP);
    await page.fill("#lag-topic", "");
    await page.click("#lag-submit");
    await page.locator("#lag-total", { hasText: `dead letters ${DEAD}` }).waitFor(WAIT);
    await page.locator("#dlq-list h3", { hasText: `Dead letters of ${DEAD_GROUP}` }).waitFor(WAIT);
    await page.locator("#replay-submit").waitFor(WAIT);
    const rows = await page.locator("#dlq-table tbody tr").count();
    expect(rows === Number(DEAD), `${rows} dead letters listed`);
    await page.click("#replay-submit");
    await confirmDialog();
    await message.filter({ hasText: `${DEAD} dead letters of ${DEAD_GROUP} replayed` }).waitFor(WAIT);
  });

  await check("ldc shows the zones, the shard owners and a client on the current rules", async () => {
    await page.goto(`${URL}#ldc`);
    await page.locator("#zones-table td", { hasText: "00-49" }).waitFor(WAIT);
    const cells = await page.locator(".shardmap div").count();
    expect(cells === 100, `${cells} shard cells`);
    const client = page.locator("#clients-table tr", { hasText: "fund-trade" });
    await client.locator("td", { hasText: "current" }).waitFor(WAIT);
    await shot("ldc");
  });

  await check("a page of another origin cannot make a change, even with the token", async () => {
    const other = await browser.newPage();
    await other.goto(URL.replace("127.0.0.1", "localhost"));  // another origin, same console
    const outcome = await other.evaluate(async ([url, service, token]) => {
      try {
        const r = await fetch(`${url}api/traffic/shift`, { method: "POST",
          headers: { "Content-Type": "application/json", "X-Formica-Token": token, "X-Formica-Operator": "mallory" },
          body: JSON.stringify({ service, target: "color=blue", percent: 100, confirmed: true }) });
        return `answered ${r.status}`;
      } catch (e) {
        return `blocked: ${e.message} (from ${location.origin})`;
      }
    }, [URL, SERVICE, TOKEN]);
    await other.close();
    console.log(`        cross-origin: ${outcome}`);
    expect(outcome.startsWith("blocked"), outcome);
    await page.goto(`${URL}#traffic`);
    await share("green").filter({ hasText: "80.0" }).waitFor(WAIT);
  });

  await check("the audit trail shows the refused, the failed and the made change", async () => {
    await page.goto(`${URL}#audit`);
    const table = page.locator("#audit-table");
    await table.locator("td", { hasText: "refused: UNAUTHENTICATED" }).first().waitFor(WAIT);
    await table.locator("td", { hasText: "failed: INVALID_ARGUMENT" }).first().waitFor(WAIT);
    await table.locator("td", { hasText: "ok: route none -> color=green:80,color=blue:20" }).waitFor(WAIT);
    await table.locator("td", { hasText: "ann from 127.0.0.1" }).first().waitFor(WAIT);
    await shot("audit");
  });

  await check("the daemons' audit trail shows each act at its daemon, newest first", async () => {
    await page.goto(`${URL}#audit`);
    const table = page.locator("#daemon-audit-table");
    await table.locator("td", { hasText: "dms.replay" }).first().waitFor(WAIT);
    const rows = await table.locator("tr").evaluateAll((trs) =>
      trs.slice(1).map((tr) => Array.from(tr.children, (td) => td.textContent)));
    const at = (action, daemon) => rows.findIndex((r) => r[3] === action && r[1] === daemon);
    const replay = at("dms.replay", "dmsd"), settle = at("dts.settle", "dtsd"), retry = at("dts.retry", "dtsd");
    expect(replay >= 0 && settle >= 0 && retry >= 0, `missing acts: ${JSON.stringify(rows.slice(0, 5))}`);
    expect(replay < settle && settle < retry, `not newest first: replay ${replay}, settle ${settle}, retry ${retry}`);
    expect(rows[settle][4] === `activity=${STUCK}` && rows[settle][5] === "OK", `settle row: ${rows[settle]}`);
    expect(rows.some((r) => r[1] === "dsrd" && r[3] === "config.put" && r[4].startsWith("key=console/audit/")),
      "the console's own records are not among dsrd's config writes");
    const times = rows.map((r) => r[0]);
    expect(times.every((t, i) => i === 0 || times[i - 1] >= t), `times not newest first: ${times.slice(0, 5)}`);
    await shot("daemon-audit");
  });
} finally {
  await browser.close();
}
console.log(`console browser test: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
