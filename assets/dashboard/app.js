'use strict';

// ---------------------------------------------------------------- helpers

const $ = (selector) => document.querySelector(selector);

/** Builds an element. `text` sets textContent, `on*` adds listeners, other keys are
 *  attributes (skipped when null/undefined/false). Children are nodes or strings (as text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  node.append(...children);
  return node;
}

class ApiError extends Error {
  constructor(message, status = 0, data = null) {
    super(message);
    this.status = status;
    this.data = data;
  }
}

// A server with API keys answers 401 until the page sends one: the key is asked for once and
// kept in this browser (localStorage); EventSource and <img>, which cannot set headers, carry it
// as ?token=.
const KEY_STORE = 'hanga.apiKey';
const apiKey = () => localStorage.getItem(KEY_STORE) || '';
let keyDeclined = false;

function withToken(url) {
  const key = apiKey();
  if (!key || !url) return url;
  return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(key)}`;
}

/** fetch + JSON; a non-2xx answer or a network failure throws an ApiError with a readable message. */
async function api(method, url, body, askedForKey = false) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const sentKey = apiKey();
  if (sentKey) init.headers.Authorization = `Bearer ${sentKey}`;
  let res;
  try {
    res = await fetch(url, init);
  } catch (err) {
    throw new ApiError(`${method} ${url}: network error (${err.message})`);
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: the message below uses the text
  }
  if (res.ok) return data;
  const detail = typeof data?.detail === 'string' ? data.detail : text;
  if (res.status === 401 && !askedForKey) {
    // Calls refused together ask once: the others find the key changed and go again with it.
    if (apiKey() === sentKey && !keyDeclined) {
      const key = window.prompt(`${detail}\n\nAPI key (from \`hanga keys create\`):`);
      if (key) localStorage.setItem(KEY_STORE, key.trim());
      else keyDeclined = true;
    }
    if (apiKey() !== sentKey) return api(method, url, body, true);
  }
  if (res.status === 429) {
    const after = res.headers.get('Retry-After');
    throw new ApiError(after ? `${detail} (retry in ${after} s)` : detail, 429, data);
  }
  throw new ApiError(`${method} ${url}: ${res.status} ${res.statusText} ${detail}`.trim(), res.status, data);
}

