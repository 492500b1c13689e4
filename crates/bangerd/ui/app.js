// banger's dashboard: a small single-page client of the /v1 API (the same
// API as the CLI). No framework, no build step; served by bangerd.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const main = $("#main");
let cleanups = []; // EventSources and timers of the current page

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Errors from the API, shown until dismissed.
function showError(err) {
  const box = h("div", { class: "error" },
    h("span", {}, err.message || String(err), err.hint ? h("span", { class: "muted" }, " — " + err.hint) : null),
    h("button", { type: "button", "aria-label": "Dismiss", onclick: () => box.remove() }, "×"));
  $("#errors").append(box);
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch("/v1" + path, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!r.ok) {
    const e = new Error((data && data.message) || `${method} ${path}: HTTP ${r.status}`);
    e.hint = data && data.hint;
    throw e;
  }
  return data;
}

async function act(fn) {
  try { return await fn(); } catch (e) { showError(e); }
}

function stream(path, handlers) {
  const es = new EventSource("/v1" + path);
  for (const [type, fn] of Object.entries(handlers)) {
    es.addEventListener(type, (ev) => fn(JSON.parse(ev.data)));
  }
  cleanups.push(() => es.close());
  return es;
}

function every(ms, fn) {
  const t = setInterval(fn, ms);
  cleanups.push(() => clearInterval(t));
}

const fmtBytes = (b) => b == null ? "–" : b >= 1 << 30 ? (b / (1 << 30)).toFixed(1) + " GiB" : (b / (1 << 20)).toFixed(0) + " MiB";
const stateEl = (s) => h("span", { class: `state state-${s}` }, s);

