// The inspector page: no framework, no build step, nothing loaded from elsewhere. Every text shown goes
// through textContent; the only markup inserted is the SVG diagrams this server generates.

const $ = (id) => document.getElementById(id);

/** @type {Map<string, object>} capture summaries by id */
const captures = new Map();
/** @type {Map<string, Element>} parsed diagrams by machine id */
const diagrams = new Map();

const view = {
  /** id of the selected capture */
  selected: null,
  /** `live` or `replay` */
  mode: 'live',
  /** CaptureDetailResponse of the selected capture */
  detail: null,
  /** messages of the selected capture received while its detail loads */
  pending: [],
  loading: false,
  /** live messages of the selected capture, in order */
  messages: [],
  replayIndex: 0,
  replayTimer: null,
  /** `#computer=<name>`: follow this computer's newest capture */
  follow: null,
};

// --- formatting ----------------------------------------------------------------------------------

const pad = (n, w = 2) => String(n).padStart(w, '0');
function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
function elapsed(ms) {
  if (!Number.isFinite(ms) || ms < 0) return '–';
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${(ms / 1000).toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${pad(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${pad(m % 60)} min`;
}
function mib(bytes) {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}
/** `{ capturing: 'reserve' }` -> `capturing.reserve` */
function statePath(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === 'string') return value;
  const [k, v] = Object.entries(value)[0] ?? [];
  if (k === undefined) return null;
  const rest = statePath(v);
  return rest ? `${k}.${rest}` : k;
}
/** The Graphviz node id of a state (`capturing__reserve`). */
const nodeId = (value) => statePath(value)?.split('.').join('__') ?? null;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

// --- diagrams ------------------------------------------------------------------------------------

async function loadDiagrams() {
  const { machines } = await (await fetch('/api/machines')).json();
  await Promise.all(
    machines.map(async (m) => {
      const text = await (await fetch(`/diagrams/${encodeURIComponent(m)}.svg`)).text();
      const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
      const svg = doc.documentElement;
      if (svg.nodeName === 'svg') {
        svg.removeAttribute('width');
        svg.removeAttribute('height');
        diagrams.set(m, svg);
      }
    }),
  );
}

/** Puts a fresh copy of a machine's diagram in `container`, with an index of its nodes by state id. */
function showDiagram(container, machine) {
  container.replaceChildren();
  container.dataset.machine = machine ?? '';
  container.dataset.active = '';
  container._nodes = new Map();
  const svg = machine ? diagrams.get(machine) : undefined;
  if (!svg) return;
  const copy = document.importNode(svg, true);
  for (const g of copy.querySelectorAll('g.node, g.cluster')) {
    const title = g.querySelector(':scope > title')?.textContent ?? '';
    container._nodes.set(title, g);
  }
  container.append(copy);
}

/** Marks the node of `value` active (and visited); the previous active node stays visited. */
function highlight(container, value) {
  const id = nodeId(value);
  if (!container._nodes || container.dataset.active === (id ?? '')) return;
  for (const g of container.querySelectorAll('.active')) g.classList.remove('active');
  container.dataset.active = id ?? '';
  if (!id) return;
  const parts = id.split('__');
  for (let i = 1; i < parts.length; i++) {
    container._nodes.get(`cluster_${parts.slice(0, i).join('__')}`)?.classList.add('active');
  }
  const node = container._nodes.get(id) ?? container._nodes.get(`cluster_${id}`);
  if (node) node.classList.add('visited', 'active');
}

function clearVisited(container) {
  for (const g of container.querySelectorAll('.visited, .active')) g.classList.remove('visited', 'active');
  container.dataset.active = '';
}

// --- capture list --------------------------------------------------------------------------------

function renderList() {
  const tbody = $('captures').querySelector('tbody');
  const rows = [...captures.values()].sort(
    (a, b) => Number(b.live) - Number(a.live) || b.createdAt - a.createdAt,
  );
  $('no-captures').hidden = rows.length > 0;
  const now = Date.now();
  const existing = new Map([...tbody.children].map((tr) => [tr.dataset.captureId, tr]));
  const ordered = rows.map((c) => {
    let tr = existing.get(c.id);
    if (!tr) {
      tr = el('tr', { 'data-capture-id': c.id });
      tr.addEventListener('click', () => select(c.id, true));
      for (let i = 0; i < 4; i++) tr.append(el('td'));
    }
    const [computer, provisioner, status, time] = tr.children;
    computer.replaceChildren(
      ...(c.live ? [el('span', { class: 'live-dot', title: 'live' })] : []),
      c.computer,
    );
    provisioner.textContent = c.os ? `${c.provisioner ?? '?'} · ${c.os}` : (c.provisioner ?? '–');
    status.textContent = c.status;
    status.className = `status status-${c.status}`;
    status.title = c.state ?? '';
    time.textContent = elapsed((c.finishedAt ?? now) - c.createdAt);
    tr.dataset.status = c.status;
    tr.classList.toggle('selected', c.id === view.selected);
    return tr;
  });
  // Reordering only when needed: moving a row away under the pointer would lose a click.
  if (ordered.length !== tbody.children.length || ordered.some((tr, i) => tbody.children[i] !== tr))
    tbody.replaceChildren(...ordered);
}

function upsert(summary) {
  const old = captures.get(summary.id);
  captures.set(summary.id, old ? { ...old, ...summary } : summary);
}

async function loadList() {
  const { captures: list } = await (await fetch('/api/captures')).json();
  for (const c of list) upsert(c);
  renderList();
}

// --- the selected capture ------------------------------------------------------------------------

async function select(id, byUser = false) {
  if (byUser) view.follow = null;
  stopReplay();
  view.selected = id;
  view.detail = null;
  view.messages = [];
  view.pending = [];
  view.loading = true;
  history.replaceState(
    null,
    '',
    view.follow ? `#computer=${encodeURIComponent(view.follow)}` : `#capture=${encodeURIComponent(id)}`,
  );
  renderList();
  const res = await fetch(`/api/captures/${encodeURIComponent(id)}`);
  if (view.selected !== id) return;
  if (!res.ok) {
    view.loading = false;
    return;
  }
  const detail = await res.json();
  if (view.selected !== id) return;
  view.detail = detail;
  view.loading = false;
  upsert(detail.capture);
  const upTo = detail.live?.seq ?? 0;
  view.messages = detail.live?.messages ?? [];
  const later = view.pending.filter((m) => m.seq > upTo);
  view.pending = [];
  $('capture').hidden = false;
  showDiagram($('diagram'), detail.machine);
  showDiagram($('os-diagram'), detail.osMachine);
  $('machine-name').textContent = detail.machine ?? '?';
  $('os-name').textContent = detail.osMachine ?? '?';
  renderHead();
  const finished = !['queued', 'running'].includes(detail.capture.status);
  setMode(detail.live || !finished ? 'live' : 'replay');
  for (const m of later) onCaptureMessage(m);
}

function renderHead() {
  const d = view.detail;
  if (!d) return;
  const c = captures.get(d.capture.id) ?? d.capture;
  $('title').textContent = `${c.computer} · ${c.status}`;
  $('subtitle').textContent = [
    c.image ? `image ${c.image}` : null,
    c.provisioner ? `${c.provisioner} + ${c.os ?? '?'}` : null,
    `capture ${c.id}`,
  ]
    .filter(Boolean)
    .join(' · ');
  $('mode-replay').disabled = d.transitions.length === 0;
}

function setMode(mode) {
  stopReplay();
  view.mode = mode;
  $('mode-live').setAttribute('aria-selected', String(mode === 'live'));
  $('mode-replay').setAttribute('aria-selected', String(mode === 'replay'));
  $('replay-controls').hidden = mode !== 'replay';
  $('capture').dataset.mode = mode;
  clearVisited($('diagram'));
  clearVisited($('os-diagram'));
  if (mode === 'live') renderLive();
  else {
    view.replayIndex = 0;
    renderReplay();
  }
}

// Live: the diagram, log, progress and context from the messages seen.

function renderLive() {
  $('log').replaceChildren();
  $('progress').hidden = true;
  $('context-capture').textContent = '–';
  $('context-os').textContent = '–';
  $('machine-state').textContent = '–';
  $('os-state').textContent = '–';
  const d = view.detail;
  if (d && !d.live) {
    // Only the store knows this capture: its recorded transitions are its log.
    for (const t of d.transitions) {
      addLog({ t: 'state', at: t.at, value: t.value, step: t.step }, false);
      highlight($('diagram'), t.value);
    }
    $('machine-state').textContent = statePath(d.transitions.at(-1)?.value) ?? '–';
    scrollLog();
    return;
  }
  for (const m of view.messages) applyLive(m, false);
  scrollLog();
}

function applyLive(m, scroll = true) {
  switch (m.t) {
    case 'state':
      highlight($('diagram'), m.value);
      $('machine-state').textContent = statePath(m.value);
      addLog(m, scroll);
      break;
    case 'os':
      highlight($('os-diagram'), m.value);
      $('os-state').textContent =
        m.status === 'active' ? statePath(m.value) : `${statePath(m.value)} (${m.status})`;
      addLog(m, scroll);
      break;
    case 'event':
      addLog(m, scroll);
      break;
    case 'finished':
      // The machine's final states are named after the statuses.
      highlight($('diagram'), m.status);
      $('machine-state').textContent = m.status;
      addLog(m, scroll);
      break;
    case 'progress': {
      $('progress').hidden = false;
      const pct = m.total ? Math.min(100, (100 * m.bytes) / m.total) : 0;
      $('progress').querySelector('.fill').style.width = `${pct}%`;
      $('progress').querySelector('.text').textContent =
        `${m.step}: ${mib(m.bytes)}${m.total ? ` of ${mib(m.total)} (${pct.toFixed(0)}%)` : ''} · ${mib(m.bytesPerSecond)}/s`;
      break;
    }
    case 'context':
      $(m.actor === 'os' ? 'context-os' : 'context-capture').textContent = JSON.stringify(m.context, null, 2);
      break;
  }
}

const MAX_LOG = 1500;

function logText(m) {
  switch (m.t) {
    case 'state':
      return ['capture', `entered ${statePath(m.value)}`];
    case 'os':
      return [
        'os',
        m.status === 'active'
          ? `entered ${statePath(m.value)}`
          : `ended in ${statePath(m.value)} (${m.status})`,
      ];
    case 'event':
      return [m.actor, `received ${m.type}${m.detail ? ` — ${m.detail}` : ''}`];
    case 'finished':
      return [
        'capture',
        `finished: ${m.status}${m.error ? ` — ${m.error.code} in ${m.error.step}: ${m.error.message}` : ''}`,
      ];
    default:
      return ['', ''];
  }
}

function addLog(m, scroll) {
  const log = $('log');
  const [source, text] = logText(m);
  const li = el(
    'li',
    { 'data-kind': m.t, 'data-source': source },
    el('time', { text: clock(m.at) }),
    el('span', { class: 'src', text: source }),
    text,
  );
  if (m.value !== undefined) li.dataset.state = nodeId(m.value) ?? '';
  log.append(li);
  while (log.children.length > MAX_LOG) log.firstElementChild.remove();
  if (scroll) scrollLog();
  return li;
}

function scrollLog() {
  const log = $('log');
  log.scrollTop = log.scrollHeight;
}

function onCaptureMessage(m) {
  const c = captures.get(m.id);
  if (c) {
    if (m.t === 'state') {
      c.state = statePath(m.value);
      c.status = 'running';
    } else if (m.t === 'finished') {
      c.status = m.status;
      c.live = false;
      c.finishedAt = m.at;
    }
  }
  if (m.id !== view.selected) return;
  if (view.loading) {
    view.pending.push(m);
    return;
  }
  view.messages.push(m);
  if (view.messages.length > 5000) view.messages.splice(0, view.messages.length - 5000);
  if (view.mode === 'live' && view.detail?.live) applyLive(m);
  if (m.t === 'finished') {
    // The transitions are in the store now: replay can use them.
    refreshTransitions(m.id);
  }
}

async function refreshTransitions(id) {
  const res = await fetch(`/api/captures/${encodeURIComponent(id)}`);
  if (!res.ok || view.selected !== id || !view.detail) return;
  const detail = await res.json();
  view.detail.transitions = detail.transitions;
  view.detail.capture = detail.capture;
  upsert(detail.capture);
  renderHead();
  renderList();
}

// Replay: step through the recorded transitions on the diagram.

function renderReplay() {
  const d = view.detail;
  const log = $('log');
  log.replaceChildren();
  $('progress').hidden = true;
  $('context-capture').textContent = 'replay: the store records states, not contexts';
  $('context-os').textContent = '–';
  $('os-state').textContent = 'not recorded';
  if (!d) return;
  for (const t of d.transitions) addLog({ t: 'state', at: t.at, value: t.value, step: t.step }, false);
  replayTo(view.replayIndex);
}

function replayTo(i) {
  const ts = view.detail?.transitions ?? [];
  if (!ts.length) return;
  const index = Math.max(0, Math.min(ts.length - 1, i));
  view.replayIndex = index;
  const diagram = $('diagram');
  clearVisited(diagram);
  for (let k = 0; k <= index; k++) highlight(diagram, ts[k].value);
  const t = ts[index];
  $('machine-state').textContent = statePath(t.value);
  const items = [...$('log').children];
  for (const [k, li] of items.entries()) {
    li.classList.toggle('current', k === index);
    li.classList.toggle('future', k > index);
  }
  items[index]?.scrollIntoView({ block: 'nearest' });
  $('replay-position').textContent =
    `${index + 1} / ${ts.length} · +${elapsed(t.at - ts[0].at)} · ${t.type}${t.step ? ` (${t.step})` : ''}`;
  $('replay-position').dataset.index = String(index);
}

function stopReplay() {
  if (view.replayTimer) clearInterval(view.replayTimer);
  view.replayTimer = null;
  $('replay-play').textContent = '▶︎ play';
}

function playReplay() {
  if (view.replayTimer) return stopReplay();
  const ts = view.detail?.transitions ?? [];
  if (view.replayIndex >= ts.length - 1) replayTo(0);
  $('replay-play').textContent = '⏸ pause';
  view.replayTimer = setInterval(() => {
    if (view.replayIndex >= ts.length - 1) return stopReplay();
    replayTo(view.replayIndex + 1);
  }, 700);
}

// --- connection ----------------------------------------------------------------------------------

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  const conn = $('conn');
  ws.addEventListener('open', () => {
    conn.dataset.state = 'open';
    conn.textContent = 'live';
  });
  ws.addEventListener('close', () => {
    conn.dataset.state = 'closed';
    conn.textContent = 'disconnected, retrying…';
    setTimeout(connect, 1000);
  });
  ws.addEventListener('message', (e) => {
    const m = JSON.parse(e.data);
    switch (m.t) {
      case 'hello':
        for (const c of m.captures) upsert(c);
        renderList();
        loadList().then(autoSelect);
        if (view.selected) select(view.selected);
        break;
      case 'capture':
        upsert(m.capture);
        renderList();
        if (m.capture.id === view.selected) renderHead();
        autoSelect();
        break;
      case 'dropped':
        // This page read too slowly and missed messages: reload what it shows.
        loadList();
        if (view.selected) select(view.selected);
        break;
      default:
        onCaptureMessage(m);
        if (m.t === 'state' || m.t === 'finished') renderList();
    }
  });
}

/** Selects what the address asks for, else the newest live capture, else the newest one. */
function autoSelect() {
  if (view.follow) {
    const newest = [...captures.values()]
      .filter((c) => c.computer === view.follow)
      .sort((a, b) => b.createdAt - a.createdAt)[0];
    if (newest && newest.id !== view.selected) select(newest.id);
    return;
  }
  if (view.selected) return;
  const all = [...captures.values()].sort(
    (a, b) => Number(b.live) - Number(a.live) || b.createdAt - a.createdAt,
  );
  if (all[0]) select(all[0].id);
}

async function main() {
  const params = new URLSearchParams(location.hash.slice(1));
  view.follow = params.get('computer');
  const wanted = params.get('capture');
  $('mode-live').addEventListener('click', () => setMode('live'));
  $('mode-replay').addEventListener('click', () => setMode('replay'));
  $('replay-first').addEventListener('click', () => replayTo(0));
  $('replay-prev').addEventListener('click', () => replayTo(view.replayIndex - 1));
  $('replay-next').addEventListener('click', () => replayTo(view.replayIndex + 1));
  $('replay-last').addEventListener('click', () => replayTo(Number.MAX_SAFE_INTEGER));
  $('replay-play').addEventListener('click', playReplay);
  // Diagrams first: a state that arrives is then drawn at once, never after a fetch.
  await loadDiagrams();
  if (wanted) view.selected = wanted;
  setInterval(renderList, 1000);
  connect();
}

main();