function showMessage(text, kind = 'info') {
  const dismiss = el('button', { type: 'button', class: 'dismiss', 'aria-label': 'Dismiss' });
  const message = el('div', { class: `message ${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    el('span', { text }), dismiss);
  dismiss.addEventListener('click', () => message.remove());
  $('#messages').append(message);
  if (kind !== 'error') setTimeout(() => message.remove(), 5000);
}

const showError = (err) => showMessage(err.message, 'error');

// ---------------------------------------------------------------- generate form

const state = { info: null, model: null };

// Fields in this order first, then any others the schema has, in its order.
const FIELD_ORDER = ['prompt', 'negative_prompt', 'width', 'height', 'steps', 'guidance_scale',
  'sampler', 'scheduler', 'seed', 'num_images', 'long_prompt', 'priority'];
const LABELS = { negative_prompt: 'Negative prompt', guidance_scale: 'Guidance', num_images: 'Images',
  long_prompt: 'Long prompts' };
// What "use these settings" copies from a job's params (besides seed and loras).
const REFILL = ['prompt', 'negative_prompt', 'width', 'height', 'steps', 'guidance_scale', 'sampler',
  'scheduler', 'long_prompt'];

const form = () => $('#generate-form');
const schemaProps = () => state.model.parameters.properties ?? {};
const labelOf = (name) => LABELS[name] ?? name[0].toUpperCase() + name.slice(1).replace(/_/g, ' ');

function typeOf(prop) {
  const types = [].concat(prop.type ?? []);
  return { base: types.find((t) => t !== 'null'), nullable: types.includes('null') };
}

const isNumeric = (prop) => ['integer', 'number'].includes(typeOf(prop).base);

function buildControl(name, prop, required) {
  const { base, nullable } = typeOf(prop);
  const initial = prop.default ?? '';
  const id = `field-${name}`;
  if (prop.enum) {
    const select = el('select', { id, name });
    if (nullable || prop.default === undefined) select.append(el('option', { value: '', text: '—' }));
    for (const value of prop.enum.filter((v) => v !== null)) select.append(el('option', { value, text: value }));
    select.value = initial;
    return select;
  }
  if (isNumeric(prop)) {
    return el('input', {
      id, name, type: 'number', value: initial, min: prop.minimum, max: prop.maximum,
      step: prop.multipleOf ?? (base === 'integer' ? 1 : 'any'),
      inputmode: base === 'integer' ? 'numeric' : 'decimal',
    });
  }
  return el('textarea', {
    id, name, required, maxlength: prop.maxLength, rows: name === 'prompt' ? 3 : 2,
    placeholder: nullable ? 'optional' : undefined, text: initial,
  });
}

/** The seed's "random" checkbox, which goes next to its label. */
function seedRandom(input) {
  const random = el('input', { type: 'checkbox', id: 'seed-random', checked: true });
  const sync = () => input.classList.toggle('ignored', random.checked);
  random.addEventListener('change', sync);
  sync();
  return el('label', { class: 'check' }, random, 'random');
}

function buildFields() {
  const required = state.model.parameters.required ?? [];
  const names = Object.keys(schemaProps()).filter((n) => n !== 'model' && n !== 'loras');
  const rank = (n) => (FIELD_ORDER.includes(n) ? FIELD_ORDER.indexOf(n) : FIELD_ORDER.length);
  names.sort((a, b) => rank(a) - rank(b));
  const blocks = names.map((name) => {
    const prop = schemaProps()[name];
    const control = buildControl(name, prop, required.includes(name));
    const wide = control.tagName === 'TEXTAREA';
    const label = el('label', { for: control.id, title: prop.description, text: labelOf(name) });
    return el('div', { class: wide ? 'field wide' : 'field', 'data-block': name },
      name === 'seed' ? el('div', { class: 'label-row' }, label, seedRandom(control)) : label,
      control);
  });
  $('#fields').replaceChildren(...blocks);
  $('#lora-picker').hidden = !('loras' in schemaProps());
  $('#lora-rows').replaceChildren();
  updateLoraOptions();
}

function selectModel(id) {
  const keep = ['prompt', 'negative_prompt'].map((n) => [n, form().elements.namedItem(n)?.value]);
  state.model = state.info.models.find((m) => m.id === id);
  $('#model-select').value = id;
  $('#model-description').textContent = state.model.description ?? '';
  clearErrors();
  buildFields();
  for (const [name, value] of keep) {
    const control = form().elements.namedItem(name);
    if (control && value) control.value = value;
  }
}

// ---- LoRA picker

const availableLoras = () => state.info.loras.filter(
  (l) => l.loaded && (l.family == null || l.family === state.model.family));
const loraRows = () => [...document.querySelectorAll('#lora-rows .lora-row')];

function updateLoraOptions() {
  const chosen = new Set(loraRows().map((row) => row.dataset.loraId));
  const choices = availableLoras().filter((l) => !chosen.has(l.id));
  const select = $('#lora-add');
  select.replaceChildren(
    el('option', { value: '', text: choices.length ? 'Add a LoRA…' : chosen.size ? 'No more LoRAs' : 'No LoRAs for this model' }),
    ...choices.map((l) => el('option', {
      value: l.id, text: l.trigger_words.length ? `${l.id} (${l.trigger_words.join(', ')})` : l.id,
    })));
  select.disabled = !choices.length;
}

function addLoraRow(lora, weight = 1, triggerWeight = 0) {
  const number = (name, value, step) => el('input', {
    type: 'number', name, value, step, min: -10, max: 10, inputmode: 'decimal',
  });
  const row = el('div', { class: 'lora-row', 'data-lora-id': lora.id },
    el('span', { class: 'lora-name', text: lora.id, title: lora.trigger_words.join(', ') }),
    el('label', {}, 'weight', number('weight', weight, 0.05)),
    el('label', {}, 'trigger', number('trigger_weight', triggerWeight, 0.1)),
    el('button', {
      type: 'button', class: 'remove secondary', 'aria-label': `Remove ${lora.id}`,
      onclick: () => { row.remove(); updateLoraOptions(); },
    }));
  $('#lora-rows').append(row);
  updateLoraOptions();
}

function setLoras(loras) {
  $('#lora-rows').replaceChildren();
  for (const { id, weight, trigger_weight: triggerWeight } of loras) {
    const lora = availableLoras().find((l) => l.id === id);
    if (lora) addLoraRow(lora, weight ?? 1, triggerWeight ?? 0);
    else showMessage(`LoRA ${id} is not available for this model`, 'error');
  }
  updateLoraOptions();
}

// ---- errors

function clearErrors() {
  document.querySelectorAll('#generate-form .field-error').forEach((e) => e.remove());
  document.querySelectorAll('#messages .message.error').forEach((e) => e.remove());
}

/** Shows `msg` next to the field `name`; false when the form has no such field. */
function fieldError(name, msg) {
  const block = form().querySelector(`[data-block="${CSS.escape(name)}"]`);
  if (!block) return false;
  let error = block.querySelector(':scope > .field-error');
  if (!error) {
    error = el('p', { class: 'field-error', 'data-field': name });
    block.append(error);
  }
  error.textContent = error.textContent ? `${error.textContent}; ${msg}` : msg;
  return true;
}

function showValidationErrors(detail) {
  const rows = loraRows();
  for (const { loc = [], msg } of detail) {
    const [, field, index] = loc;
    const text = field === 'loras' && rows[index] ? `${rows[index].dataset.loraId}: ${msg}` : msg;
    if (!field || !fieldError(String(field), text)) showMessage(`${loc.join('.')}: ${msg}`, 'error');
  }
}

// ---- submit

/** The request body, or null after showing errors for inputs that are not numbers. */
function collectBody() {
  const body = { model: state.model.id };
  const required = state.model.parameters.required ?? [];
  const bad = [];
  const read = (input, numeric, field) => {
    if (input.validity.badInput) bad.push(field);
    if (input.value === '') return undefined;
    return numeric ? Number(input.value) : input.value;
  };
  for (const [name, prop] of Object.entries(schemaProps())) {
    const control = form().elements.namedItem(name);
    if (!control || name === 'model' || (name === 'seed' && $('#seed-random').checked)) continue;
    const value = read(control, isNumeric(prop), name);
    if (value !== undefined) body[name] = value;
    else if (required.includes(name)) body[name] = '';
  }
  if ('loras' in schemaProps() && loraRows().length) {
    body.loras = loraRows().map((row) => {
      const lora = { id: row.dataset.loraId };
      for (const key of ['weight', 'trigger_weight']) {
        const value = read(row.querySelector(`[name="${key}"]`), true, 'loras');
        if (value !== undefined) lora[key] = value;
      }
      return lora;
    });
  }
  for (const field of new Set(bad)) fieldError(field, 'not a number');
  return bad.length ? null : body;
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const body = collectBody();
  if (!body) return;
  try {
    const accepted = await api('POST', '/api/generate', body);
    trackJob({ ...accepted, params: body });
    showMessage(`Queued at position ${accepted.position}.`);
  } catch (err) {
    if (err.status === 422 && Array.isArray(err.data?.detail)) showValidationErrors(err.data.detail);
    else showError(err);
  }
}

function setupForm() {
  const select = $('#model-select');
  select.replaceChildren(...state.info.models.map((m) => el('option', { value: m.id, text: m.name || m.id })));
  select.addEventListener('change', () => selectModel(select.value));
  $('#lora-add').addEventListener('change', (event) => {
    const lora = availableLoras().find((l) => l.id === event.target.value);
    if (lora) addLoraRow(lora);
  });
  const f = form();
  f.addEventListener('submit', submit);
  f.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      f.requestSubmit();
    }
  });
  // Editing a field clears its error.
  f.addEventListener('input', (event) => {
    const block = event.target.closest('[data-block]');
    block?.querySelector(':scope > .field-error')?.remove();
  });
  selectModel(state.info.default_model ?? state.info.models[0].id);
}

// ---------------------------------------------------------------- queue panel

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
// Each EventSource holds one of the browser's ~6 HTTP/1.1 connections to the server; past this
// many, jobs wait for a free stream and their queue position is polled instead.
const MAX_STREAMS = 3;
const MAX_RECENT = 5;
const jobs = new Map(); // job_id → { id, el, status, position, stream, finished }
let finishedCount = 0;
let pollTimer = null;

function jobElement(job) {
  const cancel = el('button', { type: 'button', class: 'cancel secondary', text: 'Cancel' });
  cancel.addEventListener('click', () => cancelJob(job, cancel));
  return el('li', { class: 'job', 'data-job-id': job.id, 'data-status': 'queued' },
    el('img', { class: 'preview', alt: '', hidden: true }),
    el('div', { class: 'job-body' },
      el('p', { class: 'job-prompt' }),
      el('p', { class: 'job-meta muted' }),
      el('p', { class: 'job-state' }, el('span', { class: 'job-status' }), el('span', { class: 'job-position' })),
      el('progress', { class: 'step-bar', value: 0, max: 1 }),
      el('p', { class: 'job-error', hidden: true })),
    cancel);
}

function trackJob(view) {
  let job = jobs.get(view.job_id);
  if (!job) {
    job = { id: view.job_id, status: 'queued', position: null, stream: null, finished: 0 };
    job.el = jobElement(job);
    jobs.set(job.id, job);
    $('#queue').append(job.el);
  }
  applyUpdate(job, view);
  openStreams();
}

function describeParams(node, params) {
  const prompt = node.querySelector('.job-prompt');
  prompt.textContent = params.prompt || '(no prompt)';
  prompt.title = params.prompt ?? '';
  node.querySelector('.job-meta').textContent = [
    params.model,
    params.width && `${params.width}×${params.height}`,
    params.steps && `${params.steps} steps`,
    params.num_images > 1 && `${params.num_images} images`,
  ].filter(Boolean).join(' · ');
}

/** Applies a job stream event or a JobView (they share field names). */
function applyUpdate(job, update) {
  if (update.job) applyUpdate(job, update.job);
  if (job.finished && !TERMINAL.has(update.status)) return; // a late, stale update
  const node = job.el;
  if (update.params) describeParams(node, update.params);
  job.status = update.status;
  node.dataset.status = update.status;
  if (update.position != null) job.position = update.position;
  node.querySelector('.job-position').textContent = update.status === 'queued' ? job.position ?? '' : '';
  const bar = node.querySelector('.step-bar');
  if (update.total_steps) bar.max = update.total_steps;
  if (update.step != null) bar.value = update.step;
  if (update.status === 'completed') bar.value = bar.max;
  if (update.preview) {
    const preview = node.querySelector('img.preview');
    preview.src = update.preview;
    preview.hidden = false;
  }
  const images = update.images?.length;
  node.querySelector('.job-status').textContent =
    update.status === 'processing' ? `step ${bar.value} / ${bar.max}`
      : update.status === 'completed' && images ? `completed · ${images} image${images > 1 ? 's' : ''}`
        : update.status;
  if (update.error) {
    const error = node.querySelector('.job-error');
    error.textContent = update.error;
    error.hidden = false;
  }
  if (TERMINAL.has(update.status)) finishJob(job);
  sortQueue();
}

function finishJob(job) {
  if (job.finished) return;
  job.finished = ++finishedCount;
  job.stream?.close(); // otherwise the browser reconnects when the server ends the stream
  job.stream = null;
  job.el.querySelector('.cancel').remove();
  const old = [...jobs.values()].filter((j) => j.finished).sort((a, b) => b.finished - a.finished);
  for (const j of old.slice(MAX_RECENT)) {
    j.el.remove();
    jobs.delete(j.id);
  }
  openStreams();
}

// Running first, then queued by position, then finished ones, newest first.
function jobRank(job) {
  if (job.status === 'processing') return [0, 0];
  if (job.status === 'queued') return [1, job.position ?? Infinity];
  return [2, -job.finished];
}

const byRank = (a, b) => {
  const [x, y] = [jobRank(a), jobRank(b)];
  return x[0] - y[0] || x[1] - y[1];
};

function sortQueue() {
  const queue = $('#queue');
  const sorted = [...jobs.values()].sort(byRank).map((j) => j.el);
  // Moving nodes would steal focus from a cancel button, so only move when the order changed.
  if (sorted.some((node, i) => queue.children[i] !== node)) queue.append(...sorted);
}

function openStreams() {
  const live = [...jobs.values()].filter((j) => !j.finished);
  let open = live.filter((j) => j.stream).length;
  for (const job of live.filter((j) => !j.stream).sort(byRank)) {
    if (open >= MAX_STREAMS) break;
    openStream(job);
    open += 1;
  }
  if (!pollTimer && live.some((j) => !j.stream)) pollTimer = setTimeout(pollPositions, 2000);
}

function openStream(job) {
  const es = new EventSource(withToken(`/api/sse/${encodeURIComponent(job.id)}`));
  job.stream = es;
  es.onmessage = (event) => applyUpdate(job, JSON.parse(event.data));
  es.onerror = () => {
    // CONNECTING: the browser retries by itself (resuming with Last-Event-ID). CLOSED: the
    // server refused the stream, so ask for the job itself.
    if (es.readyState !== EventSource.CLOSED || job.stream !== es) return;
    job.stream = null;
    api('GET', `/api/jobs/${encodeURIComponent(job.id)}`)
      .then((view) => applyUpdate(job, view))
      .catch((err) => applyUpdate(job, { status: 'failed', error: `lost track of this job: ${err.message}` }));
  };
}

/** Queue positions of the jobs that wait for a stream. */
async function pollPositions() {
  try {
    const { jobs: queued } = await api('GET', '/api/jobs?status=queued&limit=100');
    for (const view of queued) {
      const job = jobs.get(view.job_id);
      if (job && !job.stream) applyUpdate(job, view);
    }
    pollTimer = null;
    openStreams();
  } catch (err) {
    pollTimer = null; // polling resumes with the next stream change
    showError(err);
  }
}

async function cancelJob(job, button) {
  button.disabled = true;
  try {
    applyUpdate(job, await api('DELETE', `/api/jobs/${encodeURIComponent(job.id)}`));
    if (!job.finished) button.textContent = 'Cancelling…'; // a running job stops after its step
  } catch (err) {
    button.disabled = false;
    showError(err);
  }
}

async function loadQueue() {
  try {
    const lists = await Promise.all(['processing', 'queued'].map(
      (status) => api('GET', `/api/jobs?status=${status}&limit=100`)));
    for (const view of lists.flatMap((list) => list.jobs)) trackJob(view);
  } catch (err) {
    showError(err);
  }
}

// ---------------------------------------------------------------- gallery

const gallery = { cursor: null, loading: false, done: false, shown: new Set(), observer: null };

function tile(image) {
  return el('button', {
    type: 'button', class: 'tile', 'data-filename': image.filename, title: image.prompt,
    onclick: () => openViewer(image),
  }, el('img', {
    src: withToken(image.thumb_url), alt: image.prompt, loading: 'lazy', decoding: 'async',
    width: image.width, height: image.height,
  }));
}

function addImages(images, atTop) {
  const fresh = images.filter((image) => !gallery.shown.has(image.filename));
  fresh.forEach((image) => gallery.shown.add(image.filename));
  $('#gallery')[atTop ? 'prepend' : 'append'](...fresh.map(tile));
}

function removeTile(filename) {
  gallery.shown.delete(filename);
  $(`#gallery .tile[data-filename="${CSS.escape(filename)}"]`)?.remove();
}

async function loadPage() {
  if (gallery.loading || gallery.done) return;
  gallery.loading = true;
  const sentinel = $('#gallery-more');
  const query = new URLSearchParams({ limit: 48 });
  if (gallery.cursor) query.set('cursor', gallery.cursor);
  try {
    const page = await api('GET', `/api/images?${query}`);
    addImages(page.images, false);
    gallery.cursor = page.next_cursor ?? null;
    gallery.done = !gallery.cursor;
    // Observing again reports the sentinel at once if it is still in view: the next page.
    gallery.observer.unobserve(sentinel);
    if (!gallery.done) gallery.observer.observe(sentinel);
  } catch (err) {
    sentinel.textContent = 'Could not load images.'; // no retry loop; a reload tries again
    showError(err);
  }
  gallery.loading = false;
  sentinel.hidden = gallery.done;
}

async function setupGallery() {
  gallery.observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadPage();
  }, { rootMargin: '600px 0px' });
  // The stream opens after the first page: on a server with keys, that call has asked for the
  // key (an EventSource refused with 401 does not try again).
  await loadPage();
  const live = new EventSource(withToken('/api/sse/gallery'));
  live.onmessage = (event) => addImages([JSON.parse(event.data)], true);
}