function spark(values, max) {
  const w = 120, hgt = 24;
  // The newest value at the right edge; one minute across.
  const n = values.length;
  const pts = values.map((v, i) => `${w - ((n - 1 - i) / 59) * w},${hgt - Math.min(1, (v || 0) / (max || 1)) * (hgt - 2) - 1}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("role", "img");
  const poly = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  poly.setAttribute("points", pts);
  svg.append(poly);
  return svg;
}

// Follows an operation to its end; calls render(op) on every change.
function followOp(id, render) {
  const refresh = () => act(async () => render(await api("GET", `/ops/${id}`)));
  const types = ["started", "step_started", "step_progress", "step_message", "step_finished", "finished"];
  const handlers = {};
  for (const t of types) handlers[t] = () => refresh();
  const es = stream(`/ops/${id}/events`, handlers);
  es.addEventListener("finished", () => es.close());
  refresh();
}

function opSummary(op) {
  const cur = op.steps.find((s) => s.status === "running");
  const done = op.steps.filter((s) => s.status === "succeeded" || s.status === "skipped").length;
  let text = `${op.kind} ${op.target}: ${op.state}`;
  if (op.state === "running") {
    text += ` — step ${done + 1}/${op.steps.length}${cur ? ": " + cur.title : ""}`;
    if (cur && cur.progress && cur.progress.total) text += ` (${Math.round(100 * cur.progress.current / cur.progress.total)}%)`;
    if (cur && cur.message) text += ` — ${cur.message}`;
  }
  if (op.error) text += ` — ${op.error.message}`;
  return text;
}

// ---- VMs ----------------------------------------------------------------
const samples = {}; // vm name -> {cpu: [], mem: []}

async function vmAction(name, action) {
  if (action === "rm") {
    if (!confirm(`Remove VM ${name} and its disks? This cannot be undone.`)) return;
    await act(() => api("DELETE", `/vms/${name}?force=true`));
    if (location.hash.startsWith("#/vm/")) location.hash = "#/";
    return;
  }
  if (action === "snapshot") return act(async () => {
    const snap = prompt(`Name of the snapshot of ${name} (empty: ${name}-DATE-TIME)`, "");
    if (snap === null) return;
    watchInline(await api("POST", `/vms/${name}/snapshot`, snap ? { name: snap } : {}));
  });
  if (action === "fork") return act(async () => {
    const fork = prompt(`Name of the new VM forked from ${name}`, `${name}-fork`);
    if (!fork) return;
    watchInline(await api("POST", `/vms/${name}/fork`, { name: fork }));
  });
  if (action === "stop") return act(() => api("POST", `/vms/${name}/stop`, {}));
  if (action === "start") return act(async () => { const op = await api("POST", `/vms/${name}/start`); watchInline(op); });
  if (action === "restart") return act(async () => {
    await api("POST", `/vms/${name}/stop`, {});
    const op = await api("POST", `/vms/${name}/start`);
    watchInline(op);
  });
}

function watchInline(op) {
  const line = $("#op-line");
  if (!line) return;
  followOp(op.id, (o) => { line.textContent = opSummary(o); });
}

function actions(vm) {
  const b = (label, action, cls) => h("button", { type: "button", class: cls, "data-action": action, "data-vm": vm.name, onclick: () => vmAction(vm.name, action) }, label);
  const running = vm.state === "running";
  return h("div", { class: "actions" },
    running ? b("Stop", "stop") : vm.state === "stopped" ? b("Start", "start") : null,
    running ? b("Restart", "restart") : null,
    running || vm.state === "stopped" ? b("Snapshot", "snapshot") : null,
    running ? b("Fork", "fork") : null,
    b("Delete", "rm", "danger"));
}

async function pageVms() {
  const images = await act(() => api("GET", "/images")) || { images: [] };
  const form = h("form", { class: "inline", id: "create-form", "aria-label": "Create a VM" },
    h("label", {}, "Name", h("input", { name: "name", required: true, pattern: "[a-z0-9][a-z0-9-]*", "aria-describedby": "name-help", autocomplete: "off" })),
    h("label", {}, "Image", h("select", { name: "image" }, images.images.map((i) => h("option", { value: i.name }, i.name)))),
    h("label", {}, "CPUs", h("input", { name: "cpus", type: "number", min: 1, max: 32, placeholder: "default" })),
    h("label", {}, "Memory", h("input", { name: "memory", placeholder: "e.g. 1G" })),
    h("button", { type: "submit" }, "Create VM"),
    h("span", { id: "name-help", class: "muted" }, "lowercase letters, digits and '-'"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = { name: f.get("name") };
    if (f.get("image")) body.image = f.get("image");
    if (f.get("cpus")) body.cpus = Number(f.get("cpus"));
    if (f.get("memory")) body.memory = f.get("memory");
    act(async () => { const op = await api("POST", "/vms", body); form.reset(); watchInline(op); });
  });
  const tbody = h("tbody", { id: "vm-rows" });
  main.replaceChildren(
    h("h2", {}, "Virtual machines"),
    form,
    h("p", { id: "op-line", class: "progress muted", "aria-live": "polite" }),
    h("table", { "aria-label": "VMs" },
      h("thead", {}, h("tr", {}, ["Name", "State", "Address", "CPUs", "Memory", "CPU", "RSS", ""].map((c) => h("th", { scope: "col" }, c)))),
      tbody));
  stream("/vms/stream", {
    vms: (snap) => {
      $("#live").textContent = "live";
      tbody.replaceChildren(...snap.vms.map(({ vm, cpu_percent, rss_bytes }) => {
        const hist = samples[vm.name] || (samples[vm.name] = { cpu: [], mem: [] });
        hist.cpu.push(cpu_percent || 0); hist.mem.push(rss_bytes || 0);
        if (hist.cpu.length > 60) { hist.cpu.shift(); hist.mem.shift(); }
        return h("tr", { "data-vm": vm.name },
          h("td", {}, h("a", { href: `#/vm/${vm.name}` }, vm.name)),
          h("td", { "data-state": vm.state }, stateEl(vm.state)),
          h("td", {}, vm.ip),
          h("td", {}, vm.cpus),
          h("td", {}, fmtBytes(vm.memory_mib * 1048576)),
          h("td", { title: cpu_percent == null ? "" : `${cpu_percent}%` }, spark(hist.cpu, 100 * vm.cpus), " ", cpu_percent == null ? "" : `${cpu_percent}%`),
          h("td", {}, spark(hist.mem, vm.memory_mib * 1048576), " ", fmtBytes(rss_bytes)),
          h("td", {}, actions(vm)));
      }));
      if (!snap.vms.length) tbody.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No VMs yet: create one above.")));
    },
  });
}

