// Small charts drawn on a canvas (no library: nothing to vendor, nothing that parses HTML).
// Labels are drawn with fillText, so they are pixels, never markup.

const COLORS = ['#2f80ed', '#eb5757', '#27ae60', '#f2994a'];

function prepare(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 320;
  const height = canvas.clientHeight || 120;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = '11px system-ui, sans-serif';
  return { ctx, width, height };
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

/** Lines over time: `lines` is `[{ label, values }]` aligned with `times` (ms), over the
 *  last `windowMs`; `format` prints the axis maximum. */
export function drawLines(canvas, times, lines, windowMs, format = String) {
  const { ctx, width, height } = prepare(canvas);
  const left = 4;
  const top = 14;
  const bottom = height - 4;
  const right = width - 4;
  const max = niceMax(Math.max(0, ...lines.flatMap((l) => l.values)));
  const now = times.length ? times[times.length - 1] : Date.now();
  const x = (t) => right - ((now - t) / windowMs) * (right - left);
  const y = (v) => bottom - (v / max) * (bottom - top);
  ctx.strokeStyle = '#e0e0e0';
  ctx.beginPath();
  ctx.moveTo(left, y(max));
  ctx.lineTo(right, y(max));
  ctx.moveTo(left, bottom);
  ctx.lineTo(right, bottom);
  ctx.stroke();
  ctx.fillStyle = '#666';
  ctx.fillText(format(max), left + 2, top - 3);
  let legendRight = right - 2;
  lines.forEach((line, i) => {
    ctx.strokeStyle = COLORS[i % COLORS.length];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    line.values.forEach((v, j) => {
      if (j === 0) ctx.moveTo(x(times[j]), y(v));
      else ctx.lineTo(x(times[j]), y(v));
    });
    ctx.stroke();
    ctx.fillStyle = COLORS[i % COLORS.length];
    const label = line.label;
    legendRight -= ctx.measureText(label).width;
    ctx.fillText(label, legendRight, top - 3);
    legendRight -= 10;
  });
}

/** Vertical bars with a label under each. */
export function drawBars(canvas, labels, values) {
  const { ctx, width, height } = prepare(canvas);
  const top = 16;
  const bottom = height - 46;
  const left = 8;
  const slot = (width - left * 2) / Math.max(values.length, 1);
  const max = niceMax(Math.max(0, ...values));
  ctx.fillStyle = '#666';
  ctx.fillText(`max ${max.toLocaleString('en-US')}`, left, top - 4);
  values.forEach((v, i) => {
    const h = (v / max) * (bottom - top);
    ctx.fillStyle = COLORS[0];
    ctx.fillRect(left + i * slot + 2, bottom - h, Math.max(slot - 4, 1), h);
    ctx.fillStyle = '#444';
    ctx.save();
    ctx.translate(left + i * slot + slot / 2, bottom + 6);
    ctx.rotate(Math.PI / 6);
    ctx.fillText(labels[i], 0, 4);
    ctx.restore();
  });
}