// ---------------------------------------------------------------- viewer

let viewing = null; // { image, params }

function renderParams(params, image) {
  const loras = params.loras?.map((l) => `${l.id} (weight ${l.weight ?? 1}, trigger ${l.trigger_weight ?? 0})`);
  const rows = [
    ['Model', params.model], ['Prompt', params.prompt], ['Negative prompt', params.negative_prompt],
    ['Size', `${params.width} × ${params.height}`], ['Steps', params.steps],
    ['Guidance', params.guidance_scale], ['Sampler', params.sampler], ['Scheduler', params.scheduler],
    ['Seed', params.seed], ['Long prompts', params.long_prompt], ['LoRAs', loras?.join(', ')],
    ['Created', new Date(image.created_at).toLocaleString()], ['File', image.filename],
  ];
  $('#viewer-params').replaceChildren(...rows
    .filter(([, value]) => value !== undefined && value !== null && value !== '')
    .flatMap(([label, value]) => [el('dt', { text: label }), el('dd', { text: String(value) })]));
}

async function openViewer(image) {
  // Until the job is fetched (or if it is gone): what the image itself records.
  const basic = { model: image.model, prompt: image.prompt, width: image.width, height: image.height, seed: image.seed };
  viewing = { image, params: basic };
  const img = $('#viewer-image');
  Object.assign(img, { src: withToken(image.url), alt: image.prompt, width: image.width, height: image.height });
  $('#viewer-note').textContent = 'Loading parameters…';
  renderParams(basic, image);
  $('#viewer').showModal();
  try {
    const job = await api('GET', `/api/jobs/${encodeURIComponent(image.job_id)}`);
    if (viewing?.image !== image) return;
    viewing.params = { ...job.params, seed: image.seed }; // the job's seed is its first image's
    $('#viewer-note').textContent = '';
    renderParams(viewing.params, image);
  } catch (err) {
    if (viewing?.image === image) $('#viewer-note').textContent = `Only some parameters are known: ${err.message}`;
  }
}

