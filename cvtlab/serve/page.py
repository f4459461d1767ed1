"""The web page: choose or drop an image, see the top-5 as bars and the model's heat map.

With JavaScript the form posts to the JSON API (`/predict`, then `/explain`) and draws the result in
place; without it, the same form posts to `/page`, which answers a whole HTML page with the bars (plain
CSS widths) and the heat map inline. Every text that came from a request or a model is HTML-escaped.
"""
import base64
from html import escape
from typing import List, Optional

__all__ = ['index_page', 'result_page']

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
#drop { border: 2px dashed #888; border-radius: 8px; padding: 1.5rem; text-align: center; }
#drop.over { background: #eef5ff; border-color: #36c; }
.row { display: flex; align-items: center; gap: .5rem; margin: .25rem 0; }
.row .name { width: 12rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.track { flex: 1; background: #eee; border-radius: 4px; height: 1.1rem; }
.bar { background: #36c; height: 100%; border-radius: 4px; }
.prob { width: 4rem; text-align: right; font-variant-numeric: tabular-nums; }
.error { color: #b00; }
img.heat { max-width: 100%; margin-top: 1rem; image-rendering: pixelated; }
footer { margin-top: 2rem; color: #666; font-size: .85rem; }
"""

_SCRIPT = """
const form = document.getElementById('form'), input = document.getElementById('file');
const drop = document.getElementById('drop'), result = document.getElementById('result');
function show(data, name) {
  result.textContent = '';
  const title = document.createElement('h2');
  title.textContent = name;
  result.appendChild(title);
  for (const t of data.predictions[0].top) {
    const row = document.createElement('div'); row.className = 'row';
    const label = document.createElement('span'); label.className = 'name'; label.textContent = t.label;
    const track = document.createElement('div'); track.className = 'track';
    const bar = document.createElement('div'); bar.className = 'bar';
    bar.style.width = (100 * t.prob).toFixed(1) + '%'; bar.dataset.label = t.label; bar.dataset.prob = t.prob;
    track.appendChild(bar);
    const prob = document.createElement('span'); prob.className = 'prob'; prob.textContent = (100 * t.prob).toFixed(1) + '%';
    row.append(label, track, prob); result.appendChild(row);
  }
}
function fail(message) {
  result.textContent = ''; const p = document.createElement('p'); p.className = 'error';
  p.textContent = message; result.appendChild(p);
}
async function classify(file) {
  result.textContent = 'Classifying ' + file.name + ' ...';
  const body = new FormData(); body.append('file', file, file.name);
  let answer, data;
  try { answer = await fetch('predict', {method: 'POST', body}); data = await answer.json(); }
  catch (e) { fail('No answer from the server (' + e + ')'); return; }
  if (!answer.ok) { fail(data.error || ('error ' + answer.status)); return; }
  show(data, file.name);
  if (!EXPLAIN) return;
  const again = new FormData(); again.append('file', file, file.name);
  try {  // the heat map is a bonus: without it the bars stand
    const heat = await fetch('explain', {method: 'POST', body: again});
    if (heat.ok) { const img = document.createElement('img'); img.className = 'heat'; img.alt = 'heat map';
      img.src = URL.createObjectURL(await heat.blob()); result.appendChild(img); }
  } catch (e) {}
}
form.addEventListener('submit', e => { e.preventDefault(); if (input.files.length) classify(input.files[0]); });
input.addEventListener('change', () => { if (input.files.length) classify(input.files[0]); });
drop.addEventListener('dragover', e => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', e => { e.preventDefault(); drop.classList.remove('over');
  if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]); });
"""


def _head(title: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)}</title><style>{_STYLE}</style></head><body>')


def _form(model: str) -> str:
    return (f'<h1>{escape(model)}</h1>'
            '<form id="form" action="page" method="post" enctype="multipart/form-data">'
            '<div id="drop"><p>Drop an image here, or choose one:</p>'
            '<input id="file" type="file" name="file" accept="image/*"> '
            '<button id="submit" type="submit">Classify</button></div></form>')


def _footer(info: dict) -> str:
    return (f'<footer>cvtlab {escape(info["version"])} &middot; {escape(info["backend"])}, {escape(info["dtype"])}'
            f' &middot; <a href="info">/info</a> &middot; API: <code>POST /predict</code></footer>')


def index_page(info: dict, explain: bool) -> str:
    return (_head(f'cvtlab: {info["model"]}') + _form(info['model']) + '<div id="result" aria-live="polite"></div>'
            + _footer(info) + f'<script>const EXPLAIN = {"true" if explain else "false"};{_SCRIPT}</script>'
            + '</body></html>')


def result_page(info: dict, name: str, top: List[dict], heat_png: Optional[bytes] = None,
                error: Optional[str] = None) -> str:
    """The answer to the form without JavaScript: the same bars, drawn by the server."""
    parts = [_head(f'cvtlab: {info["model"]}'), _form(info['model']), '<div id="result">']
    if error is not None:
        parts.append(f'<p class="error">{escape(error)}</p>')
    else:
        parts.append(f'<h2>{escape(name)}</h2>')
        for t in top:
            parts.append(f'<div class="row"><span class="name">{escape(t["label"])}</span><div class="track">'
                         f'<div class="bar" data-label="{escape(t["label"])}" data-prob="{t["prob"]:.6f}" '
                         f'style="width: {100 * t["prob"]:.1f}%"></div></div>'
                         f'<span class="prob">{100 * t["prob"]:.1f}%</span></div>')
        if heat_png is not None:
            parts.append(f'<img class="heat" alt="heat map" src="data:image/png;base64,'
                         f'{base64.b64encode(heat_png).decode()}">')
    parts.append('</div>' + _footer(info) + '</body></html>')
    return ''.join(parts)
