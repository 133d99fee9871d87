// The Tidemark demo: a shared task board with two replicas in one page, and the
// reset-from-an-older-version flow. Plain ES modules, no dependencies besides `tidemark`
// (and its `<tidemark-devtools>` element, which shows what each replica holds).
import { openReplica, deleteReplica } from 'tidemark';
import 'tidemark/devtools';

const SYNC_URL = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/sync`;
const LIBRARY = 'taskboard';
const LISTS = ['inbox', 'work', 'home'];

// Schema v1, what the first release shipped: a task's list was a hashtag in its title.
const V1 = { version: 1, collections: { tasks: { primaryKey: 'id', indexes: { byDone: 'done', byCreated: 'createdAt' } } } };
// Schema v2: the list is a field of its own, with indexes for the board's queries.
const V2 = { version: 2, collections: { tasks: { primaryKey: 'id', indexes: {
  byCreated: 'createdAt', byDoneCreated: ['done', 'createdAt'], byListCreated: ['list', 'createdAt'] } } } };
// v1 → v2: { title: 'Book flights #travel' } becomes { title: 'Book flights', list: 'travel' }.
// Synchronous and deterministic, as migrations must be.
function toV2(doc) {
  const { title = '', ...rest } = doc;
  const tag = /(?:^|\s)#([\w-]+)/.exec(title);
  return { ...rest, title: tag ? title.replace(tag[0], '').trim() : title, list: tag ? tag[1].toLowerCase() : 'inbox' };
}
const MIGRATIONS = { 2: toV2 };

/** db id → whose device it is, for the devtools' sync points and op log and the LWW line. */
const names = new Map();

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== 'string') node[k] = v;
    else node.setAttribute(k, v);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

const ICONS = {
  edit: '<svg viewBox="0 0 20 20" width="15" height="15" aria-hidden="true"><path d="M13.6 3.4a2 2 0 0 1 2.9 2.9L7 15.8l-3.8.9.9-3.8z" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linejoin="round"/></svg>',
  delete: '<svg viewBox="0 0 20 20" width="15" height="15" aria-hidden="true"><path d="M5 5l10 10M15 5L5 15" stroke="currentColor" stroke-width="1.7" stroke-linecap="round"/></svg>',
};
function iconButton(kind, title, onclick) {
  const b = h('button', { type: 'button', class: `icon ${kind}`, title, 'aria-label': title, onclick });
  b.innerHTML = ICONS[kind];
  return b;
}

/** Compact one-line rendering of JSON fields, a task's own fields first: `title: "Milk", done: false`. */
const FIELD_ORDER = ['id', 'title', 'list', 'done', 'createdAt'];
function fieldsText(fields, skip = []) {
  if (!fields || typeof fields !== 'object') return '';
  const rank = (k) => (FIELD_ORDER.includes(k) ? FIELD_ORDER.indexOf(k) : FIELD_ORDER.length);
  return Object.entries(fields).filter(([k]) => !skip.includes(k)).sort(([a], [b]) => rank(a) - rank(b))
    .map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join(', ');
}

/**
 * Shows a replica's 'progress' events on a progress bar (`.sync-progress`: a <progress> and
 * a `.progress-text`), which stays at the last step when the pass ends. (The boards' long
 * syncs show theirs in <tidemark-devtools>.) Returns a function that stops listening.
 */
function progressBar(root, db) {
  const bar = root.querySelector('progress');
  const text = root.querySelector('.progress-text');
  root.dataset.events = '0';
  const doing = {
    rows: (d) => (d === 'push' ? 'Sending' : 'Receiving'), snapshot: () => 'Staging the snapshot', copy: () => 'Copying the op log',
    merge: () => 'Merging local documents', migrate: () => 'Migrating', swap: () => 'Swapping in',
  };
  return db.on('progress', ({ direction, phase, done, total }) => {
    if (!total) return;
    root.hidden = false;
    bar.max = total;
    bar.value = done;
    text.textContent = `${(doing[phase] ?? doing.rows)(direction)} ${done.toLocaleString()} / ${total.toLocaleString()}`;
    root.dataset.last = `${direction} ${phase} ${done}/${total}`;
    root.dataset.events = String(Number(root.dataset.events) + 1);
  });
}

/**
 * The newest local edit in `ops` (recentOps rows, newest first) that another replica's
 * later edit replaced — last writer wins, per field. Only the winner reaches every log (a
 * replica does not log an arriving op that already lost), so this is seen where the losing
 * edit was written. Stamps compare as strings: Tidemark writes them fixed-width, ordered
 * bytewise.
 */
function overwrittenEdit(ops, self) {
  for (let i = 0; i < ops.length; i++) {
    const won = ops[i].op;
    if (!ops[i].from || won.origin === self || won.kind === 'delete') continue;
    for (const [field, value] of Object.entries(won.fields ?? {})) {
      if (value === won.id) continue;
      // The op this one replaced: the newest older row on the same document and field.
      const before = ops.slice(i + 1).find(({ op }) => op.collection === won.collection && op.id === won.id
        && (op.kind === 'delete' || (op.fields && field in op.fields)));
      const lost = before?.op;
      if (lost && lost.origin === self && lost.kind !== 'delete' && lost.ts < won.ts
        && JSON.stringify(lost.fields[field]) !== JSON.stringify(value)) return { field, lost, won };
    }
  }
  return null;
}

// ---------------------------------------------------------------- a replica panel

class Board {
  constructor(root) {
    this.root = root;
    this.name = root.dataset.replica;
    this.person = root.dataset.person;
    root.append(document.getElementById('panel-template').content.cloneNode(true));
    this.filter = 'all';
    this.wantOnline = true;
    this.editing = null;
    this.latest = null;
    this.seen = null;
    this.error = null;
  }

  $(sel) { return this.root.querySelector(sel); }

  async open() {
    this.$('.name').textContent = `${this.person}'s ${this.root.dataset.device}`;
    this.$('.avatar').textContent = this.person[0];
    this.$('.replica-name').textContent = this.name;
    this.$('.new-list').append(...LISTS.map((l) => h('option', { value: l }, l)));
    this.db = await openReplica({ name: this.name, schema: V2, history: [V1], migrations: MIGRATIONS,
      sync: { url: SYNC_URL, library: LIBRARY } });
    const s = this.db.status();
    this.dbId = s.dbId;
    names.set(s.dbId, `${this.person}'s ${this.root.dataset.device}`);
    this.$('.schema').textContent = `v${s.schemaVersion}`;
    const devtools = this.$('tidemark-devtools');
    devtools.peerNames = names;
    devtools.db = this.db;

    this.db.on('sync', () => { this.error = null; this.refresh(); });
    this.db.on('online', () => this.refresh());
    this.db.on('error', (e) => { this.error = e; this.refresh(); });
    this.db.on('reset', () => this.refresh());
    // Counts (and the sync view) follow every change to the collection, from any tab.
    this.db.subscribe('tasks', {}, (docs) => {
      const done = docs.filter((d) => d.done === true).length;
      this.$('[data-count="all"]').textContent = docs.length;
      this.$('[data-count="open"]').textContent = docs.length - done;
      this.$('[data-count="done"]').textContent = done;
      this.refresh();
    });
    this.subscribe();
    this.bind();
    this.db.connect();
    this.connectedAt = Date.now();
    this.refresh();
    // The badges also need a clock: "connecting" turns into "another tab syncs".
    setInterval(() => this.refresh(), 1500);
  }

  subscribe() {
    this.unsubscribe?.();
    const query = { orderBy: { createdAt: 'desc' } };
    if (this.filter !== 'all') query.where = { done: this.filter === 'done' };
    this.seen = null;
    this.unsubscribe = this.db.subscribe('tasks', query, (docs) => this.renderTasks(docs));
  }

  bind() {
    this.$('.add').addEventListener('submit', async (e) => {
      e.preventDefault();
      const input = this.$('.new-title');
      const title = input.value.trim();
      if (!title) return;
      input.value = '';
      await this.write(() => this.db.put('tasks', { id: crypto.randomUUID(), title, list: this.$('.new-list').value, done: false, createdAt: Date.now() }));
      input.focus();
    });
    this.$('.filter').addEventListener('click', (e) => {
      const b = e.target.closest('button[data-filter]');
      if (!b || b.dataset.filter === this.filter) return;
      this.filter = b.dataset.filter;
      for (const x of this.$('.filter').children) x.classList.toggle('on', x === b);
      this.subscribe();
    });
    this.$('.online-toggle').addEventListener('change', (e) => {
      this.wantOnline = e.target.checked;
      if (this.wantOnline) { this.db.connect(); this.connectedAt = Date.now(); } else { this.db.disconnect(); }
      this.error = null;
      this.refresh();
    });
  }

  async write(fn) {
    try {
      await fn();
      if (this.error?.write) this.error = null;
    } catch (e) {
      this.error = Object.assign(e, { write: true });
    }
    this.refresh();
  }

  renderTasks(docs) {
    this.latest = docs;
    if (this.editing) return; // applied when the edit ends
    const ul = this.$('.tasks');
    if (!docs.length) {
      const text = { all: 'No tasks yet. Add one above — it shows up on the other replica too.', open: 'Nothing open. Nice.', done: 'Nothing done yet.' }[this.filter];
      ul.replaceChildren(h('li', { class: 'empty' }, text));
    } else {
      ul.replaceChildren(...docs.map((d) => this.item(d)));
    }
    this.seen = new Set(docs.map((d) => d.id));
  }

  item(d) {
    const isNew = this.seen && !this.seen.has(d.id);
    const li = h('li', { class: `task${d.done ? ' done' : ''}${isNew ? ' flash' : ''}`, dataset: { id: d.id } },
      h('input', { type: 'checkbox', class: 'toggle', checked: d.done === true, 'aria-label': 'Done',
        onchange: (e) => this.write(() => this.db.patch('tasks', d.id, { done: e.target.checked })) }),
      h('span', { class: 'title', title: 'Double-click to edit', ondblclick: () => this.edit(li, d) }, String(d.title ?? '')),
      h('span', { class: 'tag', dataset: { list: d.list ?? 'inbox' } }, d.list ?? 'inbox'),
      iconButton('edit', 'Edit title', () => this.edit(li, d)),
      iconButton('delete', 'Delete', () => this.write(() => this.db.delete('tasks', d.id))));
    return li;
  }

  edit(li, d) {
    if (this.editing) return;
    this.editing = d.id;
    const span = li.querySelector('.title');
    const input = h('input', { type: 'text', class: 'edit-input', value: String(d.title ?? ''), 'aria-label': 'Title', maxlength: '140' });
    span.replaceWith(input);
    input.focus();
    input.select();
    let finished = false;
    const finish = async (save) => {
      if (finished) return;
      finished = true;
      const title = input.value.trim();
      if (save && title && title !== d.title) await this.write(() => this.db.patch('tasks', d.id, { title }));
      this.editing = null;
      if (this.latest) this.renderTasks(this.latest);
    };
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') { e.preventDefault(); finish(true); }
      if (e.key === 'Escape') { e.preventDefault(); finish(false); }
    });
    input.addEventListener('blur', () => finish(true));
  }

  /** Re-reads status() and recentOps(); bursts are coalesced into one pass. */
  refresh() {
    if (!this.db) return;
    if (this.refreshing) { this.again = true; return; }
    this.refreshing = true;
    (async () => {
      do {
        this.again = false;
        await this.renderInsight();
      } while (this.again);
    })().catch((e) => { this.error = e; }).finally(() => { this.refreshing = false; });
  }

  async renderInsight() {
    const s = this.db.status();
    const ops = await this.db.recentOps(40);

    // Connection state and pending writes.
    let state;
    if (!this.wantOnline) state = 'offline';
    // Another tab runs live sync: this one's status follows it (online while it is).
    else if (s.leader === false && (s.online || Date.now() - this.connectedAt > 1200)) state = 'follower';
    else if (s.online) state = 'online';
    else state = 'connecting';
    const conn = this.$('.badge.conn');
    conn.dataset.state = state;
    conn.textContent = { online: 'Online', connecting: 'Connecting…', follower: 'Synced by another tab', offline: 'Offline' }[state];
    this.root.classList.toggle('is-offline', state === 'offline');
    this.root.dataset.state = state;
    const pending = this.$('.badge.pending');
    pending.hidden = !(s.pending > 0);
    pending.textContent = `${s.pending} pending`;
    this.root.dataset.pending = String(s.pending);

    const notice = this.$('.notice');
    let text = '';
    let isError = false;
    const syncError = String(this.error?.code ?? '').startsWith('SYNC_');
    if (this.error?.write) { text = `That change was not saved: ${this.error.message}`; isError = true; }
    else if (this.error && !syncError) { text = `${this.error.code ? `${this.error.code}: ` : ''}${this.error.message}`; isError = true; }
    else if (state === 'offline') text = s.pending > 0 ? `Offline. ${s.pending} change${s.pending === 1 ? ' is' : 's are'} saved on this device and will sync when you go back online.` : 'Offline. Changes are saved on this device and sync when you go back online.';
    else if (state === 'follower') text = 'Another tab of this page runs live sync for this replica; this one follows along through IndexedDB.';
    else if (state === 'connecting' && this.error) { text = `Can't reach the server (${this.error.code ?? 'error'}). Retrying — your changes are safe locally.`; isError = true; }
    notice.hidden = !text;
    notice.textContent = text;
    notice.classList.toggle('error', isError);

    this.$('.leader').textContent = s.leader ? 'runs live sync' : this.wantOnline ? 'follows' : 'not syncing';

    // Where one of this replica's edits lost to a later one, say so in one line (the
    // newest such edit stays shown).
    const loss = overwrittenEdit(ops, this.dbId);
    if (loss && loss.won.ts !== this.loss?.won.ts) this.loss = loss;
    const lww = this.$('.lww');
    lww.hidden = !this.loss;
    if (this.loss) {
      const { field, lost, won } = this.loss;
      const who = (origin) => names.get(origin) ?? 'another replica';
      lww.replaceChildren(h('b', {}, 'Last writer wins: '), `${who(won.origin)} set ${field} to ${JSON.stringify(won.fields[field])} `
        + `after ${who(lost.origin)} set it to ${JSON.stringify(lost.fields[field])}, so the later edit stays on every replica.`);
    }
  }
}