/**
 * The prompt as typed: the server appends each LoRA's trigger words as `, (words:weight)` when
 * its trigger_weight is not 0, and the LoRA refilled below would append them again.
 */
function withoutTriggerWords(prompt, loras) {
  for (const { id, trigger_weight: weight } of [...loras].reverse()) {
    const words = state.info.loras.find((l) => l.id === id)?.trigger_words ?? [];
    const suffix = `, (${words.join(', ')}:${weight})`;
    if (weight && words.length && prompt.endsWith(suffix)) prompt = prompt.slice(0, -suffix.length);
  }
  return prompt;
}

function useSettings() {
  const { params } = viewing;
  const model = state.info.models.find((m) => m.id === params.model);
  if (!model) {
    showMessage(`model ${params.model} is not available on this server`, 'error');
  } else {
    if (model !== state.model) selectModel(model.id);
    for (const name of REFILL) {
      const control = form().elements.namedItem(name);
      if (control && name in params) control.value = params[name] ?? '';
    }
    const prompt = form().elements.namedItem('prompt');
    if (prompt) prompt.value = withoutTriggerWords(params.prompt ?? '', params.loras ?? []);
    const seed = form().elements.namedItem('seed');
    if (seed) {
      seed.value = params.seed;
      $('#seed-random').checked = false;
      $('#seed-random').dispatchEvent(new Event('change'));
    }
    if (params.loras && 'loras' in schemaProps()) setLoras(params.loras);
  }
  $('#viewer').close();
  form().elements.namedItem('prompt')?.focus();
}

