// The dashboard page (bundled by scripts/build-web.mjs into dist/admin/web):
// plain DOM and uPlot. It reads /api/me once, then renders every `state`
// event of the /api/stream Server-Sent Events stream: summary tiles, five
// time-series charts, and sortable, filterable tables in the console's
// column names. Actions (admin.users only) go to /api/action after a
// confirmation. Nothing here builds HTML from strings: text goes in as text.

import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import './style.css';

type Row = Record<string, unknown>;

interface Series {
  t: number[];
  tps: number[];
  qps: number[];
  p50_us: number[];
  p95_us: number[];
  p99_us: number[];
  cl_waiting: number[];
  wait_us: number[];
  errors: number[];
  errors_by_class: Record<string, number[]>;
  bytes_in: number[];
  bytes_out: number[];
}

interface View {
  at: number;
  append: boolean;
  me: { user: string; role: string; actions: boolean };
  tiles: {
    clients: Record<string, number>;
    servers: Record<string, number>;
    tps: number;
    qps: number;
    errors: number;
    p50_us: number;
    p95_us: number;
    p99_us: number;
  };
  series: Series;
  pools: Row[];
  clients: Row[];
  servers: Row[];
  hosts: Row[];
  shapes: Row[];
  events: Row[];
  paused: string[];
  disabled: string[];
}

/** Points kept in the page (the server keeps admin.history; the page at most this many). */
const MAX_POINTS = 3600;

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => document.getElementById(id) as T;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: Array<Node | string>
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

const fmt = {
  n: (v: number): string => (Math.abs(v) >= 100 ? Math.round(v).toLocaleString('en') : v.toFixed(v % 1 === 0 ? 0 : 1)),
  us: (v: number): string => (v >= 1e6 ? `${(v / 1e6).toFixed(2)} s` : v >= 1000 ? `${(v / 1000).toFixed(1)} ms` : `${Math.round(v)} µs`),
  time: (ms: number): string => (ms > 0 ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) : ''),
  bytes: (v: number): string =>
    v >= 1 << 20 ? `${(v / (1 << 20)).toFixed(1)} MiB` : v >= 1024 ? `${(v / 1024).toFixed(1)} KiB` : `${Math.round(v)} B`,
};

// ---- state ----------------------------------------------------------------

let me: View['me'] = { user: '', role: '', actions: false };
let series: Series | null = null;
let last: View | null = null;
const filters = { database: '', user: '', application: '' };

/** Counted by the browser tests: a page error is a failure. */
const w = window as unknown as { __postern: { points: number; renders: number; errors: string[] } };
w.__postern = { points: 0, renders: 0, errors: [] };
window.addEventListener('error', (e) => w.__postern.errors.push(String(e.message)));

// ---- charts -----------------------------------------------------------------

const PALETTE = ['#3b82f6', '#f59e0b', '#ef4444', '#10b981', '#8b5cf6', '#ec4899', '#14b8a6', '#64748b'];

interface Chart {
  plot: uPlot | null;
  host: HTMLElement;
  labels: string[];
  data: () => uPlot.AlignedData;
}

function makeChart(id: string, labels: string[], data: () => uPlot.AlignedData): Chart {
  return { plot: null, host: $(id), labels, data };
}

function chartOpts(c: Chart): uPlot.Options {
  return {
    width: Math.max(c.host.clientWidth, 300),
    height: 170,
    legend: { show: true },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true } },
    series: [
      {},
      ...c.labels.map((label, i) => ({ label, stroke: PALETTE[i % PALETTE.length] as string, width: 1.5, points: { show: false } })),
    ],
    axes: [{}, { size: 60 }],
  };
}

function drawChart(c: Chart): void {
  const data = c.data();
  const labels = data.length - 1;
  if (c.plot === null || labels !== c.labels.length) {
    c.plot?.destroy();
    c.host.replaceChildren();
    c.plot = new uPlot(chartOpts(c), data, c.host);
  } else c.plot.setData(data);
  c.host.dataset.points = String(data[0]?.length ?? 0);
}

const secs = (): number[] => (series?.t ?? []).map((t) => t / 1000);
const ms = (a: number[] | undefined): number[] => (a ?? []).map((v) => v / 1000);

const errorClasses = (): string[] => Object.keys(series?.errors_by_class ?? {}).sort();

