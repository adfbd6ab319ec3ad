// TideMQ admin page: plain JavaScript, no build step, no third-party code. It calls the same
// HTTP API as any client (docs/http.md) and builds the page with DOM calls only (text is
// never parsed as HTML), so the server's strict Content-Security-Policy holds.
"use strict";

const API = "/api/v1";
const POLL_MS = 2000;
const state = { auth: null, timer: null, lagHistory: {}, view: null };

// --- small helpers ----------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

const enc = encodeURIComponent;
const fmt = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en"));
function secs(s) {
  if (s === null || s === undefined) return "—";
  if (s < 1) return (s * 1000).toFixed(1) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}
const when = (t) => new Date(t * 1000).toISOString().replace("T", " ").replace("Z", "");
function status(text, bad) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = bad ? "error" : "";
}

// --- the API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || "HTTP " + status);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body, prompt) {
  // X-TideMQ-Page: a 401 comes without a Basic challenge, so the browser does not pop up its
  // prompt unasked; the sign-in form (or its "browser prompt" button) takes over.
  const headers = { "Accept": "application/json" };
  if (!prompt) headers["X-TideMQ-Page"] = "1";
  if (state.auth && state.auth !== "browser") headers["Authorization"] = state.auth;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path.startsWith("/") ? path : API + "/" + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
  if (res.status === 401) { showSignIn(data && data.detail); throw new ApiError(401, data); }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// --- signing in -------------------------------------------------------------------------

function loadAuth() { state.auth = sessionStorage.getItem("tidemq-auth"); }
function saveAuth(value) {
  state.auth = value;
  if (value) sessionStorage.setItem("tidemq-auth", value);
  else sessionStorage.removeItem("tidemq-auth");
  renderWho();
}
function renderWho() {
  const who = document.getElementById("who");
  who.replaceChildren();
  if (state.auth) {
    const kind = state.auth === "browser" ? "browser prompt"
      : state.auth.startsWith("Bearer") ? "token" : "password";
    who.append("signed in (" + kind + ")",
      h("button", { id: "signout", type: "button", onclick: () => { saveAuth(null); route(); } },
        "Sign out"));
  }
}
function showSignIn(reason) {
  document.getElementById("signin-panel").hidden = false;
  document.getElementById("signin-error").textContent = reason || "";
}
function setupSignIn() {
  document.getElementById("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = document.getElementById("token").value.trim();
    const user = document.getElementById("user").value;
    const password = document.getElementById("password").value;
    if (token) saveAuth("Bearer " + token);
    else if (user) {
      const raw = new TextEncoder().encode(user + ":" + password);
      saveAuth("Basic " + btoa(String.fromCharCode(...raw)));
    } else return;
    document.getElementById("password").value = "";
    document.getElementById("token").value = "";
    document.getElementById("signin-panel").hidden = true;
    route();
  });
  // HTTP Basic through the browser's own prompt: one challenged request; the browser then
  // sends the credentials it asked for with the page's later requests to this server.
  document.getElementById("signin-prompt").addEventListener("click", async () => {
    try {
      await api("GET", "stats", undefined, true);
      saveAuth("browser");
      document.getElementById("signin-panel").hidden = true;
      route();
    } catch (e) {
      document.getElementById("signin-error").textContent = e.message;
    }
  });
}

// --- confirmation -----------------------------------------------------------------------

function confirmThen(text) {
  return new Promise((resolve) => {
    const box = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    box.hidden = false;
    const done = (answer) => {
      box.hidden = true;
      yes.removeEventListener("click", onYes);
      no.removeEventListener("click", onNo);
      resolve(answer);
    };
    const yes = document.getElementById("confirm-yes");
    const no = document.getElementById("confirm-no");
    const onYes = () => done(true);
    const onNo = () => done(false);
    yes.addEventListener("click", onYes);
    no.addEventListener("click", onNo);
  });
}

// --- charts -----------------------------------------------------------------------------

function sparkline(series, width, height) {
  const all = series.flat();
  const max = Math.max(1e-9, ...all);
  const s = svg("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img" });
  series.forEach((values, i) => {
    if (values.length < 2) return;
    const step = width / (values.length - 1);
    const pts = values.map((v, j) =>
      `${(j * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`);
    s.append(svg("polyline", { points: pts.join(" "), class: i ? "second" : "first" }));
  });
  return s;
}

function card(label, value, id) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label),
    h("div", { class: "value", id }, value));
}

// --- views ------------------------------------------------------------------------------

