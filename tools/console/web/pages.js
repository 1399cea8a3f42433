// The console's pages: each builds its forms once and redraws its live
// parts on every refresh (console.js).
"use strict";
(() => {
  const { get, change, check, el, table, ago, register } = Console;
  const hold = (id) => el("div", { id });
  const put = (id, ...nodes) => { const n = document.getElementById(id); if (n) n.replaceChildren(...nodes); };
  const state = (s) => s.replace(/_/g, " ").toLowerCase();
  const HISTORY = 150;  // points kept per plotted series
  function push(points, t, v) { points.push([t, v]); if (points.length > HISTORY) points.shift(); }
  // Keeps a <select>'s choice while its options are refreshed.
  function options(select, values) {
    const keep = select.value;
    if ([...select.options].map((o) => o.value).join() === values.join()) return;
    select.replaceChildren(...values.map((v) => el("option", { value: v }, v)));
    if (values.includes(keep)) select.value = keep;
  }

  // ---- Overview ----
  const rates = { committed: [], produced: [], last: null };
  register("overview", {
    build(root) {
      root.append(el("h2", {}, "Overview"), hold("overview-cards"),
        el("h3", {}, "Rates (per second)"), hold("overview-plot"));
    },
    async refresh() {
      const o = await get("overview");
      const card = (title, ok, rows) => el("section", { class: "card", "data-daemon": title },
        el("h3", {}, title, " ", el("span", { class: ok ? "up" : "down" }, ok ? "up" : "down")),
        table(null, [{ title: "" }, { title: "", num: true }], rows.map((r) => ({ cells: r }))));
      const svc = o.services.ok ? o.services.answer.services : [];
      const reg = [["services", svc.length],
        ["instances", svc.reduce((a, s) => a + s.instances, 0)],
        ["sessions", o.sessions.ok ? o.sessions.answer.sessions.length : "-"],
        ["mode", o.cluster.ok ? o.cluster.answer.mode : "-"],
        ["push", o.push.ok ? (o.push.answer.stop_push ? "stopped" : o.push.answer.warming_up ? "warming up" : "on") : "-"]];
      if (!o.services.ok) reg.push(["error", o.services.error]);
      const cards = [card("dsrd", o.services.ok, reg)];
      const now = Date.now();
      let committed = null, produced = null;
      if (o.dts) {
        const s = o.dts.ok ? o.dts.answer : {};
        cards.push(card("dtsd", o.dts.ok, o.dts.ok
          ? [["begun", s.begun], ["committed", s.committed], ["rolled back", s.rolled_back],
             ["unfinished", s.unfinished], ["phase-two failures", s.phase_two_failures]]
          : [["error", o.dts.error]]));
        if (o.dts.ok) committed = Number(s.committed);
      }
      if (o.dms) {
        const topics = o.dms.ok ? o.dms.answer.topics : [];
        produced = topics.reduce((a, t) => a + t.queues.reduce((b, q) => b + Number(q.end_offset), 0), 0);
        cards.push(card("dmsd", o.dms.ok, o.dms.ok
          ? [["topics", topics.length], ["messages produced", produced]] : [["error", o.dms.error]]));
        if (!o.dms.ok) produced = null;
      }
      if (rates.last) {
        const dt = (now - rates.last.t) / 1000;
        if (committed !== null && rates.last.committed !== null) push(rates.committed, now, Math.round((committed - rates.last.committed) / dt));
        if (produced !== null && rates.last.produced !== null) push(rates.produced, now, Math.round((produced - rates.last.produced) / dt));
      }
      rates.last = { t: now, committed, produced };
      put("overview-cards", el("div", { class: "cards" }, cards));
      put("overview-plot", Plot.lines([{ name: "activities committed", points: rates.committed },
        { name: "messages produced", points: rates.produced }], { unit: "/s" }));
    },
  });

  // ---- Services ----
  let chosenService = "";
  register("services", {
    build(root) {
      root.append(el("h2", {}, "Services"), hold("services-list"), hold("service-detail"));
    },
    async refresh() {
      const r = await get("services");
      put("services-list", table("services-table",
        [{ title: "Service" }, { title: "Providers", num: true }, { title: "Subscribers", num: true }, { title: "Version", num: true }],
        r.services.map((s) => ({ attrs: { "data-service": s.service }, cells: [
          el("a", { class: "link", onclick: () => { chosenService = s.service; Console.refresh(); } }, s.service),
          s.instances, s.subscribers, s.version] }))));
      if (!chosenService) return put("service-detail");
      const snap = await get(`service?name=${encodeURIComponent(chosenService)}`);
      const kv = (m) => Object.entries(m || {}).map(([k, v]) => `${k}=${v}`).join(", ");
      put("service-detail", el("h3", {}, `Providers of ${chosenService}`), table("providers-table",
        [{ title: "Address" }, { title: "Zone" }, { title: "Weight (ramps up in warm-up)", num: true }, { title: "Tags" }, { title: "Metadata" }],
        snap.instances.map((i) => ({ cells: [i.address, i.zone || "-", i.weight, kv(i.tags), kv(i.metadata)] }))));
    },
  });

  // ---- Traffic ----
  register("traffic", {
    build(root) {
      const svc = (id) => el("select", { id });
      root.append(el("h2", {}, "Traffic"), hold("traffic-list"),
        el("h3", {}, "Shift"),
        el("form", { class: "action", id: "shift-form", onsubmit: (e) => { e.preventDefault(); shift(); } },
          el("label", {}, "Service", svc("shift-service")),
          el("label", {}, "To (key=value)", el("input", { id: "shift-target", value: "color=green", size: 14 })),
          el("label", {}, "Percent", el("input", { id: "shift-percent", size: 5, placeholder: "0-100" })),
          el("button", { id: "shift-submit" }, "Shift")),
        el("h3", {}, "Set a route"),
        el("form", { class: "action", id: "set-form", onsubmit: (e) => { e.preventDefault(); setRoute(); } },
          el("label", {}, "Service", svc("set-service")),
          el("label", {}, "Route", el("input", { id: "set-route", size: 36, placeholder: "color=green:80,color=blue:20" })),
          el("button", { id: "set-submit" }, "Set")));
    },
    async refresh() {
      const r = await get("traffic");
      const label = (g) => g.split(",").map((p) => p.split("=").pop()).join("/").replace(/^-$/, "untagged");
      const groups = [...new Set(r.views.flatMap((v) => v.groups.map((g) => g.group)))].sort();
      const columns = [{ title: "Service" }, { title: "Cluster" },
        ...groups.map((g) => ({ title: `${label(g)} %`, num: true })),
        { title: "Shares" }, { title: "Healthy", num: true }, { title: "Route" }, { title: "Shift" }];
      put("traffic-list", table("traffic-table", columns, r.views.map((v) => {
        const share = (g) => v.groups.find((x) => x.group === g);
        const healthy = v.groups.reduce((a, g) => a + g.healthy, 0);
        const total = v.groups.reduce((a, g) => a + g.instances, 0);
        return { attrs: { "data-service": v.service }, cells: [v.service, r.cluster,
          ...groups.map((g) => el("span", { "data-group": label(g) }, share(g) ? share(g).share_percent.toFixed(1) : "-")),
          Plot.shareBar(v.groups.map((g) => ({ name: g.group, percent: g.share_percent }))),
          `${healthy}/${total}`, v.route ? `${v.route} (v${v.route_version})` : "by weight",
          v.shift && v.shift.state ? `${v.shift.target} ${v.shift.target_percent}% ${v.shift.state}` : "-"] };
      }), "no service has providers"));
      const names = r.views.map((v) => v.service);
      options(document.getElementById("shift-service"), names);
      options(document.getElementById("set-service"), names);
    },
  });
  async function shift() {
    const service = document.getElementById("shift-service").value;
    const target = document.getElementById("shift-target").value.trim();
    const text = document.getElementById("shift-percent").value.trim();
    if (!check(service, "Choose a service.") ||
        !check(/^[^=\s]+=[^=\s]+$/.test(target), `The target '${target}' is not key=value (e.g. color=green).`) ||
        !check(/^\d+$/.test(text) && Number(text) <= 100, `The percent '${text}' is not a whole number from 0 to 100.`)) return;
    await change("traffic/shift", { service, target, percent: Number(text) },
      `Send ${text}% of ${service}'s calls to ${target}?`);
  }
  async function setRoute() {
    const service = document.getElementById("set-service").value;
    const route = document.getElementById("set-route").value.trim();
    if (!check(service, "Choose a service.") || !check(route, "Enter a route, e.g. color=green:80,color=blue:20.")) return;
    await change("traffic/set", { service, route }, `Set the route of ${service} to ${route}?`);
  }

  // ---- Releases ----
  register("releases", {
    build(root) { root.append(el("h2", {}, "Releases"), hold("releases-list")); },
    async refresh() {
      const r = await get("releases");
      put("releases-list", table("releases-table",
        [{ title: "Service" }, { title: "Version" }, { title: "Previous" }, { title: "State" }, { title: "Groups" }, { title: "Message" }, { title: "Updated" }, { title: "" }],
        r.map((x) => ({ attrs: { "data-service": x.service }, cells: [x.service, `${x.version_key}=${x.version}`, x.previous, x.state,
          x.groups.map((g) => `${g.name}:${g.state || "waiting"}`).join(", "), x.message, ago(x.updated_unix_ms),
          el("span", {},
            x.state === "awaiting" ? el("button", { class: "plain", onclick: () =>
              change("release/continue", { service: x.service }, `Go on with the release of ${x.service}?`) }, "Continue") : "",
            ["running", "awaiting", "continuing", "failed"].includes(x.state) ? el("button", { class: "danger", onclick: () =>
              change("release/rollback", { service: x.service },
                `Roll back ${x.service} to ${x.version_key}=${x.previous}? Its calls go there at once.`) }, "Roll back") : "")] })),
        "no release recorded (formicactl release start)"));
    },
  });

  // ---- Transactions ----
  let chosenActivity = "";
  register("transactions", {
    build(root) {
      root.append(el("h2", {}, "Transactions"),
        el("form", { class: "action", onsubmit: (e) => { e.preventDefault(); Console.refresh(); } },
          el("label", {}, "Show", el("select", { id: "activity-states", onchange: () => Console.refresh() },
            el("option", { value: "" }, "unfinished"),
            el("option", { value: "COMMITTED" }, "committed"),
            el("option", { value: "ROLLED_BACK" }, "rolled back"),
            el("option", { value: "ACTIVE,COMMITTING,ROLLING_BACK,COMMITTED,ROLLED_BACK" }, "all")))),
        hold("activities-list"), hold("activity-detail"),
        // Outside what the refresh redraws, so a reason being typed stays.
        el("form", { class: "action", id: "activity-actions", hidden: "", onsubmit: (e) => e.preventDefault() },
          el("button", { id: "retry-submit", onclick: () =>
            change("dts/retry", { id: chosenActivity }, `Retry phase two of ${chosenActivity} now?`) }, "Retry"),
          el("label", {}, "Reason", el("input", { id: "settle-reason", size: 30 })),
          el("button", { class: "danger", id: "settle-submit", onclick: () => {
            const reason = document.getElementById("settle-reason").value.trim();
            if (check(reason, "Give a reason to settle the activity.")) {
              change("dts/settle", { id: chosenActivity, reason }, `Settle ${chosenActivity} without its participants?`);
            }
          } }, "Settle")));
    },
    async refresh() {
      const states = document.getElementById("activity-states").value;
      const r = await get(`dts/activities?states=${states}&limit=200`);
      put("activities-list", table("activities-table",
        [{ title: "Activity" }, { title: "Name" }, { title: "Initiator" }, { title: "State" }, { title: "Actions", num: true }, { title: "Begun" }],
        r.activities.map((a) => ({ attrs: { "data-activity": a.id }, cells: [
          el("a", { class: "link", onclick: () => { chosenActivity = a.id; Console.refresh(); } }, a.id),
          a.name, a.initiator, state(a.state), a.actions.length, ago(a.begun_unix_ms)] })), "no activity in this state"));
      if (!chosenActivity) return put("activity-detail");
      const a = await get(`dts/activity?id=${encodeURIComponent(chosenActivity)}`);
      put("activity-detail", el("h3", {}, `Activity ${a.id}: ${state(a.state)}`, a.reason ? ` (${a.reason})` : ""),
        table("actions-table", [{ title: "Participant" }, { title: "Action" }, { title: "State" }, { title: "Attempts", num: true }, { title: "Last error" }],
          a.actions.map((x) => ({ cells: [x.participant, x.name, state(x.state), x.attempts, x.last_error || "-"] }))));
      document.getElementById("activity-actions").hidden = false;
    },
  });

  // ---- Messaging ----
  const lag = { group: "", topic: "", series: {} };
  register("messaging", {
    build(root) {
      root.append(el("h2", {}, "Messaging"), hold("topics-list"),
        el("h3", {}, "Lag of a consumer group"),
        el("form", { class: "action", id: "lag-form", onsubmit: (e) => { e.preventDefault(); watchLag(); } },
          el("label", {}, "Group", el("input", { id: "lag-group", value: lag.group, size: 16 })),
          el("label", {}, "Topic (optional)", el("input", { id: "lag-topic", value: lag.topic, size: 16 })),
          el("button", { id: "lag-submit" }, "Watch")),
        hold("lag-plot"), hold("lag-list"), hold("dlq-list"),
        el("h3", {}, "Half messages"), hold("half-list"));
    },
    async refresh() {
      const t = await get("dms/topics");
      put("topics-list", table("topics-table",
        [{ title: "Topic" }, { title: "Queues", num: true }, { title: "Messages kept", num: true }, { title: "Produced", num: true }, { title: "Bytes", num: true }],
        t.topics.map((x) => ({ attrs: { "data-topic": x.name }, cells: [x.name, x.queues.length,
          x.queues.reduce((a, q) => a + Number(q.end_offset) - Number(q.first_offset), 0),
          x.queues.reduce((a, q) => a + Number(q.end_offset), 0), x.queues.reduce((a, q) => a + Number(q.bytes), 0)] }))));
      const h = await get("dms/half");
      put("half-list", table("half-table", [{ title: "Transaction" }, { title: "Topic" }, { title: "Checks", num: true }, { title: "State" }, { title: "" }],
        h.messages.map((m) => ({ cells: [m.transaction_id, m.topic, m.checks, m.parked ? "parked" : `next check ${ago(m.next_check_unix_ms)}`,
          m.parked ? el("button", { onclick: () => change("dms/resume", { transaction_id: m.transaction_id }, `Resume check-backs of ${m.transaction_id}?`) }, "Resume") : ""] })),
        "no half message"));
      if (!lag.group) return;
      const q = `group=${encodeURIComponent(lag.group)}&topic=${encodeURIComponent(lag.topic)}`;
      const r = await get(`dms/lag?${q}`);
      const now = Date.now();
      const byTopic = {};
      for (const x of r.queues) byTopic[x.topic] = (byTopic[x.topic] || 0) + Number(x.lag);
      for (const [topic, v] of Object.entries(byTopic)) push(lag.series[topic] = lag.series[topic] || [], now, v);
      put("lag-plot", Plot.lines(Object.entries(lag.series).map(([name, points]) => ({ name, points })), { unit: "" }));
      put("lag-list", el("p", { id: "lag-total" }, `${lag.group}: lag ${r.total}, dead letters ${r.dead_letters}`),
        table("lag-table", [{ title: "Topic" }, { title: "Queue", num: true }, { title: "Committed", num: true }, { title: "End", num: true }, { title: "Lag", num: true }],
          r.queues.map((x) => ({ cells: [x.topic, x.queue, x.committed, x.end_offset, x.lag] }))));
      const d = await get(`dms/dlq?${q}`);
      put("dlq-list", el("h3", {}, `Dead letters of ${lag.group}`),
        table("dlq-table", [{ title: "Topic" }, { title: "Message" }, { title: "Attempts", num: true }, { title: "Reason" }, { title: "Dead" }],
          d.letters.map((x) => ({ cells: [x.topic, `${x.ref.queue}/${x.ref.offset}`, x.attempts, x.reason, ago(x.dead_unix_ms)] })), "no dead letter"),
        d.letters.length ? el("button", { id: "replay-submit", onclick: () =>
          change("dms/replay", { group: lag.group, topic: lag.topic }, `Deliver ${d.letters.length} dead letters of ${lag.group} again?`) }, "Replay") : "");
    },
  });
  function watchLag() {
    const group = document.getElementById("lag-group").value.trim();
    const topic = document.getElementById("lag-topic").value.trim();
    if (!check(/^[A-Za-z0-9._:\/=-]{1,256}$/.test(group), group ? `The group '${group}' may hold only letters, digits and . _ - : / =.` : "Enter a consumer group.")) return;
    Object.assign(lag, { group, topic, series: {} });
    document.getElementById("message").hidden = true;
    Console.refresh();
  }

  // ---- LDC ----
  function shardsOf(text) {
    const out = new Set();
    for (const part of String(text || "").split(",").filter(Boolean)) {
      const [a, b] = part.split("-").map(Number);
      for (let s = a; s <= (Number.isNaN(b) || b === undefined ? a : b); s++) out.add(s);
    }
    return out;
  }
  register("ldc", {
    build(root) { root.append(el("h2", {}, "LDC"), hold("ldc-view")); },
    async refresh() {
      const r = await get("ldc");
      const owner = {};
      r.zones.forEach((z, i) => shardsOf(z.shards).forEach((s) => { owner[s] = [z.name, Plot.colorOf(z.name, i)]; }));
      const fenced = shardsOf(r.fenced);
      const cells = [];
      for (let s = 0; s < 100; s++) {
        const [zone, color] = owner[s] || ["none", "#c9ced6"];
        cells.push(el("div", { title: `shard ${s}: ${zone}${fenced.has(s) ? " (fenced)" : ""}`,
          style: `background:${fenced.has(s) ? "#555" : color}` }, String(s).padStart(2, "0")));
      }
      put("ldc-view", el("p", {}, `Rules version ${r.version}`, r.fenced ? `, fenced ${r.fenced}` : ""),
        table("zones-table", [{ title: "Zone" }, { title: "Kind" }, { title: "Data center" }, { title: "City" }, { title: "Shards" }],
          r.zones.map((z) => ({ cells: [z.name, z.kind, z.data_center, z.city, z.shards || "-"] })), "no rules published (formicactl ldc)"),
        el("h3", {}, "Shard owners"), el("div", { class: "shardmap" }, cells),
        el("h3", {}, "Clients"), table("clients-table", [{ title: "Client" }, { title: "Zone" }, { title: "Applied version", num: true }, { title: "" }],
          r.clients.map((c) => ({ cells: [c.client, c.zone, c.applied_version, c.lagging ? el("span", { class: "down" }, "lagging") : "current"] })), "no client reported"));
    },
  });

  // ---- Audit ----
  register("audit", {
    build(root) {
      root.append(el("h2", {}, "Audit trail"), hold("audit-list"),
        el("h2", {}, "Daemons' audit trail"), hold("daemon-audit-list"));
    },
    async refresh() {
      const r = await get("audit");
      put("audit-list", table("audit-table",
        [{ title: "When (UTC)" }, { title: "Who" }, { title: "Action" }, { title: "Target" }, { title: "Asked" }, { title: "Result" }],
        r.map((x) => ({ attrs: { class: x.ok ? "" : "refused" }, cells: [x.at, x.who, x.action, x.target, x.detail,
          el("span", { class: x.ok ? "up" : "down" }, x.result)] })), "no change made yet"));
      // Every operator act the daemons recorded (formicactl audit), newest first.
      const d = await get("audit/daemons");
      const when = (ms) => new Date(Number(ms)).toISOString().replace("T", " ").replace("Z", "");
      put("daemon-audit-list",
        ...d.unreachable.map((u) => el("p", { class: "down" }, `${u.daemon}: ${u.error}`)),
        table("daemon-audit-table",
          [{ title: "When (UTC)" }, { title: "Daemon" }, { title: "Identity" }, { title: "Action" }, { title: "Arguments" }, { title: "Result" }],
          d.trail.entries.map((x) => ({ attrs: { class: x.result === "OK" ? "" : "refused" },
            cells: [when(x.time_unix_ms), x.daemon, x.identity || `- (${x.peer})`, x.action, x.arguments,
              el("span", { class: x.result === "OK" ? "up" : "down" }, x.result)] })), "no operator act recorded yet"));
    },
  });

  Console.start();
})();
