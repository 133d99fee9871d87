// `tidemark/devtools`: a `<tidemark-devtools>` element that shows what a replica is doing —
// its sync points with readable peer names, pending rows, the op log, live queries, the
// running pass's progress, and (when the replica reports them) quarantined ops and
// conflicts. Give it a replica: `el.db = db`; optionally `el.peerNames = { [dbId]: 'Ada' }`.
// It reads only the public API, updates on the replica's events, and renders into a
// shadow root (style it through `::part(...)` or the `--tm-*` custom properties).
// Importing it in Node is safe: the element is defined only where custom elements exist.

const TAG = 'tidemark-devtools';
const EVENTS = ['change', 'sync', 'online', 'reset', 'error', 'futureVersion'];

/** The first six hex digits of a db id: enough to tell peers apart. */
export const shortId = (id) => (id ? String(id).slice(0, 6) : '—');

/**
 * A readable name for the peer `id` as seen from a replica with status `status`: a name
 * the app gave, "this replica", "server" for the peers it syncs with directly (they hold
 * its outgoing points), else "replica <short id>" for replicas known through the server.
 */
export function peerName(id, status, names) {
  const given = names instanceof Map ? names.get(id) : names?.[id];
  if (given) return given;
  if (id === status?.dbId) return 'this replica';
  if (status?.outgoing && id in status.outgoing) return 'server';
  return `replica ${shortId(id)}`;
}

/**
 * `title: "Milk", done: false`, at most `max` characters: string fields first (they are
 * what people recognise a document by), without the field holding `id` (the primary key).
 */
function fieldsText(fields, max = 90, id = undefined) {
  if (!fields || typeof fields !== 'object') return '';
  const text = Object.entries(fields).filter(([, v]) => id === undefined || v !== id)
    .sort(([, a], [, b]) => (typeof b === 'string') - (typeof a === 'string'))
    .map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join(', ');
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

const CSS = `
:host { display: block; font: 12px/1.45 var(--tm-font, ui-monospace, SFMono-Regular, Menlo, Consolas, monospace);
  color: var(--tm-fg, #1d2733); background: var(--tm-bg, #f7f9fb); border: 1px solid var(--tm-border, #dde3ea);
  border-radius: 8px; padding: 10px 12px; }
:host([hidden]), [hidden] { display: none !important; }
.head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 10px; }
.db-name { font-weight: 700; }
.muted, .id { color: var(--tm-muted, #6b7785); }
.badge { border-radius: 999px; padding: 0 7px; background: var(--tm-badge, #e7ecf1); }
.badge.online { background: var(--tm-ok-bg, #dcf3e6); color: var(--tm-ok, #17663d); }
.badge.unsynced { background: var(--tm-warn-bg, #fdf0d5); color: var(--tm-warn, #7a5200); }
.progress { display: flex; align-items: center; gap: 8px; margin-top: 6px; }
.progress progress { flex: 1; height: 8px; accent-color: var(--tm-accent, #0e6e8c); }
section { margin-top: 8px; }
h4 { margin: 0 0 3px; font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: var(--tm-muted, #6b7785); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 1px 8px 1px 0; font-weight: normal; }
th { color: var(--tm-muted, #6b7785); }
td.n { font-variant-numeric: tabular-nums; }
ol, ul { list-style: none; margin: 0; padding: 0; }
li { display: flex; gap: 6px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
li .what { overflow: hidden; text-overflow: ellipsis; flex: 1; }
.kind { min-width: 3.6em; }
.kind.put { color: var(--tm-put, #17663d); } .kind.patch { color: var(--tm-patch, #0e6e8c); } .kind.delete { color: var(--tm-delete, #b3261e); }
.none { color: var(--tm-muted, #6b7785); }
.error { margin-top: 6px; color: var(--tm-delete, #b3261e); white-space: normal; }
`;

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? '' : String(v));
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

const Base = globalThis.HTMLElement ?? class {};