async function overview(view) {
  const s = await api("GET", "stats");
  const rates = s.samples;
  const last = rates.length ? rates[rates.length - 1] : null;
  view.replaceChildren(
    h("h2", {}, "Overview"),
    h("div", { class: "cards" },
      card("published / s", last ? fmt(Math.round(last.published_per_s)) : "—", "rate-pub"),
      card("delivered / s", last ? fmt(Math.round(last.delivered_per_s)) : "—", "rate-del"),
      card("connections", `${fmt(s.connections.binary)} binary, ${fmt(s.connections.http)} http`,
        "connections"),
      card("storage", bytes(s.storage_bytes), "storage"),
      card("disk free", bytes(s.disk_free_bytes), "disk"),
      card("fsync p99", secs(s.fsync_p99_seconds), "fsync"),
      card("topics", fmt(s.topics), "topics-count"),
      card("groups", fmt(s.groups), "groups-count")),
    h("p", { class: "legend" }, "Last ", secs(s.window_seconds), ": ",
      h("span", { class: "pub" }, "published"), " and ", h("span", { class: "del" }, "delivered"),
      " per second."),
    sparkline([rates.map((r) => r.published_per_s), rates.map((r) => r.delivered_per_s)], 600, 80),
    h("p", { class: "muted" }, "TideMQ " + s.version + ", up " + secs(s.uptime_seconds)));
}

async function topics(view) {
  const data = await api("GET", "topics");
  const rows = [];
  for (const t of data.topics) {
    let groups = [];
    try { groups = t.groups.length ? (await api("GET", `topics/${enc(t.name)}/groups`)).groups : []; }
    catch (e) { groups = []; }
    const lag = groups.map((g) => `${g.name}: ${fmt(g.lag)}`).join(", ");
    rows.push(h("tr", {},
      h("td", {}, h("a", { href: `#/topics/${enc(t.name)}` }, t.name)),
      h("td", { class: "num" }, t.partitions.length),
      h("td", { class: "num" }, fmt(t.messages)),
      h("td", {}, t.config.durability),
      h("td", {}, lag || h("span", { class: "muted" }, "no groups"))));
  }
  view.replaceChildren(h("h2", {}, "Topics"),
    h("table", { id: "topics-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "topic"), h("th", { class: "num" }, "partitions"),
        h("th", { class: "num" }, "messages"), h("th", {}, "durability"), h("th", {}, "groups: lag"))),
      h("tbody", {}, rows)));
}

async function topic(view, name) {
  const t = await api("GET", `topics/${enc(name)}`);
  const groups = (await api("GET", `topics/${enc(name)}/groups`)).groups;
  view.replaceChildren(
    h("h2", {}, "Topic ", t.name),
    h("p", {}, h("a", { href: `#/topics/${enc(t.name)}/browse/0` }, "Browse messages")),
    h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "partition"), h("th", { class: "num" }, "start"),
        h("th", { class: "num" }, "end"))),
      h("tbody", {}, t.partitions.map((p) => h("tr", {}, h("td", {}, p.partition),
        h("td", { class: "num" }, fmt(p.start_offset)), h("td", { class: "num" }, fmt(p.end_offset)))))),
    h("h2", {}, "Groups"),
    h("table", { id: "groups-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "group"), h("th", { class: "num" }, "lag"),
        h("th", { class: "num" }, "lag (age)"), h("th", { class: "num" }, "in flight"),
        h("th", { class: "num" }, "redelivered"), h("th", { class: "num" }, "dead letters"))),
      h("tbody", {}, groups.map((g) => h("tr", {},
        h("td", {}, h("a", { href: `#/topics/${enc(t.name)}/groups/${enc(g.name)}` }, g.name)),
        h("td", { class: "num" }, fmt(g.lag)), h("td", { class: "num" }, secs(g.lag_seconds)),
        h("td", { class: "num" }, fmt(g.in_flight)), h("td", { class: "num" }, fmt(g.redelivered)),
        h("td", { class: "num" }, h("a", { href: `#/topics/${enc(t.name)}/groups/${enc(g.name)}/dlq` },
          fmt(g.dead_lettered))))))),
    h("details", {}, h("summary", {}, "Settings"), h("pre", {}, JSON.stringify(t.config, null, 2))));
}