const charts: Chart[] = [
  makeChart('chart-tps', ['tps', 'queries/s'], () => [secs(), series?.tps ?? [], series?.qps ?? []]),
  makeChart('chart-latency', ['p50', 'p95', 'p99'], () => [secs(), ms(series?.p50_us), ms(series?.p95_us), ms(series?.p99_us)]),
  makeChart('chart-waits', ['waiting clients', 'wait ms/s'], () => [secs(), series?.cl_waiting ?? [], ms(series?.wait_us)]),
  makeChart('chart-errors', ['errors/s'], () => [
    secs(),
    series?.errors ?? [],
    ...errorClasses().map((k) => series?.errors_by_class[k] ?? []),
  ]),
  makeChart('chart-bytes', ['in', 'out'], () => [secs(), series?.bytes_in ?? [], series?.bytes_out ?? []]),
];
/** The errors chart names one series per SQLSTATE class seen. */
function syncErrorLabels(): void {
  const c = charts[3] as Chart;
  c.labels = ['errors/s', ...errorClasses().map((k) => `class ${k}`)];
}

function mergeSeries(next: Series, append: boolean): void {
  if (!append || series === null) {
    series = next;
    return;
  }
  const s = series;
  const n = next.t.length;
  if (n === 0) return;
  const keys = ['t', 'tps', 'qps', 'p50_us', 'p95_us', 'p99_us', 'cl_waiting', 'wait_us', 'errors', 'bytes_in', 'bytes_out'] as const;
  const before = s.t.length;
  for (const k of keys) s[k].push(...next[k]);
  for (const [cls, v] of Object.entries(next.errors_by_class)) {
    const have = s.errors_by_class[cls] ?? new Array(before).fill(0);
    have.push(...v);
    s.errors_by_class[cls] = have;
  }
  for (const [cls, v] of Object.entries(s.errors_by_class)) if (!(cls in next.errors_by_class)) v.push(...new Array(n).fill(0));
  const extra = s.t.length - MAX_POINTS;
  if (extra > 0) {
    for (const k of keys) s[k].splice(0, extra);
    for (const v of Object.values(s.errors_by_class)) v.splice(0, extra);
  }
}

// ---- tiles ------------------------------------------------------------------

function tile(key: string, label: string, value: string): HTMLElement {
  return el('div', { class: 'tile', 'data-tile': key }, el('div', { class: 'label' }, label), el('div', { class: 'value' }, value));
}

function renderTiles(v: View): void {
  const t = v.tiles;
  const c = t.clients;
  const s = t.servers;
  $('tiles').replaceChildren(
    tile('cl_active', 'clients active', String(c.active ?? 0)),
    tile('cl_waiting', 'clients waiting', String(c.waiting ?? 0)),
    tile('cl_login', 'clients logging in', String(c.login ?? 0)),
    tile('clients', 'clients', String(v.clients.length)),
    tile('sv_active', 'servers active', String(s.active ?? 0)),
    tile('sv_idle', 'servers idle', String((s.idle ?? 0) + (s.used ?? 0))),
    tile('servers', 'servers', String(v.servers.length)),
    tile('tps', 'tps', fmt.n(t.tps)),
    tile('qps', 'queries/s', fmt.n(t.qps)),
    tile('errors', 'errors/s', fmt.n(t.errors)),
    tile('p50', 'p50', fmt.us(t.p50_us)),
    tile('p95', 'p95', fmt.us(t.p95_us)),
    tile('p99', 'p99', fmt.us(t.p99_us)),
  );
}

// ---- tables -------------------------------------------------------------------

interface Column {
  key: string;
  format?: (v: unknown, row: Row) => string;
}

interface TableSpec {
  id: string;
  columns: Column[];
  rows: (v: View) => Row[];
  /** Which filter fields apply, and the row's field for each. */
  filter: Partial<Record<keyof typeof filters, string>>;
  actions?: (row: Row) => HTMLElement[];
  onRow?: (row: Row) => void;
  sort: { key: string; desc: boolean };
}

const cols = (names: string, formats: Record<string, Column['format']> = {}): Column[] =>
  names.split(' ').map((key) => (formats[key] !== undefined ? { key, format: formats[key] } : { key }));

const asTime = (v: unknown): string => fmt.time(Number(v));
const asUs = (v: unknown): string => fmt.us(Number(v));
const CONN =
  'id user database state addr port local_addr local_port connect_time request_time link remote_pid tls application_name prepared_statements worker';