async function pageVm(name) {
  const vm = await act(() => api("GET", `/vms/${name}`));
  if (!vm) { main.replaceChildren(h("p", {}, `No VM ${name}.`, " ", h("a", { href: "#/" }, "Back to the list"))); return; }
  const details = h("dl", { id: "vm-details" });
  const acts = h("div", { id: "vm-actions" });
  const render = (v) => {
    details.replaceChildren(
      h("dt", {}, "State"), h("dd", { id: "vm-state" }, stateEl(v.state), v.stop_reason ? h("span", { class: "muted" }, ` (${v.stop_reason})`) : null),
      h("dt", {}, "Address"), h("dd", {}, `${v.ip} (${v.mac})`),
      h("dt", {}, "Image"), h("dd", {}, v.image),
      h("dt", {}, "Backend"), h("dd", {}, `${v.backend} (${v.accel})`),
      h("dt", {}, "Resources"), h("dd", {}, `${v.cpus} CPUs, ${fmtBytes(v.memory_mib * 1048576)}, work disk ${fmtBytes(v.work_disk_bytes)}`),
      h("dt", {}, "Network"), h("dd", {}, v.isolated ? "isolated" : "not isolated", v.egress_allow ? `, egress only to ${v.egress_allow.join(", ") || "nothing"}` : ""),
      ...(v.agent ? [h("dt", {}, "Agent"), h("dd", {}, v.agent)] : []));
    acts.replaceChildren(actions(v));
  };
  render(vm);
  const sessions = h("tbody", { id: "sessions" });
  const logs = h("pre", { id: "session-log", "aria-live": "polite", "aria-label": "Session output" });
  const ports = h("tbody", { id: "ports" });
  const serial = h("pre", { id: "serial", "aria-label": "Serial console" });
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← VMs")),
    h("h2", {}, vm.name), details, acts,
    h("p", { id: "op-line", class: "progress muted", "aria-live": "polite" }),
    h("h2", {}, "Sessions"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Name", "State", "Command", ""].map((c) => h("th", { scope: "col" }, c)))), sessions),
    logs,
    h("h2", {}, "Listening ports"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Proto", "Address", "Port", "Process", "Link"].map((c) => h("th", { scope: "col" }, c)))), ports),
    h("h2", {}, "Serial console"), serial);

  // Stdout and stderr side by side in one pane, stderr marked.
  let following = [];
  const follow = (s) => {
    following.forEach((f) => f.close());
    logs.textContent = "";
    const add = (text, cls) => {
      logs.append(h("span", cls ? { class: cls } : {}, text));
      logs.scrollTop = logs.scrollHeight;
    };
    following = [
      stream(`/sessions/${s}/logs/stream?stream=stdout`, {
        output: (ev) => add(ev.text, null),
        end: (ev) => { add(`\n[session ${ev.state}${ev.exit_code != null ? " with code " + ev.exit_code : ""}]\n`, "muted"); following.forEach((f) => f.close()); },
      }),
      stream(`/sessions/${s}/logs/stream?stream=stderr`, {
        output: (ev) => add(ev.text, "stderr"),
      }),
    ];
  };
  const loadSessions = async () => {
    const l = await api("GET", `/sessions?vm=${encodeURIComponent(name)}`);
    sessions.replaceChildren(...l.sessions.map((s) => h("tr", { "data-session": s.name },
      h("td", {}, s.name), h("td", {}, stateEl(s.state), s.exit_code != null ? ` (${s.exit_code})` : ""),
      h("td", {}, h("code", {}, s.command.join(" "))),
      h("td", {}, h("button", { type: "button", "data-logs": s.name, onclick: () => follow(s.name) }, "Show output")))));
    if (!l.sessions.length) sessions.replaceChildren(h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No sessions.")));
  };
  const loadPorts = async () => {
    const p = await api("GET", `/vms/${name}/ports`);
    ports.replaceChildren(...p.ports.map((x) => h("tr", {},
      h("td", {}, x.proto), h("td", {}, x.address), h("td", {}, x.port), h("td", {}, x.process || "–"),
      h("td", {}, x.url ? h("a", { href: x.url, target: "_blank", rel: "noopener" }, x.url) : "–"))));
  };
  let offset = 0;
  const loadSerial = async () => {
    const r = await fetch(`/v1/vms/${name}/logs?offset=${offset}`);
    if (!r.ok) return;
    offset = Number(r.headers.get("X-Log-Offset") || offset);
    const t = await r.text();
    if (t) { serial.textContent = (serial.textContent + t).slice(-20000); serial.scrollTop = serial.scrollHeight; }
  };
  const refreshVm = async () => {
    const v = await api("GET", `/vms/${name}`).catch(() => null);
    if (!v) return;
    render(v);
    if (v.state === "running") { loadPorts().catch(() => {}); }
  };
  act(loadSessions); loadSerial();
  if (vm.state === "running") act(loadPorts);
  every(2000, () => { loadSessions().catch(() => {}); loadSerial(); });
  every(1000, refreshVm);
}

// ---- Images and operations ----------------------------------------------
async function pageImages() {
  const [imgs, ops] = await Promise.all([act(() => api("GET", "/images")), act(() => api("GET", "/ops?all=true&limit=20"))]);
  const building = h("ul", { id: "builds" });
  main.replaceChildren(
    h("h2", {}, "Images"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Name", "Source", "Init", "Kernel", "Backends", "Created"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, (imgs ? imgs.images : []).map((i) => h("tr", {},
        h("td", {}, i.name), h("td", {}, i.source), h("td", {}, i.init), h("td", {}, i.kernel_version || "–"),
        h("td", {}, i.backends.join(", ")), h("td", {}, new Date(i.created_at).toLocaleString()))))),
    h("h2", {}, "Builds and imports"), building,
    h("p", { class: "muted" }, "Build with: ", h("code", {}, "banger image build NAME")));
  for (const op of (ops ? ops.ops : []).filter((o) => o.kind.startsWith("image."))) {
    const li = h("li", { "data-op": op.id }, opSummary(op));
    building.append(li);
    if (op.state === "running") followOp(op.id, (o) => { li.textContent = opSummary(o); });
  }
}