async function group(view, topicName, name) {
  const g = await api("GET", `topics/${enc(topicName)}/groups/${enc(name)}`);
  const key = topicName + "/" + name;
  const hist = (state.lagHistory[key] = state.lagHistory[key] || []);
  hist.push([g.lag, g.lag_seconds]);
  if (hist.length > 450) hist.shift(); // 15 minutes at one sample per 2 s
  view.replaceChildren(
    h("h2", {}, "Group ", g.name, " of ", h("a", { href: `#/topics/${enc(g.topic)}` }, g.topic)),
    h("div", { class: "cards" },
      card("lag (messages)", fmt(g.lag), "group-lag"),
      card("lag (age of oldest)", secs(g.lag_seconds), "group-lag-seconds"),
      card("in flight", fmt(g.in_flight), "group-inflight"),
      card("redelivered", fmt(g.redelivered), "group-redelivered"),
      card("dead-lettered", fmt(g.dead_lettered), "group-dead"),
      card("members", fmt(g.members), "group-members")),
    h("p", { class: "legend" }, "Lag in messages (blue) and seconds (green) while this page is open"),
    sparkline([hist.map((x) => x[0]), hist.map((x) => x[1])], 600, 60),
    h("p", {}, h("a", { href: `#/topics/${enc(g.topic)}/groups/${enc(g.name)}/dlq`, id: "dlq-link" },
      "Dead letters")),
    h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "partition"), h("th", { class: "num" }, "committed"),
        h("th", { class: "num" }, "end"), h("th", { class: "num" }, "lag"),
        h("th", { class: "num" }, "lag (age)"), h("th", { class: "num" }, "in flight"))),
      h("tbody", {}, g.partitions.map((p) => h("tr", {}, h("td", {}, p.partition),
        h("td", { class: "num" }, fmt(p.committed)), h("td", { class: "num" }, fmt(p.end_offset)),
        h("td", { class: "num" }, fmt(p.lag)), h("td", { class: "num" }, secs(p.lag_seconds)),
        h("td", { class: "num" }, fmt(p.in_flight)))))),
    h("details", {}, h("summary", {}, "Settings"), h("pre", {}, JSON.stringify(g.settings, null, 2))));
}

function payloadCell(m) {
  return h("td", {}, h("pre", {}, m.encoding === "base64" ? "(base64) " + m.payload : m.payload));
}

async function browse(view, topicName, partition, query) {
  const t = await api("GET", `topics/${enc(topicName)}`);
  const params = new URLSearchParams({ limit: "50" });
  if (query.get("from_offset")) params.set("from_offset", query.get("from_offset"));
  if (query.get("from_time")) params.set("from_time", query.get("from_time"));
  const data = await api("GET",
    `topics/${enc(topicName)}/partitions/${enc(partition)}/messages?${params}`);
  const form = h("form", { class: "inline", id: "browse-form" },
    h("label", {}, "Partition ", h("select", { id: "browse-partition" },
      t.partitions.map((p) => h("option", { value: p.partition,
        selected: String(p.partition) === String(partition) }, p.partition)))),
    h("label", {}, "From offset ", h("input", { id: "browse-offset", class: "narrow",
      value: query.get("from_offset") || "" })),
    h("label", {}, "or from time ", h("input", { id: "browse-time",
      placeholder: "2025-01-01T00:00:00Z", value: query.get("from_time") || "" })),
    h("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = document.getElementById("browse-partition").value;
    const q = new URLSearchParams();
    const o = document.getElementById("browse-offset").value.trim();
    const tm = document.getElementById("browse-time").value.trim();
    if (o) q.set("from_offset", o); else if (tm) q.set("from_time", tm);
    location.hash = `#/topics/${enc(topicName)}/browse/${enc(p)}?${q}`;
  });
  view.replaceChildren(
    h("h2", {}, "Messages of ", h("a", { href: `#/topics/${enc(t.name)}` }, t.name),
      ", partition ", partition),
    form,
    h("table", { id: "messages-table" },
      h("thead", {}, h("tr", {}, h("th", { class: "num" }, "offset"), h("th", {}, "stored"),
        h("th", {}, "key"), h("th", {}, "routing key"), h("th", {}, "payload"))),
      h("tbody", {}, data.messages.map((m) => h("tr", {},
        h("td", { class: "num" }, m.offset), h("td", {}, when(m.timestamp)),
        h("td", {}, m.key || ""), h("td", {}, m.routing_key || ""), payloadCell(m))))),
    h("p", {}, h("a", { href: `#/topics/${enc(t.name)}/browse/${enc(partition)}?from_offset=${data.next_offset}` },
      "Next page")));
}

