// weftctl dashboard: polls /api/mesh every 2 s and redraws. No framework, no build step.
// Every value from the mesh goes into the page as text (textContent / attributes), never as HTML.
'use strict';

const SVGNS = 'http://www.w3.org/2000/svg';
const POLL_MS = 2000;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

function svg(tag, attrs, ...kids) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

const pct = (v) => (v === null || v === undefined) ? '–' : (v * 100).toFixed(v >= 0.999 || v < 0.9 ? 1 : 2) + '%';
const rate = (v) => v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v >= 0.01 ? v.toFixed(2) : v > 0 ? '<0.01' : '0';
const ms = (v) => (v === null || v === undefined) ? '–' : v >= 1000 ? (v / 1000).toFixed(2) + ' s' : v.toFixed(v >= 10 ? 0 : 1) + ' ms';
const clock = (t) => new Date(t * 1000).toLocaleTimeString();

// Success thresholds: what a person should look at first.
function health(success, rps) {
  if (!rps || success === null || success === undefined) return 'idle';
  if (success >= 0.99) return 'ok';
  if (success >= 0.95) return 'warn';
  return 'bad';
}
const COLOR = { ok: '#1a7f37', warn: '#b35900', bad: '#c62828', idle: '#8a929c' };

function duration(s) {
  if (s === null || s === undefined) return '–';
  const neg = s < 0; s = Math.abs(s);
  const out = s >= 86400 ? (s / 86400).toFixed(1) + ' d' : s >= 3600 ? (s / 3600).toFixed(1) + ' h' : s >= 60 ? (s / 60).toFixed(0) + ' min' : s.toFixed(0) + ' s';
  return neg ? 'expired ' + out + ' ago' : out;
}

function fill(tbodyOf, rows, empty) {
  const body = document.querySelector(tbodyOf + ' tbody');
  body.replaceChildren(...rows);
  if (rows.length === 0) {
    const cols = document.querySelectorAll(tbodyOf + ' thead th').length;
    body.append(el('tr', {}, el('td', { colspan: cols, class: 'quiet' }, empty)));
  }
}

function td(text, cls, title) { return el('td', { class: cls, title }, text); }

// Names for IDs: the mesh's own short names, else the ID.
let names = {};
const nameOf = (id) => names[id] || id || '–';

function problems(m) {
  const out = [];
  for (const t of m.targets || []) {
    if (!t.up) out.push(['bad', `${t.kind === 'control-plane' ? 'control plane' : 'target'} ${t.instance} is down${t.error ? ': ' + t.error : ''}`]);
    else if (t.kind === 'proxy' && t.connected === false) out.push(['bad', `proxy ${nameOf(t.identity)} (${t.instance}) is not connected to the control plane`]);
    if (t.cert_expires_in_s !== null && t.cert_expires_in_s !== undefined && t.cert_expires_in_s < 6 * 3600) out.push(['bad', `certificate of ${nameOf(t.identity) || t.instance} expires in ${duration(t.cert_expires_in_s)}`]);
  }
  for (const s of m.services || []) {
    const h = health(s.inbound.success, s.inbound.rps);
    if (h === 'bad' || h === 'warn') out.push([h, `${s.name} answers ${pct(s.inbound.success)} of ${rate(s.inbound.rps)} rps successfully (p99 ${ms(s.inbound.p99_ms)})`]);
  }
  for (const e of m.edges || []) {
    const h = health(e.traffic.success, e.traffic.rps);
    if (h === 'bad' || h === 'warn') out.push([h, `${nameOf(e.from)} → ${nameOf(e.to)}: ${pct(e.traffic.success)} success at ${rate(e.traffic.rps)} rps`]);
    if (!e.mtls && e.traffic.rps > 0) out.push(['warn', `${nameOf(e.from)} → ${nameOf(e.to)} is not mTLS`]);
  }
  for (const e of m.errors || []) {
    if (e.rps > 0) out.push(['bad', `${nameOf(e.at)}'s proxy answers ${e.status} ${e.reason} (${e.direction}, ${e.authority || 'no authority'}) at ${rate(e.rps)}/s since ${clock(e.first_seen)}`]);
  }
  for (const d of m.decisions || []) {
    if (d.rps > 0 && d.decision !== 'would-allow') out.push([d.decision === 'deny' ? 'warn' : 'warn', `${d.decision} at ${d.service} by ${d.policy}: ${rate(d.rps)}/s`]);
  }
  const cp = m.control_plane;
  if (cp && cp.nacks_rps > 0) out.push(['bad', `proxies are refusing configuration (NACKs ${rate(cp.nacks_rps)}/s, ${cp.nacks_total} in all)`]);
  return out;
}

