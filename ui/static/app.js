// Live updates without a reload: when the server says something changed
// (a new event logged, a service's state, an action), the page's <main>
// and navigation are fetched again and swapped in place. Nothing is
// swapped while the operator is typing in a form or on an older page of
// the event log. Without JavaScript every page still works; it only does
// not update by itself.
let timer = null;
let again = false;
const busy = () => {
  const a = document.activeElement;
  return a && (a.tagName === 'INPUT' || a.tagName === 'SELECT' || a.tagName === 'TEXTAREA');
};
// An older page of the event log, or a container's logs (each refetch
// would ask the node's agent again), stays as it is.
const frozen = () => new URLSearchParams(location.search).has('before') || !!document.getElementById('log');
async function refresh() {
  timer = null;
  if (busy() || frozen()) return;
  try {
    const response = await fetch(location.href, { headers: { 'Accept': 'text/html' } });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), 'text/html');
    for (const id of ['live', 'nav']) {
      const fresh = page.getElementById(id);
      const old = document.getElementById(id);
      if (fresh && old && !busy()) old.replaceWith(fresh);
    }
    document.title = page.title;
  } finally {
    if (again) { again = false; schedule(); }
  }
}
function schedule() {
  if (timer) { again = true; return; }
  timer = setTimeout(refresh, 300);
}
const source = new EventSource('/api/stream');
// New events in the log matter only to a page that lists events; a
// change of state, an action or an agent's figures to every page.
source.onmessage = (message) => {
  let change = {};
  try { change = JSON.parse(message.data); } catch (_) { /* a bare ping */ }
  if (change.events !== undefined && !document.getElementById('events')) return;
  // A node's new figures alone are written into its card in place: no
  // fetch. A page without that card has nothing to change; one whose card
  // shows no figures yet fetches.
  if (change.vitals) {
    const card = document.getElementById('node-' + change.vitals.node);
    if (!card) return;
    const dd = card.querySelectorAll('dl.vitals dd');
    if (dd.length !== 3) { schedule(); return; }
    dd[0].textContent = change.vitals.load;
    dd[1].textContent = change.vitals.memory;
    dd[2].textContent = change.vitals.disk;
    dd[2].className = change.vitals.disk_class;
    return;
  }
  schedule();
};
// After a reconnect (the server restarted), catch up once; the first
// open needs none: the page was just loaded.
let opened = false;
source.onopen = () => {
  if (opened) schedule();
  opened = true;
};

// Copy for AI: the plain-text summary to the clipboard in one click (the
// link next to it shows the same text without JavaScript).
const copy = document.getElementById('copy-ai');
if (copy && navigator.clipboard) {
  copy.hidden = false;
  copy.addEventListener('click', async () => {
    const done = document.getElementById('copy-ai-done');
    try {
      const response = await fetch('/api/ai-context');
      await navigator.clipboard.writeText(await response.text());
      done.textContent = 'copied';
    } catch (error) {
      done.textContent = 'not copied: ' + error;
    }
  });
}

// Vitals charts: the figure under the pointer or a tap, in the chart's
// caption (a hover also shows it as the strip's title; a tap shows none).
const readout = (event) => {
  const zone = event.target.closest ? event.target.closest('.chart .zone') : null;
  if (!zone) return;
  const figure = zone.closest('figure');
  figure.querySelectorAll('.zone.on').forEach((z) => z.classList.remove('on'));
  zone.classList.add('on');
  const out = figure.querySelector('.readout');
  if (out) out.textContent = zone.dataset.v;
};
document.addEventListener('pointerover', readout);
document.addEventListener('pointerdown', readout);

// A container's logs, followed live: new lines are added as the agent
// sends them, while the page is open.
const follow = document.getElementById('log-follow');
if (follow) {
  follow.hidden = false;
  let source = null;
  const state = document.getElementById('log-state');
  const log = document.getElementById('log');
  follow.addEventListener('click', () => {
    if (source) {
      source.close();
      source = null;
      follow.textContent = 'Follow live';
      state.textContent = 'stopped';
      return;
    }
    source = new EventSource(follow.dataset.url);
    follow.textContent = 'Stop';
    state.textContent = 'following…';
    source.onmessage = (message) => {
      let data = {};
      try { data = JSON.parse(message.data); } catch (_) { return; }
      if (data.error) {
        state.textContent = 'stopped: ' + data.error;
        source.close();
        source = null;
        follow.textContent = 'Follow live';
        return;
      }
      const end = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      for (const line of data.lines || []) {
        const span = document.createElement('span');
        span.className = line.stream === 'stderr' ? 'line stderr' : 'line';
        const time = document.createElement('time');
        time.className = 'muted';
        time.textContent = line.ts || '';
        span.append(time, ' ' + line.text, '\n');
        log.append(span);
      }
      if (data.dropped) state.textContent = 'following… (' + data.dropped + ' lines skipped: more than the agent sends per second)';
      if (end) log.scrollTop = log.scrollHeight;
    };
  });
}
