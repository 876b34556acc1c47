// souverix-crdt dashboard: renders /api/federation and re-renders on /api/events.
//
// Every value shown comes from replicated state written by other planes, so the DOM is built
// with textContent and attributes only (never innerHTML), and the page's Content Security Policy
// allows no inline script or style.
"use strict";

(() => {
  const LEVELS = ["global", "regional", "local", "autonomous"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    data: null,
    collapsed: new Set(), // scopes whose children are hidden
    expanded: new Set(), // scopes whose details are shown
    details: new Map(), // scope -> {revision, data}
    inflight: new Set(), // scopes whose details are being fetched
    overlay: "none",
    loading: false,
    again: false,
  };

  // ---------------------------------------------------------------- DOM helpers

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    applyProps(el, props);
    appendAll(el, children);
    return el;
  }

  function s(tag, props, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    applyProps(el, props);
    appendAll(el, children);
    return el;
  }

  function applyProps(el, props) {
    if (!props) return;
    for (const [key, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
      else if (key === "text") el.textContent = String(value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function appendAll(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function replace(id, ...children) {
    const el = document.getElementById(id);
    el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
    return el;
  }

  // ---------------------------------------------------------------- formatting

  function fmtValue(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "string") return value;
    if (typeof value === "object" && !Array.isArray(value) && Object.keys(value).length === 1 && "bytes" in value) {
      return `0x${value.bytes}`;
    }
    return JSON.stringify(value);
  }

  function fmtBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  function fmtTime(ms) {
    if (ms === null || ms === undefined) return "never";
    return `${new Date(ms).toISOString().slice(0, 16).replace("T", " ")} UTC`;
  }

  function shortKey(keyId) {
    return keyId ? keyId.slice(0, 12) : "—";
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function statusClass(row) {
    const n = row.nodes;
    if (n.total === 0) return "status-empty";
    if (n.live === n.total) return "status-healthy";
    if (n.autonomous === n.total) return "status-autonomous";
    return n.delayed ? "status-degraded" : "status-autonomous";
  }

  function linkText(row) {
    if (row.link === null) return { text: "root", cls: "link" };
    // A lone replica's page knows no link state (the views count such a link as up).
    if (state.data.kind === "replica") return { text: "link not known", cls: "link" };
    if (row.air_gapped) return { text: "bundle", cls: "link link-bundle" };
    if (row.link === "down") return { text: "link down", cls: "link link-down" };
    return { text: "link up", cls: "link" };
  }

  function debtText(row) {
    if (!row.sync_debt) return "debt —";
    const n = row.sync_debt.envelopes;
    return n ? `debt ${row.sync_debt_text} (${plural(n, "envelope")})` : `debt ${row.sync_debt_text}`;
  }

  // ---------------------------------------------------------------- rows of the tree

  function rows(root) {
    const out = [];
    (function walk(row, depth) {
      out.push({ row, depth });
      for (const child of row.children) walk(child, depth + 1);
    })(root, 0);
    return out;
  }

  function trustEntry(key) {
    return state.data.trust.find((t) => t.key_id === key) || null;
  }

  function boundaryKeys(scope) {
    const entry = state.data.policies.scopes.find((e) => e.scope === scope);
    if (!entry) return [];
    return Object.entries(entry.values).filter(([, v]) => !v.inherited).map(([k]) => k);
  }

  function overlayChip(row) {
    if (state.overlay === "boundaries") {
      const keys = boundaryKeys(row.scope);
      return h("span", { class: "overlay-chip", text: keys.length ? `policy boundary: sets ${keys.join(", ")}` : "inherits every policy" });
    }
    if (state.overlay.startsWith("key:")) {
      const entry = trustEntry(state.overlay.slice(4));
      if (!entry) return null;
      const inside = entry.scopes.includes(row.scope);
      return h("span", {
        class: "overlay-chip",
        text: inside ? `${entry.plane}'s key may write: ${entry.collections.join(", ")}` : `outside ${entry.plane}'s domain`,
      });
    }
    return null;
  }

  function scopeClasses(row) {
    const classes = ["scope", `level-${row.level}`];
    if (state.collapsed.has(row.scope)) classes.push("collapsed");
    if (state.overlay === "boundaries" && boundaryKeys(row.scope).length) classes.push("boundary");
    if (state.overlay.startsWith("key:")) {
      const entry = trustEntry(state.overlay.slice(4));
      classes.push(entry && entry.scopes.includes(row.scope) ? "in-domain" : "out-domain");
    }
    return classes;
  }

  function renderRow(row, depth = 0) {
    const hasChildren = row.children.length > 0;
    const collapsed = state.collapsed.has(row.scope);
    const expanded = state.expanded.has(row.scope);
    const link = linkText(row);
    const badges = [];
    if (row.autonomy === "conditional") badges.push(h("span", { class: "badge badge-conditional", title: "conditional autonomy: a higher authority wins concurrent writes", text: "conditional" }));
    if (row.air_gapped) badges.push(h("span", { class: "badge badge-airgapped", title: "reachable only by bundle files", text: "air-gapped" }));
    if (row.isolated) badges.push(h("span", { class: "badge badge-autonomous", title: "operating cut off from the viewer", text: "AUTONOMOUS" }));
    const detailsId = `details-${row.scope.replaceAll("/", "--")}`;
    const li = h("li", { class: scopeClasses(row), dataset: { scope: row.scope, plane: row.name, level: row.level } },
      h("div", { class: "row" },
        h("span", { class: "who" },
          hasChildren
            ? h("button", {
              type: "button", class: "toggle", "aria-expanded": collapsed ? "false" : "true",
              "aria-label": `${collapsed ? "Expand" : "Collapse"} ${row.name}`,
              onclick: () => { toggle(state.collapsed, row.scope); renderTree(); },
            })
            : h("span", { class: "toggle-spacer" }),
          h("span", { class: "name", text: row.name, title: row.scope }),
          h("span", { class: "level-tag", text: row.level }),
          h("span", { class: "badges" }, badges)),
        h("span", { class: "nodes", dataset: { total: row.nodes.total }, title: `${row.nodes.total} in its subtree, ${row.own_nodes.total} in its own scope`, text: plural(row.nodes.total, "node") }),
        h("span", { class: ["status", statusClass(row)], text: row.status }),
        h("span", { class: ["drift", row.nodes.drifted ? "has-drift" : ""], text: `drift ${row.nodes.drifted}` }),
        h("span", { class: "sync" },
          h("span", { class: link.cls, text: link.text }), " · ",
          h("span", { class: ["debt", row.sync_debt && row.sync_debt.envelopes ? "has-debt" : ""], text: debtText(row) })),
        h("button", {
          type: "button", class: "details-toggle", "aria-expanded": expanded ? "true" : "false", "aria-controls": detailsId,
          text: expanded ? "hide" : "details",
          onclick: () => { toggle(state.expanded, row.scope); renderTree(); },
        }),
        overlayChip(row),
      ),
      expanded ? renderDetails(row, detailsId) : null,
      hasChildren ? h("ul", { role: "group" }, row.children.map((child) => renderRow(child, depth + 1))) : null,
    );
    // Rows keep one width so their columns line up across depths; the name cell indents.
    li.querySelector(".row").style.setProperty("--depth", String(depth));
    return li;
  }

  function toggle(set, key) {
    if (set.has(key)) set.delete(key); else set.add(key);
  }

  function renderTree() {
    const data = state.data;
    const tree = document.getElementById("tree");
    tree.className = ["tree", state.overlay === "boundaries" ? "overlay-boundaries" : "", state.overlay.startsWith("key:") ? "overlay-key" : ""].filter(Boolean).join(" ");
    tree.replaceChildren(renderRow(data.views.fleet.root));
    const note = document.getElementById("overlay-note");
    if (state.overlay.startsWith("key:")) {
      const entry = trustEntry(state.overlay.slice(4));
      note.hidden = !entry;
      if (entry) note.textContent = `Trust domain of ${entry.plane}'s key ${shortKey(entry.key_id)}: the subtree of ${entry.scope} (${entry.capabilities.join(", ")}).`;
    } else if (state.overlay === "boundaries") {
      note.hidden = false;
      note.textContent = "Policy boundaries: scopes that set a policy of their own (outlined); the others inherit every policy from above.";
    } else {
      note.hidden = true;
    }
  }

  // ---------------------------------------------------------------- details of one scope

  function renderDetails(row, id) {
    const box = h("div", { class: "details", id });
    const cached = state.details.get(row.scope);
    if (!cached || cached.revision !== state.data.revision) {
      box.append(h("p", { class: "note", text: "loading…" }));
      loadDetails(row.scope);
      if (!cached) return box;
    }
    const d = cached.data;
    const effective = (collection) => {
      const entries = Object.entries(d.effective[collection]);
      if (!entries.length) return h("p", { class: "note", text: "none in force" });
      return h("dl", null, entries.map(([key, v]) => [
        h("dt", { text: key }),
        h("dd", null,
          h("span", { class: v.inherited ? "cell-inherited" : "cell-set", text: fmtValue(v.value) }),
          " ",
          h("span", { class: "origin-inline note", text: v.inherited ? `↑ from ${v.set_at}` : "● set here" })),
      ]));
    };
    box.replaceChildren(
      h("div", { class: "cols" },
        h("div", null,
          h("h4", { text: "Authority" }),
          h("dl", null,
            h("dt", { text: "scope" }), h("dd", { class: "mono", text: d.scope }),
            h("dt", { text: "master of record" }), h("dd", { text: `${d.master} (${d.level})` }),
            h("dt", { text: "autonomy" }), h("dd", { text: `${row.autonomy}${row.air_gapped ? ", air-gapped" : ""}${row.isolated ? ", operating cut off" : ""}` }),
            h("dt", { text: "uplink" }), h("dd", { text: row.link === null ? "— (view root)" : `${row.air_gapped ? "bundle files" : row.link}, last sync ${fmtTime(row.last_sync_ms)}` }),
            h("dt", { text: "may write here" }), h("dd", { title: d.writers.map((w) => `${w.plane}: ${w.collections.join(", ")}`).join("\n"), text: d.writers.map((w) => w.plane).join(", ") || "—" }),
            h("dt", { text: "judged at" }), h("dd", { text: `${d.seen_at}'s replica` }),
          )),
        h("div", null, h("h4", { text: "Effective policies" }), effective("policies")),
        h("div", null, h("h4", { text: "Desired versions" }), effective("versions")),
        h("div", null,
          h("h4", { text: "Nodes of this scope" }),
          h("dl", null,
            h("dt", { text: "total" }), h("dd", { text: `${row.own_nodes.total}` }),
            h("dt", { text: "status" }), h("dd", { text: row.own_nodes.label }),
            h("dt", { text: "delayed" }), h("dd", { text: row.delayed.join(", ") || "none" }),
            h("dt", { text: "drift" }), h("dd", { text: row.drift.length ? row.drift.map((x) => `${x.node_id} ${x.collection}.${x.key}: ${fmtValue(x.reported)} ≠ ${fmtValue(x.desired)}`).join("; ") : "none" }),
            h("dt", { text: "conflicts" }), h("dd", { text: `${d.conflicts.length} settled here` }),
          )),
      ),
    );
    return box;
  }

  async function loadDetails(scope) {
    if (state.inflight.has(scope)) return;
    state.inflight.add(scope);
    const revision = state.data.revision;
    try {
      const response = await fetch(`/api/scope/${scope.split("/").map(encodeURIComponent).join("/")}`, { cache: "no-store" });
      if (!response.ok) return;
      const data = await response.json();
      state.details.set(scope, { revision, data });
      if (state.expanded.has(scope)) renderTree();
    } catch (err) {
      console.warn("scope details", scope, err);
    } finally {
      state.inflight.delete(scope);
    }
  }

  // ---------------------------------------------------------------- the sync graph

  function renderGraph() {
    const { nodes, edges } = state.data.graph;
    const W = 128, H = 50, GAP_X = 26, GAP_Y = 84, PAD = 12;
    const children = new Map(nodes.map((n) => [n.name, []]));
    let root = null;
    for (const n of nodes) {
      if (n.parent && children.has(n.parent)) children.get(n.parent).push(n.name); else if (!root) root = n.name;
    }
    // Tidy-ish tree layout: leaves take consecutive slots, a parent sits over its children.
    const pos = new Map();
    let slot = 0, maxDepth = 0;
    (function place(name, depth) {
      maxDepth = Math.max(maxDepth, depth);
      const kids = children.get(name);
      if (!kids.length) { pos.set(name, { x: slot++, depth }); return; }
      kids.forEach((k) => place(k, depth + 1));
      const xs = kids.map((k) => pos.get(k).x);
      pos.set(name, { x: (Math.min(...xs) + Math.max(...xs)) / 2, depth });
    })(root, 0);
    const LABEL_ROOM = 96; // the rightmost column's edge labels extend past its box
    const width = PAD * 2 + slot * W + (slot - 1) * GAP_X + LABEL_ROOM;
    const height = PAD * 2 + (maxDepth + 1) * H + maxDepth * GAP_Y;
    const at = (name) => {
      const p = pos.get(name);
      return { x: PAD + p.x * (W + GAP_X), y: PAD + p.depth * (H + GAP_Y) };
    };
    const marker = (id, reverse) => s("marker", { id, viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: reverse ? "auto-start-reverse" : "auto" },
      s("path", { d: "M0,0 L10,5 L0,10 z" }));
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Sync relationship graph" },
      s("defs", null, marker("arrow-end", false), marker("arrow-start", true)));
    for (const e of edges) {
      if (!pos.has(e.upstream) || !pos.has(e.downstream)) continue;
      const a = at(e.upstream), b = at(e.downstream);
      const x1 = a.x + W / 2, y1 = a.y + H, x2 = b.x + W / 2, y2 = b.y;
      const my = (y1 + y2) / 2;
      const classes = ["edge"];
      if (e.air_gapped) classes.push("edge-airgapped"); else if (e.state === "down") classes.push("edge-down");
      const down = Boolean(e.down) || e.air_gapped;
      const up = Boolean(e.up);
      svg.append(s("path", {
        class: classes.join(" "), dataset: { edge: `${e.upstream}->${e.downstream}` },
        d: `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}`,
        "marker-end": down ? "url(#arrow-end)" : null,
        "marker-start": up ? "url(#arrow-start)" : null,
      }));
      const lines = [];
      if (e.up) lines.push({ text: `↑ ${e.up.mode}${e.up.frequency ? ` ${e.up.frequency}` : ""}` });
      if (e.down) lines.push({ text: `↓ ${e.down.mode}${e.down.frequency ? ` ${e.down.frequency}` : ""}` });
      if (e.air_gapped) lines.push({ text: "bundle files" });
      if (!e.air_gapped && e.state === "down") lines.push({ text: "DOWN", alert: true });
      if (e.debt && e.debt.envelopes) lines.push({ text: `debt ${e.debt_text} · ${e.debt.envelopes} env`, alert: true });
      // Labels sit just above the lower plane, right of the arrow: each plane has its own
      // column, so labels of sibling edges never overlap however many there are.
      lines.forEach((line, i) => {
        svg.append(s("text", {
          class: ["edge-label", line.alert ? "alert" : ""],
          x: x2 + 6, y: y2 - 8 - (lines.length - 1 - i) * 12, text: line.text,
        }));
      });
    }
    // A lone replica knows no sync relationships: its tree is drawn from the delegations.
    const linked = new Set(edges.map((e) => `${e.upstream}->${e.downstream}`));
    for (const n of nodes) {
      if (!n.parent || !pos.has(n.parent) || !pos.has(n.name) || linked.has(`${n.parent}->${n.name}`)) continue;
      const a = at(n.parent), b = at(n.name);
      const x1 = a.x + W / 2, y1 = a.y + H, x2 = b.x + W / 2, y2 = b.y, my = (y1 + y2) / 2;
      svg.append(s("path", { class: "edge edge-delegation", d: `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}` }));
    }
    for (const n of nodes) {
      if (!pos.has(n.name)) continue;
      const p = at(n.name);
      const flags = [n.autonomy === "conditional" ? "conditional" : "", n.air_gapped ? "air-gapped" : ""].filter(Boolean).join(" · ");
      svg.append(s("g", { class: ["node", `level-${n.level}`, n.isolated ? "isolated" : ""], dataset: { plane: n.name }, transform: `translate(${p.x},${p.y})` },
        s("title", { text: `${n.scope} — ${n.level}, autonomy ${n.autonomy}${n.air_gapped ? ", air-gapped" : ""}` }),
        s("rect", { width: W, height: H, rx: 8, ry: 8 }),
        s("text", { x: 10, y: 18, text: n.name }),
        s("text", { class: "sub", x: 10, y: 32, text: `${n.level}${flags ? ` · ${flags}` : ""}` }),
        n.isolated ? s("text", { class: "flag", x: 10, y: 44, text: "AUTONOMOUS" }) : null,
      ));
    }
    replace("graph", svg);
  }

  // ---------------------------------------------------------------- tables

  function table(id, head, bodyRows) {
    return replace(id,
      h("thead", null, h("tr", null, head.map((c) => h("th", { text: c })))),
      h("tbody", null, bodyRows));
  }

  function renderLevels() {
    const ls = state.data.level_status;
    table("levels", ["level", "planes", "own nodes", "cut off", "uplinks", "sync debt"],
      LEVELS.filter((l) => ls[l]).map((level) => {
        const x = ls[level];
        const links = x.links ? `${x.up} up · ${x.down} down${x.air_gapped ? ` · ${x.air_gapped} air-gapped` : ""}` : (level === "global" ? "— (root)" : "no link state known");
        const debt = x.links ? (x.debt.envelopes ? `${plural(x.debt.envelopes, "envelope")}, ${fmtBytes(x.debt.bytes)}, oldest ${x.debt_text}` : "none") : "—";
        return h("tr", { class: `level-${level}`, dataset: { level } },
          h("td", { class: "level-cell", text: level }),
          h("td", { class: "num", text: x.planes }),
          h("td", { class: "num", text: x.nodes }),
          h("td", { class: "num", text: x.isolated }),
          h("td", { text: links }),
          h("td", { class: x.debt.envelopes ? "debt has-debt" : "debt", text: debt }));
      }));
  }

  function renderTrust() {
    const current = state.overlay.startsWith("key:") ? state.overlay.slice(4) : null;
    table("trust", ["plane", "key", "domain", "may write", "capabilities", "issued by", "valid until"],
      state.data.trust.map((t) => h("tr", {
        class: [`level-${t.level}`, t.key_id === current ? "selected" : ""],
        dataset: { key: t.key_id, plane: t.plane }, tabindex: "0",
        title: `writes into ${t.scopes.join(", ")}`,
        onclick: () => setOverlay(t.key_id === current ? "none" : `key:${t.key_id}`),
      },
      h("td", { class: "level-cell", text: t.plane }),
      h("td", { class: "mono", title: t.key_id, text: shortKey(t.key_id) }),
      h("td", { class: "mono", text: `${t.scope}/**` }),
      h("td", { text: t.collections.join(", ") }),
      h("td", { text: t.capabilities.join(", ") }),
      h("td", { text: t.issuer || "fleet roots" }),
      h("td", { text: fmtTime(t.not_after_ms) }))));
  }

  function renderMatrix(id, overlay) {
    if (!overlay.keys.length) {
      replace(id, h("tbody", null, h("tr", null, h("td", { class: "note", text: "nothing set at any scope" }))));
      return;
    }
    const levelOf = new Map(Object.values(state.data.planes).map((p) => [p.scope, p.level]));
    table(id, ["scope", ...overlay.keys],
      overlay.scopes.map((entry) => h("tr", { class: `level-${levelOf.get(entry.scope) || "local"}`, dataset: { scope: entry.scope } },
        h("td", { class: "level-cell mono", title: `as seen at ${entry.seen_at}`, text: entry.scope }),
        overlay.keys.map((key) => {
          const v = entry.values[key];
          if (!v) return h("td", { class: "empty", dataset: { key }, text: "—" });
          return h("td", { class: v.inherited ? "inherited" : "set", dataset: { key }, title: `set at ${v.set_at}; seen at ${entry.seen_at}` },
            h("span", { class: v.inherited ? "cell-inherited" : "cell-set", text: `${v.inherited ? "↑" : "●"} ${fmtValue(v.value)}` }),
            v.inherited ? h("span", { class: "origin", text: `from ${v.set_at}` }) : null);
        }))));
  }

  function renderAudit() {
    const audit = state.data.audit;
    document.getElementById("audit-summary").textContent = audit.length
      ? `${plural(audit.length, "conflict")} settled, as recorded at ${state.data.viewer} (strategy: ${state.data.describe.conflict_resolution.strategy}; authority precedence for conditional scopes).`
      : "No conflicts settled: no two writers changed one key without seeing each other's write.";
    const side = (r, cls) => h("td", null,
      h("span", { class: cls, text: r.register ? fmtValue(r.register.value) : "(beyond history)" }),
      h("span", { class: "origin", text: `${r.plane || shortKey(r.key_id)} · hlc ${r.hlc} · v${r.version}` }));
    table("audit", ["scope", "key", "winner", "loser", "strategy", "reason", "recorded on"],
      audit.map((a) => h("tr", { dataset: { scope: a.scope, key: `${a.collection}.${a.key}` } },
        h("td", { class: "mono", text: a.scope }),
        h("td", { class: "mono", text: `${a.collection}.${a.key}` }),
        side(a.winner, "winner"),
        side(a.loser, "loser"),
        h("td", { text: a.strategy }),
        h("td", { text: a.reason }),
        h("td", { title: "replicas whose interest covers the scope, and how many of them hold this record", text: `${a.agreeing}/${a.replicas} replicas` }))));
  }

  function renderHeader() {
    const d = state.data;
    document.getElementById("fleet-id").textContent = d.fleet_id;
    document.getElementById("source").textContent = d.kind === "federation"
      ? `${Object.keys(d.planes).length} control planes · seen from ${d.viewer}`
      : `one replica: ${d.viewer}`;
    document.getElementById("clock").textContent = d.now_text;
    document.getElementById("revision").textContent = `revision ${d.revision}`;
    document.body.dataset.revision = String(d.revision);
  }

  function renderOverlayOptions() {
    const select = document.getElementById("overlay");
    const options = [
      h("option", { value: "none", text: "none" }),
      h("option", { value: "boundaries", text: "policy boundaries" }),
      ...state.data.trust.map((t) => h("option", { value: `key:${t.key_id}`, text: `write domain of ${t.plane}'s key` })),
    ];
    select.replaceChildren(...options);
    if (![...select.options].some((o) => o.value === state.overlay)) state.overlay = "none";
    select.value = state.overlay;
  }

  function setOverlay(value) {
    state.overlay = value;
    document.getElementById("overlay").value = value;
    renderTree();
    renderTrust();
  }

  function render() {
    renderHeader();
    renderOverlayOptions();
    renderTree();
    renderGraph();
    renderLevels();
    renderTrust();
    renderMatrix("policies", state.data.policies);
    renderMatrix("versions", state.data.versions);
    renderAudit();
  }

  // ---------------------------------------------------------------- loading and live updates

  async function load() {
    if (state.loading) { state.again = true; return; }
    state.loading = true;
    try {
      do {
        state.again = false;
        const response = await fetch("/api/federation", { cache: "no-store" });
        if (!response.ok) throw new Error(`/api/federation: HTTP ${response.status}`);
        state.data = await response.json();
        render();
      } while (state.again);
    } catch (err) {
      console.error(err);
      setConn("reconnecting", "error loading data");
    } finally {
      state.loading = false;
    }
  }

  function setConn(kind, text) {
    const el = document.getElementById("conn");
    el.className = `conn conn-${kind}`;
    el.textContent = text || (kind === "live" ? "live" : "reconnecting…");
  }

  function connect() {
    const events = new EventSource("/api/events");
    events.addEventListener("open", () => setConn("live"));
    events.addEventListener("error", () => setConn("reconnecting"));
    events.addEventListener("change", (event) => {
      const { revision } = JSON.parse(event.data);
      if (!state.data || state.data.revision !== revision) load();
    });
  }

  function setAll(collapsed) {
    if (!state.data) return;
    state.collapsed.clear();
    if (collapsed) {
      for (const { row } of rows(state.data.views.fleet.root)) {
        if (row.children.length && row.name !== state.data.views.fleet.root.name) state.collapsed.add(row.scope);
      }
    }
    renderTree();
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("overlay").addEventListener("change", (e) => setOverlay(e.target.value));
    document.getElementById("expand-all").addEventListener("click", () => setAll(false));
    document.getElementById("collapse-all").addEventListener("click", () => setAll(true));
    load();
    connect();
  });
})();