function renderProblems(m) {
  const list = problems(m);
  const ul = document.getElementById('problems');
  const pill = document.getElementById('health');
  if (!m.ready) {
    ul.replaceChildren(el('li', { class: 'quiet' }, 'Measuring: rates need two readings…'));
    pill.className = 'pill unknown'; pill.textContent = 'measuring…';
    return;
  }
  if (list.length === 0) {
    ul.replaceChildren(el('li', { class: 'quiet' }, 'Nothing: every workload answers ≥ 99 %, every edge is mTLS, no proxy errors, every target is up.'));
    pill.className = 'pill ok'; pill.textContent = 'healthy';
    return;
  }
  list.sort((a, b) => (a[0] === 'bad' ? 0 : 1) - (b[0] === 'bad' ? 0 : 1));
  ul.replaceChildren(...list.map(([cls, text]) => el('li', { class: cls }, text)));
  const bad = list.filter((p) => p[0] === 'bad').length;
  pill.className = 'pill ' + (bad ? 'bad' : 'warn');
  pill.textContent = bad ? `${bad} failing` : `${list.length} to look at`;
}

// Layered layout: a node's layer is its longest distance from a caller nobody calls.
function layout(nodes, edges) {
  const layer = Object.fromEntries(nodes.map((n) => [n.id, 0]));
  for (let i = 0; i < nodes.length; i++) {
    let changed = false;
    for (const e of edges) {
      if (e.from === e.to || !(e.from in layer) || !(e.to in layer)) continue;
      if (layer[e.to] < layer[e.from] + 1 && layer[e.from] + 1 < nodes.length) { layer[e.to] = layer[e.from] + 1; changed = true; }
    }
    if (!changed) break;
  }
  const cols = [];
  for (const n of nodes) (cols[layer[n.id]] ||= []).push(n);
  return cols.map((c) => c.sort((a, b) => a.name.localeCompare(b.name)));
}

const NODE_W = 240, NODE_H = 62, COL_GAP = 230, ROW_GAP = 40, PAD = 24;

