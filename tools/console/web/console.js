// The console's frame: the API calls, changes with token and confirmation,
// messages, the page router and the live refresh. Pages are in pages.js.
"use strict";
const Console = (() => {
  const REFRESH_MS = 2000;
  const pages = {};
  let current = null;
  let timer = null;
  let busy = false;

  // GET /api/<path>; throws an Error carrying the server's message.
  async function get(path) {
    const res = await fetch(`/api/${path}`, { cache: "no-store" });
    const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
    if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
    return body;
  }

  // Asks for confirmation in the dialog; resolves true on Confirm.
  function confirmDialog(text) {
    const dialog = document.getElementById("confirm-dialog");
    document.getElementById("confirm-text").textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  // A change: confirmation, then POST /api/<path> with the operator's name
  // and token. Shows the outcome; resolves to the answer or null.
  async function change(path, body, question) {
    if (!(await confirmDialog(question))) {
      show("Cancelled: nothing changed.", false);
      return null;
    }
    const res = await fetch(`/api/${path}`, {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        "X-Formica-Operator": document.getElementById("operator").value.trim(),
        "X-Formica-Token": document.getElementById("token").value,
      },
      body: JSON.stringify({ ...body, confirmed: true }),
    });
    const answer = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
    if (!res.ok) {
      show(answer.error || `HTTP ${res.status}`, true);
      return null;
    }
    show(`Done: ${answer.result}`, false);
    refresh();
    return answer;
  }

  function show(text, isError) {
    const box = document.getElementById("message");
    box.textContent = text;
    box.className = isError ? "error" : "ok";
    box.hidden = false;
  }

  // A form's field checks before anything is sent; false after showing why.
  function check(condition, why) {
    if (!condition) show(why, true);
    return condition;
  }

  // el("td", {class: "num"}, "text", child...)
  function el(tag, attrs = {}, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
      else n.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      n.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    return n;
  }

  // A table: columns [{title, num?}], rows of cells (text or nodes).
  function table(id, columns, rows, empty = "none") {
    const head = el("tr", {}, columns.map((c) => el("th", c.num ? { class: "num" } : {}, c.title)));
    const body = rows.length
      ? rows.map((r) => el("tr", r.attrs || {},
          r.cells.map((c, i) => el("td", columns[i] && columns[i].num ? { class: "num" } : {}, c))))
      : [el("tr", {}, el("td", { colspan: columns.length, class: "muted" }, empty))];
    return el("table", { id }, el("thead", {}, head), el("tbody", {}, body));
  }

  function ago(unixMs) {
    const ms = Number(unixMs);
    if (!ms) return "-";
    const s = (Date.now() - ms) / 1000;
    if (s < 0) return `in ${(-s).toFixed(1)}s`;
    if (s < 120) return `${s.toFixed(1)}s ago`;
    if (s < 7200) return `${Math.round(s / 60)}m ago`;
    if (s < 172800) return `${Math.round(s / 3600)}h ago`;
    return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
  }

  function register(name, page) { pages[name] = page; }

  // Renders the current page into #page, keeping the forms a person is
  // typing in (each page draws its live parts into its own holders).
  async function refresh() {
    if (busy || !current) return;
    busy = true;
    try {
      await current.refresh();
      document.getElementById("refreshed").textContent =
        `refreshed ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      show(`Cannot read: ${e.message}`, true);
    } finally {
      busy = false;
    }
  }

  function route() {
    const name = (location.hash || "#overview").slice(1).split("/")[0];
    const page = pages[name] || pages.overview;
    document.querySelectorAll("#nav a").forEach((a) =>
      a.classList.toggle("current", a.getAttribute("href") === `#${name}`));
    document.getElementById("message").hidden = true;
    const root = document.getElementById("page");
    root.replaceChildren();
    current = page;
    page.build(root);
    refresh();
  }

  async function start() {
    for (const id of ["operator", "token"]) {
      const input = document.getElementById(id);
      input.value = sessionStorage.getItem(`formica.${id}`) || "";
      input.addEventListener("change", () => sessionStorage.setItem(`formica.${id}`, input.value));
    }
    try {
      const info = await get("info");
      document.getElementById("backends").textContent =
        `dsrd ${info.registry} · dtsd ${info.dts || "none"} · dmsd ${info.dms || "none"}` +
        (info.token_configured ? "" : " · read-only (no console.token)");
    } catch (e) {
      show(`The console's server does not answer: ${e.message}`, true);
    }
    window.addEventListener("hashchange", route);
    route();
    timer = setInterval(refresh, REFRESH_MS);
  }

  return { get, change, show, check, el, table, ago, register, refresh, start, stop: () => clearInterval(timer) };
})();
