// DOM helpers that only ever create text: every name, id and payload shown by the console
// goes through textContent, never innerHTML, so a topic called `<img onerror=…>` is shown as
// those characters and runs nothing.

/** Builds `<tag>` with `props` (className, id, type, value, …; never `on*` or innerHTML) and
 *  children (nodes, or strings shown as text). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') || name === 'innerHTML' || name === 'outerHTML') {
      throw new Error(`el(): ${name} is not allowed`);
    }
    if (name === 'className') node.className = value;
    else if (name === 'text') node.textContent = String(value);
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else if (name === 'value' || name === 'checked' || name === 'disabled' || name === 'hidden') node[name] = value;
    else node.setAttribute(name, String(value));
  }
  append(node, children);
  return node;
}

/** Appends children (nodes or text). */
export function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Removes every child of `node`. */
export function clear(node) {
  node.replaceChildren();
  return node;
}

/** The element with `id`. */
export function byId(id) {
  return document.getElementById(id);
}

/** A table with a header row and one row per item of `rows` (arrays of cells: text or nodes). */
export function table(id, headers, rows) {
  const head = el('thead', {}, el('tr', {}, headers.map((h) => el('th', { text: h }))));
  const body = el('tbody', {}, rows.map((cells) => rowOf(cells)));
  return el('table', { id }, head, body);
}

function rowOf(cells) {
  const tr = el('tr');
  for (const cell of cells) tr.append(cell instanceof Node ? el('td', {}, cell) : el('td', { text: cell ?? '' }));
  return tr;
}

/** "Previous / page x of n / Next" controls; `onPage(n)` is called with the new page. */
export function pager(page, pages, onPage) {
  const prev = el('button', { type: 'button', text: 'Previous', disabled: page <= 0, className: 'pager-prev' });
  const next = el('button', { type: 'button', text: 'Next', disabled: page >= pages - 1, className: 'pager-next' });
  prev.addEventListener('click', () => onPage(page - 1));
  next.addEventListener('click', () => onPage(page + 1));
  return el('div', { className: 'pager' }, prev, el('span', { text: `page ${page + 1} of ${Math.max(pages, 1)}` }), next);
}