export class TidemarkDevtools extends Base {
  #db = null;
  #names = null;
  #offs = [];
  #timer = null;
  #running = false;
  #again = false;
  /** Passes in a row that read again: `status()` moved during, or lagged, the op-log read (`#render`). */
  #behind = 0;
  #progress = null;
  #error = null;
  #parts = null;

  static get observedAttributes() { return ['ops']; }

  /** The replica shown (a `Replica` from `openReplica`), or null. */
  get db() { return this.#db; }
  set db(db) {
    if (db === this.#db) return;
    this.#detach();
    this.#db = db ?? null;
    this.#progress = null;
    this.#error = null;
    if (this.isConnected) this.#attach();
  }

  /** Names for db ids (`{ [dbId]: name }` or a `Map`), shown instead of "replica 3f2a9c". */
  get peerNames() { return this.#names; }
  set peerNames(names) { this.#names = names ?? null; this.refresh(); }

  connectedCallback() {
    if (!this.shadowRoot) this.#build();
    this.#attach();
  }

  disconnectedCallback() { this.#detach(); }

  attributeChangedCallback() { this.refresh(); }

  #build() {
    const root = this.attachShadow({ mode: 'open' });
    const style = h('style');
    style.textContent = CSS;
    const p = {
      head: h('div', { class: 'head', part: 'head' }),
      progress: h('div', { class: 'progress', part: 'progress', hidden: true }, h('progress', { max: 1, value: 0 }), h('span', { class: 'progress-text' })),
      points: h('tbody'),
      pending: h('ol'),
      pendingTitle: h('h4', {}, 'Pending rows'),
      quarantined: h('section', { class: 'quarantined', part: 'section', hidden: true }),
      conflicts: h('section', { class: 'conflicts', part: 'section', hidden: true }),
      ops: h('ol'),
      queries: h('ul'),
      error: h('div', { class: 'error', part: 'error', hidden: true }),
    };
    root.append(style, p.head, p.progress,
      h('section', { class: 'points', part: 'section' }, h('h4', {}, 'Sync points'),
        h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'peer'), h('th', { title: "Last row of that peer's this replica holds" }, 'incoming'),
          h('th', { title: 'Last row of this replica that peer holds' }, 'outgoing'))), p.points)),
      h('section', { class: 'pending', part: 'section' }, p.pendingTitle, p.pending),
      p.quarantined, p.conflicts,
      h('section', { class: 'ops', part: 'section' }, h('h4', {}, 'Op log'), p.ops),
      h('section', { class: 'queries', part: 'section' }, h('h4', {}, 'Live queries'), p.queries),
      p.error);
    this.#parts = p;
  }