// ---------------------------------------------------------------- the reset flow

const LEGACY_TITLES = ['Book flights #travel', 'Renew passport #travel', 'Water the plants #home', 'Fix the leaking tap #home',
  'Quarterly report #work', 'Review the pricing page #work', 'Call the bank', 'Buy a birthday present #home',
  'Prepare the offsite slides #work', 'Pick up dry cleaning'];

function setStep(step, state, ...detail) {
  const li = document.querySelector(`#steps li[data-step="${step}"]`);
  li.dataset.state = state;
  if (detail.length) li.querySelector('.detail').replaceChildren(...detail);
}
const flag = (name, on, text = String(on)) => h('span', { class: `flag${on === true ? ' yes' : ''}` }, `${name}: ${text}`);
const docText = (doc) => `{ ${fieldsText(doc)} }`;

async function runReset() {
  const button = document.getElementById('run-reset');
  const section = document.getElementById('upgrade');
  const out = document.getElementById('reset-result');
  button.disabled = true;
  button.textContent = 'Running…';
  section.dataset.state = 'running';
  out.hidden = true;
  for (const li of document.querySelectorAll('#steps li')) { li.dataset.state = ''; li.querySelector('.detail').replaceChildren(); }
  // A library and replicas of their own per run, so the flow can be replayed.
  const run = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  const library = `upgrade-${run}`;
  const v1Name = `upgrade-v1-${run}`;
  const v2Name = `upgrade-v2-${run}`;
  let current = 'v1';
  let v1;
  let v2;
  let stopProgress = () => {};
  document.getElementById('reset-progress').hidden = true;
  try {
    // 1. App v1 writes tasks under schema version 1 and syncs them.
    setStep('v1', 'running');
    v1 = await openReplica({ name: v1Name, schema: V1, sync: { url: SYNC_URL, library } });
    const base = Date.now() - 7 * 86400e3;
    const legacy = LEGACY_TITLES.map((title, i) => ({ id: `v1-${String(i + 1).padStart(2, '0')}`, title, done: i % 4 === 3, createdAt: base + i * 3600e3 }));
    await v1.putMany('tasks', legacy);
    const pushed = await v1.syncNow();
    await v1.close();
    v1 = null;
    setStep('v1', 'done', `Wrote ${legacy.length} tasks like `, h('code', {}, docText({ title: legacy[0].title, done: false })),
      `; the sync pushed ${pushed.sent} rows to the server.`);

    // 2. A fresh install of v2, used offline before its first sync.
    current = 'local';
    setStep('local', 'running');
    v2 = await openReplica({ name: v2Name, schema: V2, history: [V1], migrations: MIGRATIONS,
      sync: { url: SYNC_URL, library, perDiff: 4 } });
    const resetEvents = [];
    v2.on('reset', (r) => resetEvents.push(r));
    stopProgress = progressBar(document.getElementById('reset-progress'), v2);
    const now = Date.now();
    const local = [
      { id: 'local-1', title: 'Try the new app', list: 'work', done: false, createdAt: now },
      { id: 'local-2', title: 'Invite the team', list: 'work', done: false, createdAt: now + 1 },
    ];
    for (const doc of local) await v2.put('tasks', doc);
    const before = v2.status();
    setStep('local', 'done', 'Wrote ', h('code', {}, `"${local[0].title}"`), ' and ', h('code', {}, `"${local[1].title}"`),
      ' before ever syncing: ', h('code', {}, `pending: ${before.pending}`), '.');

    // 3. The first sync: the server answers with a snapshot of v1 data, staged in a new
    // generation, migrated there, and swapped in at once.
    current = 'sync';
    setStep('sync', 'running');
    const phases = [];
    const stopPhases = v2.on('progress', ({ phase, done, total }) => {
      const last = phases.at(-1);
      if (last?.phase === phase) { last.done = done; last.total = total; } else phases.push({ phase, done, total });
    });
    // A live query: during the reset it keeps showing the old state, then fires once.
    const seen = [];
    const stopLive = v2.subscribe('tasks', {}, (docs) => seen.push(docs.length));
    const report = await v2.syncNow();
    await new Promise((ok) => setTimeout(ok, 50));
    stopPhases();
    stopLive();
    stopProgress(); // the bar stays at the reset's last step: the swap
    const swaps = phases.filter((p) => p.phase === 'swap').length;
    setStep('sync', report.reset ? 'done' : 'failed', h('div', { class: 'flags' },
      flag('snapshot', report.snapshot), flag('reset', report.reset), flag("'reset' event", resetEvents.length > 0, resetEvents.length ? 'fired' : 'not fired'),
      flag('sent', report.sent), flag('received', report.received)),
      h('ol', { class: 'phases', id: 'reset-phases' }, phases.filter((p) => p.phase !== 'rows').map((p) =>
        h('li', { dataset: { phase: p.phase } }, `${p.phase}: ${p.phase === 'swap' ? 'one pointer flip' : `${p.done}/${p.total}`}`))),
      h('p', { class: 'live-note', id: 'reset-live' },
        `The live query showed ${seen[0]} tasks throughout the reset, then ${seen.at(-1)} — ${seen.length - 1} update${seen.length === 2 ? '' : 's'}, ${swaps === 1 ? 'one swap' : `${swaps} swaps`}.`));
    if (!report.reset) throw new Error('the server did not answer with older-version data');

    // 4. The result: migrated documents, local writes kept; the next sync is diffs.
    current = 'result';
    setStep('result', 'running');
    const again = await v2.syncNow();
    const docs = await v2.query('tasks', { orderBy: { createdAt: 'desc' } });
    const after = v2.status();
    const kept = local.filter((l) => docs.some((d) => d.id === l.id && d.title === l.title && d.list === l.list));
    const migrated = docs.filter((d) => d.id.startsWith('v1-') && typeof d.list === 'string' && !/#/.test(d.title));
    const sample = docs.find((d) => d.id === legacy[0].id);
    setStep('result', 'done', h('div', { class: 'flags' },
      flag('migrated', `${migrated.length}/${legacy.length}`), flag('local kept', `${kept.length}/${local.length}`),
      flag('pending', after.pending), flag('next sync reset', again.reset)));

    out.replaceChildren(
      h('div', { class: 'before-after' },
        h('h3', {}, 'One task, before and after'),
        h('div', { class: 'docbox' }, h('span', { class: 'label' }, 'written by app v1 (schema 1)'), docText(legacy[0])),
        h('div', { class: 'docbox' }, h('span', { class: 'label' }, 'as the v2 replica holds it after the reset'), docText(sample ?? {})),
        h('p', { class: 'summary', id: 'reset-summary' },
          `reset: ${report.reset} · ${migrated.length} v1 tasks migrated · ${kept.length} of ${local.length} local writes kept · ${after.pending} pending`)),
      h('div', {},
        h('h3', {}, `The v2 replica's tasks (${docs.length})`),
        h('table', { class: 'migrated' },
          h('thead', {}, h('tr', {}, h('th', {}, 'title'), h('th', {}, 'list'), h('th', {}, 'done'), h('th', {}, 'from'))),
          h('tbody', {}, docs.map((d) => {
            const isLocal = d.id.startsWith('local-');
            return h('tr', { class: isLocal ? 'local' : '', dataset: { id: d.id } },
              h('td', {}, d.title), h('td', {}, h('span', { class: 'tag', dataset: { list: d.list } }, d.list)),
              h('td', {}, d.done ? '✓' : ''),
              h('td', { class: 'origin' }, isLocal ? 'local write · kept' : 'app v1 · migrated'));
          })))));
    out.hidden = false;
    section.dataset.state = 'done';
  } catch (e) {
    setStep(current, 'failed', `${e.code ? `${e.code}: ` : ''}${e.message}`);
    section.dataset.state = 'failed';
  } finally {
    stopProgress();
    for (const db of [v1, v2]) { if (db) await db.close().catch(() => {}); }
    for (const name of [v1Name, v2Name]) await deleteReplica(name).catch(() => {});
    button.disabled = false;
    button.textContent = 'Run it again';
  }
}

// ---------------------------------------------------------------- start

document.getElementById('server-url').textContent = SYNC_URL;
document.getElementById('run-reset').addEventListener('click', runReset);
const boards = [...document.querySelectorAll('.panel')].map((root) => new Board(root));
try {
  await Promise.all(boards.map((b) => b.open()));
  document.documentElement.dataset.ready = 'true';
} catch (e) {
  const msg = h('p', { class: 'notice error' }, `Could not open the replicas: ${e.code ? `${e.code}: ` : ''}${e.message}`);
  document.querySelector('.boards').before(msg);
  document.documentElement.dataset.ready = 'failed';
}