const tables: TableSpec[] = [
  {
    id: 't-pools',
    columns: cols(
      'database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req sv_active sv_active_cancel sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait_us pool_mode cl_pinned',
    ),
    rows: (v) => v.pools,
    filter: { database: 'database', user: 'user' },
    actions: (row) => dbActions(String(row.database)),
    sort: { key: 'database', desc: false },
  },
  {
    id: 't-hosts',
    columns: cols('database server role state read_only lag_bytes lag_ms failures sv_active sv_idle sv_other last_check last_error', {
      last_check: asTime,
      read_only: (v) => (v ? 'yes' : 'no'),
    }),
    rows: (v) => v.hosts,
    filter: { database: 'database' },
    sort: { key: 'database', desc: false },
  },
  {
    id: 't-shapes',
    columns: cols(
      'fingerprint query database user application_name calls errors rows total_time_us mean_time_us p50_us p95_us p99_us first_seen last_seen',
      { first_seen: asTime, last_seen: asTime },
    ),
    rows: (v) => v.shapes,
    filter: { database: 'database', user: 'user', application: 'application_name' },
    onRow: (row) => showShape(row),
    sort: { key: 'total_time_us', desc: true },
  },
  {
    id: 't-clients',
    columns: cols(`${CONN} wait_us pinned`, { connect_time: asTime, request_time: asTime, wait_us: asUs }),
    rows: (v) => v.clients,
    filter: { database: 'database', user: 'user', application: 'application_name' },
    actions: (row) => (me.actions && row.database !== 'postern' && row.database !== 'pgbouncer' ? [clientKill(Number(row.id))] : []),
    sort: { key: 'id', desc: false },
  },
  {
    id: 't-servers',
    columns: cols(`${CONN} close_needed`, { connect_time: asTime, request_time: asTime }),
    rows: (v) => v.servers,
    filter: { database: 'database', user: 'user', application: 'application_name' },
    sort: { key: 'id', desc: false },
  },
  {
    id: 't-events',
    columns: cols('at kind detail worker', {
      at: asTime,
      detail: (v) =>
        Object.entries(v as Record<string, unknown>)
          .map(([k, x]) => `${k}=${String(x)}`)
          .join(' '),
    }),
    rows: (v) => v.events,
    filter: {},
    sort: { key: 'at', desc: true },
  },
];

function passes(spec: TableSpec, row: Row): boolean {
  for (const [f, field] of Object.entries(spec.filter) as Array<[keyof typeof filters, string]>) {
    const want = filters[f].trim().toLowerCase();
    if (
      want !== '' &&
      !String(row[field] ?? '')
        .toLowerCase()
        .includes(want)
    )
      return false;
  }
  return true;
}

function compare(a: unknown, b: unknown): number {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return String(a ?? '').localeCompare(String(b ?? ''), 'en', { numeric: true });
}

function renderTable(spec: TableSpec, v: View): void {
  const rows = spec.rows(v).filter((r) => passes(spec, r));
  rows.sort((a, b) => compare(a[spec.sort.key], b[spec.sort.key]) * (spec.sort.desc ? -1 : 1));
  const head = el('tr');
  for (const c of spec.columns) {
    const th = el('th', { 'data-key': c.key, title: 'sort' }, c.key);
    if (spec.sort.key === c.key) th.classList.add(spec.sort.desc ? 'desc' : 'asc');
    th.addEventListener('click', () => {
      spec.sort = { key: c.key, desc: spec.sort.key === c.key ? !spec.sort.desc : false };
      renderTable(spec, v);
    });
    head.append(th);
  }
  if (spec.actions !== undefined && me.actions) head.append(el('th', {}, 'actions'));
  const body = el('tbody');
  for (const r of rows) {
    const tr = el('tr');
    for (const c of spec.columns) {
      const raw = r[c.key];
      const text = c.format !== undefined ? c.format(raw, r) : raw === null || raw === undefined ? '' : String(raw);
      tr.append(el('td', { 'data-key': c.key }, text));
    }
    if (spec.actions !== undefined && me.actions) tr.append(el('td', { class: 'actions' }, ...spec.actions(r)));
    if (spec.onRow !== undefined) {
      tr.classList.add('clickable');
      tr.addEventListener('click', (e) => {
        if (!(e.target instanceof HTMLButtonElement)) spec.onRow?.(r);
      });
    }
    body.append(tr);
  }
  const table = el('table', { 'data-rows': String(rows.length) }, el('thead', {}, head), body);
  $(spec.id).replaceChildren(table);
}

function fillLists(v: View): void {
  const sets = { database: new Set<string>(), user: new Set<string>(), application: new Set<string>() };
  for (const r of [...v.pools, ...v.clients]) {
    sets.database.add(String(r.database ?? ''));
    sets.user.add(String(r.user ?? ''));
    if (r.application_name) sets.application.add(String(r.application_name));
  }
  for (const [k, set] of Object.entries(sets)) {
    $(`l-${k}`).replaceChildren(...[...set].filter((x) => x !== '').map((x) => el('option', { value: x })));
  }
}

// ---- actions --------------------------------------------------------------------

async function act(body: Record<string, unknown>, what: string): Promise<void> {
  if (!window.confirm(`${what}?`)) return;
  const r = await fetch('/api/action', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-postern-action': '1' },
    body: JSON.stringify(body),
  });
  const out = (await r.json()) as { ok?: boolean; error?: string };
  $('status').textContent = out.ok === true ? `${what}: done` : `${what}: ${out.error ?? r.status}`;
}

