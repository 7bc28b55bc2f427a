// The console's entry point: the login form, the admin session, the routes between panels
// (#/overview, #/topics, #/topic/<name>, #/clients[/<id>], #/latency), and the timers that
// keep the panels live. The token lives in this module's memory only: reloading the page or
// logging out forgets it.

import { login, AdminSession } from './admin.mjs';
import { byId } from './dom.mjs';
import { Deployment } from './series.mjs';
import { OverviewPanel } from './panels/overview.mjs';
import { TopicsPanel } from './panels/topics.mjs';
import { TopicPanel } from './panels/topic.mjs';
import { ClientsPanel } from './panels/clients.mjs';
import { LatencyPanel } from './panels/latency.mjs';

const PANELS = ['overview', 'topics', 'topic', 'clients', 'latency'];
/** How often the topic list is read again: it is kept current by join/leave events in
 *  between, and each read scans presence on the server's publisher thread. */
const LIST_EVERY_MS = 30_000;
/** How often the charts take a point and the visible panel is redrawn. */
const SAMPLE_EVERY_MS = 2_000;

let session = null;
let deployment = null;
let panels = {};
let current = null;
let timers = [];
let redrawTimer = null;
/** The least time between two redraws of a panel. */
const REDRAW_MS = 250;

function showOnly(name) {
  for (const id of ['login', ...PANELS]) byId(id).hidden = id !== name;
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('active', link.dataset.panel === name || (name === 'topic' && link.dataset.panel === 'topics'));
  }
}

function route() {
  if (!session) return;
  const hash = location.hash.replace(/^#\/?/, '');
  const [name, ...rest] = hash.split('/');
  const arg = rest.length ? decodeURIComponent(rest.join('/')) : null;
  const target = PANELS.includes(name) ? name : 'overview';
  if (current === 'topic' && (target !== 'topic' || arg !== panels.topic.topic)) panels.topic.hide();
  current = target;
  showOnly(target);
  panels[target].show(arg);
}

function setStatus(text, bad = false) {
  const status = byId('status');
  status.textContent = text;
  status.classList.toggle('bad', bad);
}

async function refreshTopics() {
  try {
    deployment.takeTopics(await session.request('list'));
  } catch (err) {
    deployment.topicsError = err.message;
  }
  redraw();
}

/** Redraws the visible panel at most every REDRAW_MS (a join storm announces thousands of
 *  joins a second; the page draws a few times a second whatever happens). */
function redraw() {
  if (redrawTimer) return;
  redrawTimer = setTimeout(() => {
    redrawTimer = null;
    if (current && panels[current].render && current !== 'topic') panels[current].render();
  }, REDRAW_MS);
}

async function start(token) {
  session = new AdminSession(token);
  deployment = new Deployment();
  session.on('state', (state) => { deployment.takeStats(state); redraw(); });
  session.on('stats', (stats) => { deployment.takeStats(stats); });
  session.on('channel.join', (e) => { if (e && typeof e.topic === 'string') deployment.joined(e.topic); redraw(); });
  session.on('channel.leave', (e) => { if (e && typeof e.topic === 'string') deployment.left(e.topic); redraw(); });
  session.on('connection', (state) => setStatus(state, state !== 'connected'));
  session.on('refused', (reason) => logout(`The session ended (${reason}): log in again.`));
  const context = { session, deployment, navigate: (hash) => { location.hash = hash; } };
  panels = {
    overview: new OverviewPanel(byId('overview'), context),
    topics: new TopicsPanel(byId('topics'), context),
    topic: new TopicPanel(byId('topic'), context),
    clients: new ClientsPanel(byId('clients'), context),
    latency: new LatencyPanel(byId('latency'), context),
  };
  await session.open();
  byId('nav').hidden = false;
  byId('logout').hidden = false;
  timers.push(setInterval(refreshTopics, LIST_EVERY_MS));
  timers.push(setInterval(() => { deployment.sample(); redraw(); }, SAMPLE_EVERY_MS));
  deployment.sample();
  route();
}

function logout(message = '') {
  timers.forEach(clearInterval);
  timers = [];
  if (session) session.close();
  session = null;
  current = null;
  byId('nav').hidden = true;
  byId('logout').hidden = true;
  setStatus('');
  byId('login-error').textContent = message;
  showOnly('login');
}

byId('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = byId('login-key');
  const button = byId('login-submit');
  const error = byId('login-error');
  error.textContent = '';
  button.disabled = true;
  try {
    const { token } = await login(input.value);
    input.value = '';
    await start(token);
  } catch (err) {
    if (session) logout();
    error.textContent = err.message;
  } finally {
    button.disabled = false;
  }
});
byId('logout').addEventListener('click', () => logout());
window.addEventListener('hashchange', route);
showOnly('login');