function renderGraph(m) {
  const g = document.getElementById('graph');
  const edges = (m.edges || []).filter((e) => e.traffic.rps > 0);
  const inGraph = new Set(edges.flatMap((e) => [e.from, e.to]));
  for (const s of m.services || []) if (s.kind === 'workload') inGraph.add(s.id);
  const nodes = (m.services || []).filter((s) => inGraph.has(s.id));
  const cols = layout(nodes, edges);
  const layerOf = {};
  cols.forEach((c, i) => (c || []).forEach((n) => { layerOf[n.id] = i; }));
  // Edges that skip a layer arc over the top, so they do not cross the nodes between.
  const skips = (e) => layerOf[e.to] - layerOf[e.from] > 1;
  const TOP = edges.some(skips) ? 50 : 0;
  const rows = Math.max(1, ...cols.map((c) => (c || []).length));
  const width = PAD * 2 + cols.length * NODE_W + Math.max(0, cols.length - 1) * COL_GAP;
  const height = TOP + PAD * 2 + rows * NODE_H + (rows - 1) * ROW_GAP + 20;
  g.setAttribute('viewBox', `0 0 ${width} ${height}`);
  g.setAttribute('width', width);
  g.setAttribute('height', height);
  const pos = {};
  cols.forEach((c, i) => (c || []).forEach((n, j) => {
    const colH = c.length * NODE_H + (c.length - 1) * ROW_GAP;
    const top = TOP + PAD + (rows * NODE_H + (rows - 1) * ROW_GAP - colH) / 2;
    pos[n.id] = { x: PAD + i * (NODE_W + COL_GAP), y: top + j * (NODE_H + ROW_GAP) };
  }));
  const defs = svg('defs', {});
  for (const [k, c] of Object.entries(COLOR)) {
    defs.append(svg('marker', { id: 'arrow-' + k, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 12, markerHeight: 12, markerUnits: 'userSpaceOnUse', orient: 'auto-start-reverse' },
      svg('path', { d: 'M0,0 L10,5 L0,10 z', fill: c })));
  }
  const kids = [defs];
  const maxRps = Math.max(1, ...edges.map((e) => e.traffic.rps));
  let overN = 0;
  for (const e of edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const h = health(e.traffic.success, e.traffic.rps);
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x - 1, y2 = b.y + NODE_H / 2;
    const back = x2 <= x1;
    const over = !back && skips(e);
    const arcY = PAD / 2;
    const d = back
      ? `M${a.x + NODE_W / 2},${a.y + NODE_H} C${a.x + NODE_W / 2},${a.y + NODE_H + 60} ${b.x + NODE_W / 2},${b.y + NODE_H + 60} ${b.x + NODE_W / 2},${b.y + NODE_H + 2}`
      : over
        ? `M${a.x + NODE_W / 2},${a.y} C${a.x + NODE_W / 2},${arcY} ${b.x - COL_GAP / 2},${arcY} ${x2},${y2}`
        : `M${x1},${y1} C${x1 + COL_GAP / 2},${y1} ${x2 - COL_GAP / 2},${y2} ${x2},${y2}`;
    const w = 1.5 + 5 * Math.log1p(e.traffic.rps) / Math.log1p(maxRps);
    const ids = `caller: ${e.client_id || '(not verified by the callee: ' + (e.from === 'unmeshed' ? 'no certificate' : 'not scraped') + ')'}\ncallee: ${e.server_id || '(not verified by the caller)'}`;
    const label = `${rate(e.traffic.rps)} rps · ${pct(e.traffic.success)} · ${e.mtls ? 'mTLS' : 'PLAINTEXT'}`;
    // The label sits on the curve's midpoint, nudged above it; for a fan-out, nearer the caller.
    const mx = back ? (a.x + b.x + NODE_W) / 2 : over ? (a.x + NODE_W / 2 + b.x) / 2 : x1 + (x2 - x1) * 0.5;
    const my = back ? Math.max(a.y, b.y) + NODE_H + 50 : over ? arcY + 10 + 14 * (overN++ % 3) : (y1 + y2) / 2 - 8;
    kids.push(svg('g', {
      class: 'edge ' + h, 'data-from': nameOf(e.from), 'data-to': nameOf(e.to), 'data-mtls': String(e.mtls),
      'data-client-id': e.client_id, 'data-server-id': e.server_id, 'data-rps': e.traffic.rps.toFixed(3),
    },
      svg('title', {}, `${nameOf(e.from)} → ${nameOf(e.to)}\n${ids}\n${(e.authorities || []).join(', ')}`),
      svg('path', { d, stroke: COLOR[h], 'stroke-width': w.toFixed(1), 'stroke-dasharray': e.mtls ? null : '6 4', 'marker-end': `url(#arrow-${h})` }),
      svg('text', { x: mx, y: my, 'text-anchor': 'middle', fill: COLOR[h] }, label)));
  }
  for (const n of nodes) {
    const p = pos[n.id];
    const h = n.kind === 'workload' ? health(n.inbound.success, n.inbound.rps) : 'idle';
    const served = n.inbound.rps > 0;
    const sub = served ? `${rate(n.inbound.rps)} rps · ${pct(n.inbound.success)} · p99 ${ms(n.inbound.p99_ms)}`
      : n.kind === 'workload' ? (n.outbound.rps > 0 ? `calls ${rate(n.outbound.rps)} rps` : 'no traffic')
        : n.kind === 'unmeshed' ? 'no certificate' : n.kind === 'external' ? 'no answering proxy' : 'not scraped';
    kids.push(svg('g', { class: 'node ' + h, 'data-id': n.id, 'data-name': n.name, 'data-kind': n.kind, transform: `translate(${p.x},${p.y})` },
      svg('title', {}, `${n.id}\n${(n.authorities || []).join(', ')}`),
      svg('rect', { width: NODE_W, height: NODE_H, stroke: h === 'idle' ? '#8a929c' : COLOR[h], 'stroke-dasharray': n.kind === 'workload' ? null : '4 3' }),
      svg('text', { x: 10, y: 24, class: 'name' }, n.name),
      svg('text', { x: 10, y: 46, class: 'sub' }, sub)));
  }
  g.replaceChildren(...kids);
  g.setAttribute('data-ready', String(edges.length > 0));
}