function button(label: string, onClick: () => void): HTMLButtonElement {
  const b = el('button', { class: 'action', 'data-action': label }, label);
  b.addEventListener('click', (e) => {
    e.stopPropagation();
    onClick();
  });
  return b;
}

function dbActions(db: string): HTMLElement[] {
  if (!me.actions) return [];
  const paused = last?.paused.includes(db) === true;
  return [
    paused
      ? button('RESUME', () => void act({ verb: 'RESUME', database: db }, `RESUME ${db}`))
      : button('PAUSE', () => void act({ verb: 'PAUSE', database: db }, `PAUSE ${db}`)),
    button('KILL', () => void act({ verb: 'KILL', database: db }, `KILL ${db} (ends its sessions)`)),
  ];
}

function clientKill(id: number): HTMLElement {
  return button('KILL_CLIENT', () => void act({ verb: 'KILL_CLIENT', client: id }, `KILL_CLIENT ${id}`));
}

// ---- shape detail -----------------------------------------------------------------

let shown: string | null = null;

function showShape(row: Row): void {
  shown = `${row.fingerprint}\u0000${row.database}\u0000${row.user}\u0000${row.application_name}`;
  fillShape(row);
  const d = $('shape') as HTMLDialogElement;
  if (!d.open) d.showModal();
}

function fillShape(row: Row): void {
  $('shape-fp').textContent = String(row.fingerprint);
  $('shape-query').textContent = String(row.query);
  const facts: Array<[string, string]> = [
    ['database / user / application', `${row.database} / ${row.user} / ${row.application_name}`],
    ['calls', String(row.calls)],
    ['errors', String(row.errors)],
    ['rows', String(row.rows)],
    ['total time', asUs(row.total_time_us)],
    ['mean', asUs(row.mean_time_us)],
    ['p50 / p95 / p99', `${asUs(row.p50_us)} / ${asUs(row.p95_us)} / ${asUs(row.p99_us)}`],
    ['first seen', asTime(row.first_seen)],
    ['last seen', asTime(row.last_seen)],
  ];
  $('shape-facts').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  const hist = (row.hist as Array<[number | null, number]>) ?? [];
  const max = Math.max(1, ...hist.map((h) => h[1]));
  $('shape-hist').replaceChildren(
    ...hist.map(([bound, n]) => {
      const bar = el('div', { class: 'bar' });
      // CSSOM, not a style attribute: allowed by the page's CSP.
      bar.style.width = `${Math.max(1, (n / max) * 100)}%`;
      return el(
        'div',
        { class: 'hrow' },
        el('span', { class: 'hb' }, `≤ ${bound === null ? '∞' : asUs(bound)}`),
        bar,
        el('span', {}, String(n)),
      );
    }),
  );
}

// ---- rendering --------------------------------------------------------------------

function render(v: View): void {
  last = v;
  renderTiles(v);
  syncErrorLabels();
  for (const c of charts) drawChart(c);
  for (const t of tables) renderTable(t, v);
  fillLists(v);
  if (shown !== null && ($('shape') as HTMLDialogElement).open) {
    const row = v.shapes.find((s) => `${s.fingerprint}\u0000${s.database}\u0000${s.user}\u0000${s.application_name}` === shown);
    if (row !== undefined) fillShape(row);
  }
  w.__postern.points = series?.t.length ?? 0;
  w.__postern.renders++;
}

function connect(): void {
  const es = new EventSource('/api/stream');
  es.addEventListener('open', () => {
    $('status').textContent = 'live';
    $('status').className = 'status live';
  });
  es.addEventListener('error', () => {
    $('status').textContent = 'reconnecting…';
    $('status').className = 'status down';
  });
  es.addEventListener('state', (e) => {
    const v = JSON.parse((e as MessageEvent<string>).data) as View;
    mergeSeries(v.series, v.append);
    render(v);
  });
}

async function main(): Promise<void> {
  const r = await fetch('/api/me');
  me = (await r.json()) as View['me'];
  $('who').textContent = `${me.user} (${me.role === 'admin' ? 'admin' : 'stats only'})`;
  const reload = $('reload') as HTMLButtonElement;
  reload.hidden = !me.actions;
  reload.addEventListener('click', () => void act({ verb: 'RELOAD' }, 'RELOAD the configuration'));
  for (const f of Object.keys(filters) as Array<keyof typeof filters>) {
    $(`f-${f}`).addEventListener('input', (e) => {
      filters[f] = (e.target as HTMLInputElement).value;
      if (last !== null) for (const t of tables) renderTable(t, last);
    });
  }
  window.addEventListener('resize', () => {
    for (const c of charts) c.plot?.setSize({ width: Math.max(c.host.clientWidth, 300), height: 170 });
  });
  connect();
}

void main();