  #attach() {
    const db = this.#db;
    if (!db || this.#offs.length) { this.refresh(); return; }
    this.#offs = EVENTS.map((type) => db.on(type, (payload) => {
      if (type === 'sync') { this.#progress = null; this.#error = null; }
      if (type === 'error') { this.#error = payload; this.#progress = null; }
      // The round's end hides the bar at once, not after the re-read that follows.
      if (type === 'sync' || type === 'error') this.#drawProgress();
      this.refresh();
    }));
    // Progress is drawn at once, without re-reading the replica.
    this.#offs.push(db.on('progress', (p) => {
      const prev = this.#progress?.direction === p.direction ? this.#progress : null;
      // A long pass: batches still to come, or a total that grows (snapshots count as they go).
      const long = p.done < p.total || (prev !== null && (prev.long || prev.total !== p.total));
      this.#progress = { ...p, long };
      this.#drawProgress();
    }));
    // Some facts change without an event (which tab leads live sync).
    this.#timer = setInterval(() => this.refresh(), 2000);
    this.refresh();
  }

  #detach() {
    for (const off of this.#offs) off();
    this.#offs = [];
    clearInterval(this.#timer);
    this.#timer = null;
  }

  /** Re-reads the replica and redraws; bursts of calls are coalesced into one more pass. */
  refresh() {
    if (!this.#parts) return;
    if (this.#running) { this.#again = true; return; }
    this.#running = true;
    queueMicrotask(async () => {
      try {
        do {
          this.#again = false;
          await this.#render();
        } while (this.#again);
      } finally {
        this.#running = false;
      }
    });
  }

  /**
   * The bar shows while a long pass is under way — one with batches still to come, or whose
   * total grew (a snapshot counts as it arrives) — until the round ends. Passes done in one
   * batch (most live-sync rounds) never show it.
   */
  #drawProgress() {
    const p = this.#parts;
    if (!p) return;
    const pr = this.#progress;
    p.progress.hidden = !pr?.long;
    if (!pr) return;
    const bar = p.progress.querySelector('progress');
    bar.max = Math.max(pr.total, 1);
    bar.value = Math.min(pr.done, bar.max);
    const text = `${pr.direction === 'push' ? 'pushing' : 'pulling'} ${pr.done} / ${pr.total}`;
    p.progress.querySelector('.progress-text').textContent = text;
    p.progress.dataset.progress = `${pr.direction} ${pr.done}/${pr.total}`;
  }

  async #render() {
    const p = this.#parts;
    const db = this.#db;
    if (!db) {
      p.head.replaceChildren(h('span', { class: 'none' }, 'No replica: set the element\'s db property.'));
      for (const list of [p.points, p.pending, p.ops, p.queries]) list.replaceChildren();
      p.progress.hidden = true;
      return;
    }
    let status;
    let ops;
    let conflicts;
    try {
      const before = db.status().maxRow;
      ops = await db.recentOps(Number(this.getAttribute('ops')) || 12);
      // A replica-wide list, where a replica reports one (`conflicts()` with no arguments);
      // Tidemark's own `conflicts(collection, id)` answers per document and is not called.
      conflicts = typeof db.conflicts === 'function' ? (db.conflicts.length === 0 ? await db.conflicts() : undefined) : db.conflicts;
      // Read after the op log, so the head is never older than the lists under it. Rows
      // that landed while the log was read (the status moved) or that the status does not
      // show yet (the log is newer) make the panel read again rather than draw a head and
      // lists that disagree.
      status = db.status();
      const newest = ops.length ? ops[0].row : 0;
      if ((newest > status.maxRow || status.maxRow !== before) && this.#behind < 3) {
        this.#behind += 1;
        this.#again = true;
        return;
      }
      this.#behind = 0;
    } catch (e) {
      p.error.hidden = false;
      p.error.textContent = `${e.code ? `${e.code}: ` : ''}${e.message}`;
      return;
    }
    const name = (id) => peerName(id, status, this.#names);

    p.head.replaceChildren(...[
      h('span', { class: 'db-name' }, db.name ?? 'replica'),
      h('span', { class: 'id', title: status.dbId }, `${name(status.dbId)} · ${shortId(status.dbId)}`),
      h('span', { class: `badge ${status.online ? 'online' : 'offline'}` }, status.online ? 'online' : 'offline'),
      status.leader ? h('span', { class: 'badge live-sync', title: 'This tab runs live sync for the replica' }, 'live sync') : null,
      status.pending > 0 ? h('span', { class: 'badge unsynced' }, `${status.pending} pending`) : null,
      h('span', { class: 'muted' }, `schema v${status.schemaVersion} · ${status.maxRow} rows`),
    ].filter(Boolean));

    const peers = [...new Set([...Object.keys(status.incoming ?? {}), ...Object.keys(status.outgoing ?? {})])];
    const rank = (id) => (status.outgoing && id in status.outgoing ? 0 : 1);
    peers.sort((a, b) => rank(a) - rank(b) || name(a).localeCompare(name(b)));
    p.points.replaceChildren(...(peers.length
      ? peers.map((id) => h('tr', { 'data-peer': id, title: id },
        h('td', {}, h('span', { class: 'peer' }, name(id)), h('span', { class: 'id' }, ` ${shortId(id)}`)),
        h('td', { class: 'n' }, String(status.incoming?.[id] ?? '—')),
        h('td', { class: 'n' }, String(status.outgoing?.[id] ?? '—'))))
      : [h('tr', {}, h('td', { class: 'none', colspan: 3 }, 'not synced yet'))]));

    // Pending: local rows above the newest point a server acknowledged.
    const acked = Math.max(0, ...Object.values(status.outgoing ?? {}));
    const pending = ops.filter((r) => !r.from && r.op.origin === status.dbId && r.row > acked);
    p.pendingTitle.textContent = `Pending rows (${status.pending})`;
    p.pending.replaceChildren(...(pending.length ? pending.map((r) => this.#opItem(r, name))
      : [h('li', { class: 'none' }, status.pending > 0 ? 'older than the op log shown' : 'none: every local write is acknowledged')]));

    p.ops.replaceChildren(...(ops.length ? ops.map((r) => this.#opItem(r, name)) : [h('li', { class: 'none' }, 'no ops yet')]));

    const live = Array.isArray(db.liveQueries) ? db.liveQueries : [];
    p.queries.replaceChildren(...(live.length
      ? live.map((q) => h('li', {}, h('span', { class: 'what' }, `${q.collection}${'id' in q ? ` / ${q.id}` : ` ${JSON.stringify(q.query ?? {})}`}`)))
      : [h('li', { class: 'none' }, 'none')]));

    // Reported only by replicas that have them: shown when present, hidden otherwise.
    this.#list(p.quarantined, 'Quarantined ops', status.quarantined);
    this.#list(p.conflicts, 'Conflicts', conflicts);

    this.#drawProgress();
    p.error.hidden = !this.#error;
    p.error.textContent = this.#error ? `${this.#error.code ? `${this.#error.code}: ` : ''}${this.#error.message}` : '';
  }

  #opItem({ row, op, from }, name) {
    const by = op.origin === this.#db.status().dbId ? 'local' : name(op.origin);
    const doc = `${op.collection}/${op.id.length > 12 ? `${op.id.slice(0, 8)}…` : op.id}`;
    const what = op.kind === 'delete' ? doc : `${doc} ${fieldsText(op.fields, 90, op.id)}`;
    return h('li', { 'data-row': row, title: JSON.stringify({ row, op, from }) },
      h('span', { class: 'muted' }, `#${row}`),
      h('span', { class: `kind ${op.kind}` }, op.kind),
      h('span', { class: 'what' }, what),
      h('span', { class: 'by' }, by, from && from !== op.origin ? ` via ${name(from)}` : ''));
  }

  /** A section listing `items` (an array, or a count), hidden when the replica has none to report. */
  #list(section, title, items) {
    const present = items !== undefined && items !== null;
    section.hidden = !present;
    if (!present) { section.replaceChildren(); return; }
    const list = Array.isArray(items) ? items : typeof items === 'number' ? [] : [items];
    const count = typeof items === 'number' ? items : list.length;
    section.replaceChildren(h('h4', {}, `${title} (${count})`),
      h('ol', {}, ...(list.length ? list.map((it) => h('li', { title: JSON.stringify(it) }, h('span', { class: 'what' }, this.#describe(it))))
        : [h('li', { class: 'none' }, 'none')])));
  }

  #describe(item) {
    if (item && typeof item === 'object') {
      const op = item.op ?? item;
      const where = op.collection && op.id ? `${op.collection}/${op.id} ` : '';
      const why = item.reason ?? item.code ?? item.message ?? '';
      const rest = fieldsText(item.op ? op.fields : Object.fromEntries(Object.entries(item).filter(([k]) => !['collection', 'id', 'reason', 'code', 'message'].includes(k))));
      return `${where}${why ? `${why} ` : ''}${rest}`.trim() || JSON.stringify(item);
    }
    return String(item);
  }
}

if (globalThis.customElements && !globalThis.customElements.get(TAG)) {
  globalThis.customElements.define(TAG, TidemarkDevtools);
}