function spark(trend) {
  const W = 160, H = 26;
  const s = svg('svg', { class: 'spark', width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  if (!trend || trend.length < 2) return s;
  const t0 = trend[0][0], t1 = trend[trend.length - 1][0];
  const max = Math.max(0.001, ...trend.map((p) => p[1]));
  const x = (t) => t1 > t0 ? ((t - t0) / (t1 - t0)) * (W - 2) + 1 : 1;
  const y = (v) => H - 2 - (v / max) * (H - 4);
  s.append(svg('polyline', { points: trend.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' '), fill: 'none', stroke: '#2457a6', 'stroke-width': 1.5 }));
  // Failures: the share not answered successfully, drawn in red on the same scale, when any.
  if (trend.some((p) => p[2] !== null && p[2] < 1)) s.append(svg('polyline', { points: trend.map((p) => `${x(p[0]).toFixed(1)},${y(p[1] * (1 - (p[2] ?? 1))).toFixed(1)}`).join(' '), fill: 'none', stroke: '#c62828', 'stroke-width': 1.5 }));
  return s;
}

function renderServices(m) {
  const rows = (m.services || []).filter((s) => s.kind === 'workload' || s.inbound.rps > 0).map((s) => {
    const h = health(s.inbound.success, s.inbound.rps);
    const ho = health(s.outbound.success, s.outbound.rps);
    return el('tr', { 'data-service': s.name },
      td(s.name, null, s.id), td((s.authorities || []).join(', ') || '–', 'id'),
      td(rate(s.inbound.rps), 'num'), td(pct(s.inbound.success), 'num ' + h),
      td(ms(s.inbound.p50_ms), 'num'), td(ms(s.inbound.p99_ms), 'num'),
      el('td', {}, spark(s.trend)),
      td(rate(s.outbound.rps), 'num'), td(pct(s.outbound.success), 'num ' + ho));
  });
  fill('#services', rows, 'No workload seen yet.');
}

function renderEdges(m) {
  const rows = (m.edges || []).map((e) => {
    const h = health(e.traffic.success, e.traffic.rps);
    return el('tr', { 'data-edge': `${nameOf(e.from)}->${nameOf(e.to)}` },
      td(`${nameOf(e.from)} → ${nameOf(e.to)}`), td(rate(e.traffic.rps), 'num'), td(pct(e.traffic.success), 'num ' + h),
      td(ms(e.traffic.p99_ms), 'num'),
      td(e.callee ? pct(e.callee.success) : '–', 'num ' + (e.callee ? health(e.callee.success, e.callee.rps) : '')),
      td(e.mtls ? 'mTLS' : 'plaintext', e.mtls ? 'ok' : 'warn'),
      el('td', { class: 'id' }, e.client_id || '(no client ID)', el('br'), '→ ' + (e.server_id || '(no server ID)')));
  });
  fill('#edges', rows, 'No traffic yet.');
}

function renderSplits(m) {
  const box = document.getElementById('splits');
  const splits = (m.splits || []).filter((s) => s.backends.length > 0);
  box.replaceChildren(...splits.map((sp) => {
    const t = el('table', {});
    for (const b of sp.backends) {
      const bar = el('span', { class: 'bar' });
      bar.style.width = Math.round(b.share * 200) + 'px';
      t.append(el('tr', { 'data-backend': b.name },
        td(b.name, null, b.server_id), td((b.share * 100).toFixed(1) + '%', 'num'), el('td', {}, bar),
        td(rate(b.rps) + ' rps', 'num'), td(pct(b.success), 'num ' + health(b.success, b.rps))));
    }
    return el('div', { class: 'split', 'data-split': `${nameOf(sp.client)} ${sp.authority}` },
      el('div', { class: 'title' }, `${nameOf(sp.client)} → ${sp.authority || '(no authority)'}: ${rate(sp.rps)} rps`), t);
  }));
  if (splits.length === 0) box.replaceChildren(el('p', { class: 'quiet' }, 'No outbound traffic yet.'));
  fill('#retries', (m.retries || []).map((r) => el('tr', {},
    td(nameOf(r.at)), td(r.route), td(r.backend), td(rate(r.rps), 'num'),
    td(rate(r.budget_exhausted_rps), 'num ' + (r.budget_exhausted_rps > 0 ? 'bad' : '')))), 'No retries.');
}

function renderErrors(m) {
  fill('#errors', (m.errors || []).map((e) => el('tr', { 'data-reason': e.reason },
    td(`${nameOf(e.at)} (${e.direction})`), td(e.reason, e.rps > 0 ? 'bad' : 'quiet'), td(e.status), td(e.authority || '–', 'id'),
    td(e.client_id ? nameOf(e.client_id) : '–', null, e.client_id), td(rate(e.rps), 'num'),
    td(clock(e.first_seen)), td(clock(e.last_seen)))), 'None in the last 10 minutes.');
  fill('#decisions', (m.decisions || []).map((d) => el('tr', { 'data-decision': d.decision },
    td(nameOf(d.at)), td(d.service), td(d.decision, d.rps > 0 && (d.decision === 'deny' || d.decision === 'rate-limited') ? 'warn' : ''),
    td(d.policy, 'id'), td(rate(d.rps), 'num'), td(clock(d.last_seen)))), 'None in the last 10 minutes.');
}

function renderControl(m) {
  const cp = m.control_plane;
  const box = document.getElementById('control-plane');
  if (!cp) {
    box.replaceChildren(el('span', { class: 'quiet' }, 'No control plane among the targets.'));
  } else {
    box.replaceChildren(
      el('span', {}, 'control plane: ', el('b', { class: cp.up ? 'ok' : 'bad' }, cp.up ? 'up' : 'DOWN')),
      el('span', {}, 'proxies connected: ', el('b', {}, String(cp.connected_proxies))),
      el('span', {}, 'registrations: ', el('b', {}, String(cp.registrations))),
      el('span', {}, 'config version (store revision): ', el('b', {}, cp.config_version ?? '–')),
      el('span', {}, 'NACKs: ', el('b', { class: cp.nacks_total > 0 ? 'bad' : '' }, String(cp.nacks_total))),
      el('span', {}, 'pushes: ', el('b', {}, rate(cp.pushes_rps) + '/s')));
  }
  fill('#targets', (m.targets || []).map((t) => el('tr', { class: t.up ? '' : 'down', 'data-target': t.instance },
    td(t.instance, 'id'), td(t.kind), td(t.identity ? nameOf(t.identity) : '–', null, t.identity),
    td(t.up ? 'up' : 'DOWN' + (t.error ? ': ' + t.error : ''), t.up ? 'ok' : 'bad'),
    td(t.connected === null ? '–' : t.connected ? 'connected' : 'DISCONNECTED', t.connected === false ? 'bad' : ''),
    td(t.config_version ?? '–', 'num'), td(String(t.nacks_total), 'num ' + (t.nacks_total > 0 ? 'bad' : '')),
    td(duration(t.cert_expires_in_s), t.cert_expires_in_s !== null && t.cert_expires_in_s < 6 * 3600 ? 'bad' : ''))), 'No targets.');
}

function render(m) {
  names = Object.fromEntries((m.services || []).map((s) => [s.id, s.name]));
  const meta = document.getElementById('meta');
  meta.textContent = `${m.source} · rates over ${m.window_s} s · read ${m.read_at ? clock(m.read_at) : '–'}${m.error ? ' · LAST READ FAILED: ' + m.error : ''}`;
  meta.className = m.error ? 'bad' : '';
  renderProblems(m);
  renderGraph(m);
  renderServices(m);
  renderEdges(m);
  renderSplits(m);
  renderErrors(m);
  renderControl(m);
  document.getElementById('footer').textContent = `Refreshes every ${POLL_MS / 1000} s. JSON: /api/mesh`;
}

async function poll() {
  try {
    const r = await fetch('/api/mesh', { cache: 'no-store' });
    if (!r.ok) throw new Error(`/api/mesh: ${r.status}`);
    render(await r.json());
  } catch (e) {
    const pill = document.getElementById('health');
    pill.className = 'pill bad';
    pill.textContent = 'dashboard unreachable';
    document.getElementById('meta').textContent = String(e);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