async function deadLetters(view, topicName, name) {
  const base = `topics/${enc(topicName)}/groups/${enc(name)}/dlq`;
  const s = await api("GET", base);
  const list = await api("GET", base + "/messages?limit=100");
  const redrive = async (limit, ids) => {
    const what = ids ? `the ${fmt(ids.length)} selected` : limit ? `the oldest ${limit}` : `all ${fmt(s.count)}`;
    if (!(await confirmThen(`Redrive ${what} dead letters of group ${name}? They are delivered to this group again.`))) return;
    try {
      const r = await api("POST", base + "/redrive", ids ? { ids } : limit ? { limit } : {});
      const failed = (r.results || []).filter((x) => !x.ok);
      status(`Redrove ${fmt(r.moved)} dead letters; ${fmt(r.remaining)} left.` +
        (failed.length ? ` ${fmt(failed.length)} not redriven: ${failed[0].error.detail}` : ""),
        failed.length > 0);
    } catch (e) { status("Redrive failed: " + e.message, true); }
    route();
  };
  const limitInput = h("input", { id: "redrive-limit", class: "narrow", type: "number", min: "1" });
  // Selection of dead letters by their ids (redrive selected): checkboxes in the table.
  const boxes = list.messages.map((m) => h("input", { type: "checkbox", class: "dlq-pick",
    "data-id": m.id, "aria-label": "select " + m.id, onchange: () => pick() }));
  const selected = () => boxes.filter((b) => b.checked).map((b) => b.getAttribute("data-id"));
  const selButton = h("button", { id: "redrive-selected", type: "button", disabled: true,
    onclick: () => { const ids = selected(); if (ids.length) redrive(null, ids); } },
    "Redrive selected");
  const all = h("input", { type: "checkbox", id: "dlq-pick-all", "aria-label": "select all shown",
    disabled: !boxes.length,
    onchange: () => { for (const b of boxes) b.checked = all.checked; pick(); } });
  function pick() {
    const n = selected().length;
    selButton.disabled = n === 0;
    selButton.textContent = n ? `Redrive selected (${n})` : "Redrive selected";
  }
  view.replaceChildren(
    h("h2", {}, "Dead letters of ", h("a", { href: `#/topics/${enc(topicName)}/groups/${enc(name)}` },
      name), " (", topicName, ")"),
    h("div", { class: "cards" },
      card("dead letters", fmt(s.count) + (s.complete ? "" : "+"), "dlq-count"),
      card("oldest", secs(s.oldest_age_seconds), "dlq-oldest"),
      card("reasons", Object.entries(s.reasons).map(([k, v]) => `${k}: ${v}`).join(", ") || "—",
        "dlq-reasons")),
    h("p", {},
      h("button", { id: "redrive-all", type: "button", class: "danger", disabled: !s.count,
        onclick: () => redrive(null) }, "Redrive all"),
      " or the oldest ", limitInput, " ",
      h("button", { id: "redrive-some", type: "button", disabled: !s.count,
        onclick: () => { const n = parseInt(limitInput.value, 10); if (n > 0) redrive(n); } },
        "Redrive"),
      " or ", selButton),
    h("table", { id: "dlq-table" },
      h("thead", {}, h("tr", {}, h("th", {}, all), h("th", {}, "dead-lettered"), h("th", {}, "reason"),
        h("th", { class: "num" }, "deliveries"), h("th", {}, "origin"), h("th", {}, "payload"))),
      h("tbody", {}, list.messages.map((m, i) => h("tr", {},
        h("td", {}, boxes[i]),
        h("td", {}, when(m.dead_lettered_at)), h("td", {}, m.reason),
        h("td", { class: "num" }, m.delivery_count), h("td", {}, h("code", {}, m.origin_id)),
        payloadCell(m))))),
    ...(list.next ? [h("p", { class: "muted" }, "Showing the oldest 100.")] : []));
}

// --- routing ----------------------------------------------------------------------------

const ROUTES = [
  [/^#?\/?$/, (v) => overview(v)],
  [/^#\/topics$/, (v) => topics(v)],
  [/^#\/topics\/([^/]+)$/, (v, m) => topic(v, m[1])],
  [/^#\/topics\/([^/]+)\/browse\/(\d+)$/, (v, m, q) => browse(v, m[1], m[2], q)],
  [/^#\/topics\/([^/]+)\/groups\/([^/]+)$/, (v, m) => group(v, m[1], m[2])],
  [/^#\/topics\/([^/]+)\/groups\/([^/]+)\/dlq$/, (v, m) => deadLetters(v, m[1], m[2])],
];

async function route() {
  clearTimeout(state.timer);
  const view = document.getElementById("view");
  const [path, query] = (location.hash || "#/").split("?");
  for (const [re, fn] of ROUTES) {
    const m = path.match(re);
    if (!m) continue;
    const args = m.map((x, i) => (i ? decodeURIComponent(x) : x));
    try {
      await fn(view, args, new URLSearchParams(query || ""));
      view.dataset.loaded = path;
      if (!document.getElementById("signin-panel").hidden && state.auth) {
        document.getElementById("signin-panel").hidden = true;
      }
    } catch (e) {
      if (e.status !== 401) view.replaceChildren(h("p", { class: "error", id: "view-error" }, e.message));
      view.dataset.loaded = "error";
    }
    // Live views refresh themselves (not while a confirmation is open).
    if (/^#?\/?$|\/groups\/[^/]+$/.test(path)) {
      state.timer = setTimeout(() => {
        if (document.getElementById("confirm").hidden) route();
      }, POLL_MS);
    }
    return;
  }
  view.replaceChildren(h("p", {}, "No such page."));
}

document.addEventListener("DOMContentLoaded", () => {
  loadAuth();
  renderWho();
  setupSignIn();
  window.addEventListener("hashchange", route);
  route();
});