// ---- Snapshots ------------------------------------------------------------
const mib = (b) => `${Math.round(b / 1048576)} MiB`;

async function pageSnapshots() {
  const list = await act(() => api("GET", "/snapshots"));
  const tbody = h("tbody", {});
  main.replaceChildren(h("h2", {}, "Snapshots"),
    h("p", { id: "op-line", class: "progress muted", "aria-live": "polite" }),
    h("table", {}, h("thead", {}, h("tr", {}, ["Name", "VM", "Image", "Backend", "Holds", "Size", "Taken", "Actions"].map((c) => h("th", { scope: "col" }, c)))), tbody),
    h("p", { class: "muted" }, "Take one from a VM's page, or with ", h("code", {}, "banger vm snapshot VM")));
  for (const s of list ? list.snapshots : []) {
    const restore = () => act(async () => {
      const name = prompt(`Name of the new VM from snapshot ${s.name}`, "");
      if (!name) return;
      watchInline(await api("POST", "/vms", { name, from_snapshot: s.name }));
    });
    const remove = () => act(async () => {
      if (!confirm(`Remove snapshot ${s.name} and its files?`)) return;
      await api("DELETE", `/snapshots/${s.name}`);
      route();
    });
    tbody.append(h("tr", { "data-snapshot": s.name },
      h("td", {}, s.name), h("td", {}, s.source_vm), h("td", {}, s.image), h("td", {}, s.backend),
      h("td", {}, s.with_memory ? "running guest (memory + disks)" : "disks"),
      h("td", {}, mib(s.size_bytes)), h("td", {}, new Date(s.created_at).toLocaleString()),
      h("td", {}, h("div", { class: "actions" },
        h("button", { type: "button", onclick: restore }, "New VM from it"),
        h("button", { type: "button", class: "danger", onclick: remove }, "Delete")))));
  }
}

async function pageOps() {
  const ops = await act(() => api("GET", "/ops?all=true&limit=50"));
  const tbody = h("tbody", {});
  main.replaceChildren(h("h2", {}, "Operations"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Started", "Operation", "State", "Steps"].map((c) => h("th", { scope: "col" }, c)))), tbody));
  for (const op of ops ? ops.ops : []) {
    const row = h("tr", { "data-op": op.id });
    const render = (o) => row.replaceChildren(
      h("td", {}, new Date(o.created_at).toLocaleTimeString()),
      h("td", {}, `${o.kind} ${o.target}`),
      h("td", {}, stateEl(o.state === "running" ? "running-op" : o.state), o.error ? h("div", { class: "muted" }, o.error.message) : null),
      h("td", { class: "progress" }, o.steps.map((s) => h("div", {}, `${s.status === "succeeded" ? "✓" : s.status === "running" ? "…" : s.status === "failed" ? "✗" : "·"} ${s.title}${s.message ? " — " + s.message : ""}`))));
    render(op);
    tbody.append(row);
    if (op.state === "running") followOp(op.id, render);
  }
}

// ---- Router ---------------------------------------------------------------
async function route() {
  $("#errors").replaceChildren();
  for (const c of cleanups) c();
  cleanups = [];
  $("#live").textContent = "";
  const hash = location.hash || "#/";
  const section = hash.startsWith("#/images") ? "images" : hash.startsWith("#/ops") ? "ops" : hash.startsWith("#/snapshots") ? "snapshots" : "vms";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  if (hash.startsWith("#/vm/")) await pageVm(decodeURIComponent(hash.slice(5)));
  else if (section === "images") await pageImages();
  else if (section === "ops") await pageOps();
  else if (section === "snapshots") await pageSnapshots();
  else await pageVms();
  main.focus({ preventScroll: true });
}
window.addEventListener("hashchange", route);
route();