async function deleteImage() {
  const { image } = viewing;
  if (!window.confirm(`Delete ${image.filename}?`)) return;
  try {
    await api('DELETE', `/api/images/${encodeURIComponent(image.filename)}`);
    removeTile(image.filename);
  } catch (err) {
    showError(err);
  }
  $('#viewer').close();
}

function setupViewer() {
  const viewer = $('#viewer');
  $('#use-settings').addEventListener('click', useSettings);
  $('#delete-image').addEventListener('click', deleteImage);
  $('#viewer-close').addEventListener('click', () => viewer.close());
  viewer.addEventListener('click', (event) => {
    if (event.target === viewer) viewer.close(); // a click on the backdrop
  });
  viewer.addEventListener('close', () => {
    viewing = null;
    $('#viewer-image').removeAttribute('src');
  });
}

// ---------------------------------------------------------------- start

async function start() {
  setupViewer();
  setupGallery();
  loadQueue();
  try {
    state.info = await api('GET', '/api/info');
  } catch (err) {
    showError(err);
    return;
  }
  const { version, device, dtype, models } = state.info;
  $('#server-info').textContent = `v${version} · ${device} · ${dtype}`;
  if (!models.length) {
    showMessage('The server has no models.', 'error');
    return;
  }
  setupForm();
  document.body.dataset.ready = '1';
}

start();
