// The installer page, no framework: draw and edit a camera's zones over its current frame (an SVG
// laid over the picture, corners in the frame's pixels, saved normalised 0..1), save them and the
// thresholds through the API with the session's CSRF token, and show what the models find on the
// current frame. Works with a mouse or a finger.
'use strict';
(function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const token = (document.querySelector('meta[name=csrf-token]') || {}).content || '';

  function el(name, attributes, parent) {
    const node = document.createElementNS(SVG, name);
    for (const key in attributes) node.setAttribute(key, attributes[key]);
    if (parent) parent.appendChild(node);
    return node;
  }

  async function send(method, url, body) {
    const response = await fetch(url, {
      method: method,
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': token },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = { error: response.status + ' ' + response.statusText }; }
    return { ok: response.ok, status: response.status, data: data || {} };
  }

  function say(node, text, good) {
    node.textContent = text;
    node.classList.toggle('ok', !!good);
    node.classList.toggle('error', !good && !!text);
  }

  // ---- Zones -------------------------------------------------------------------------------
  const editor = document.getElementById('zone-editor');
  if (editor) {
    const camera = editor.dataset.camera;
    const width = Number(editor.dataset.width) || 640;
    const height = Number(editor.dataset.height) || 480;
    const editable = editor.dataset.editable === 'true';
    const canvas = document.getElementById('zone-canvas');
    const image = document.getElementById('scene-image');
    const list = document.getElementById('zone-list');
    const idField = document.getElementById('zone-id');
    const roleField = document.getElementById('zone-role');
    const categoryField = document.getElementById('zone-category');
    const categoryLabel = document.getElementById('zone-category-field');
    const message = document.getElementById('zones-message');
    const colours = {};
    const roleNames = {};
    for (const option of roleField.options) {
      colours[option.value] = option.dataset.colour || '#22d3ee';
      roleNames[option.value] = option.textContent;
    }
    const radius = Math.max(width, height) / 90;
    let zones = [];
    let selected = -1;
    let dragging = null;
    let moved = false;
    let dirty = false;

    const round = function (v) { return Math.round(Math.min(1, Math.max(0, v)) * 10000) / 10000; };

    function markDirty() {
      dirty = true;
      say(message, editor.dataset.msgUnsaved, false);
      message.classList.remove('error');
    }

    function uniqueId() {
      for (let n = zones.length + 1; ; n++) {
        const id = 'zone-' + n;
        if (!zones.some(function (z) { return z.id === id; })) return id;
      }
    }

    function showFields() {
      const zone = zones[selected];
      const on = !!zone && editable;
      idField.disabled = roleField.disabled = categoryField.disabled = !on;
      document.getElementById('undo-corner').disabled = !on;
      document.getElementById('delete-zone').disabled = !on;
      if (!zone) { idField.value = ''; categoryLabel.hidden = roleField.value !== 'bin'; return; }
      idField.value = zone.id;
      roleField.value = zone.role;
      categoryLabel.hidden = zone.role !== 'bin';
      if (zone.role === 'bin') categoryField.value = zone.category || categoryField.options[0].value;
    }

    function draw() {
      while (canvas.firstChild) canvas.removeChild(canvas.firstChild);
      zones.forEach(function (zone, index) {
        const colour = colours[zone.role] || '#22d3ee';
        const points = zone.polygon.map(function (p) { return (p[0] * width) + ',' + (p[1] * height); }).join(' ');
        const shape = zone.polygon.length >= 3 ? 'polygon' : 'polyline';
        const outline = el(shape, {
          points: points, class: 'zone' + (index === selected ? ' selected' : ''), 'data-index': index,
          fill: zone.role === 'privacy' ? '#000' : colour, 'fill-opacity': zone.role === 'privacy' ? 0.55 : 0.22,
          stroke: colour, 'stroke-width': Math.max(2, width / 300) * (index === selected ? 2 : 1),
          'stroke-linejoin': 'round',
        }, canvas);
        if (shape === 'polyline') outline.setAttribute('fill', 'none');
        if (zone.polygon.length) {
          const label = el('text', {
            x: zone.polygon[0][0] * width + radius, y: zone.polygon[0][1] * height - radius,
            class: 'zone-label', 'font-size': Math.max(12, width / 45), fill: '#fff', stroke: '#000',
            'stroke-width': Math.max(1, width / 600), 'paint-order': 'stroke',
          }, canvas);
          label.textContent = zone.id + (zone.role === 'bin' && zone.category ? ' · ' + zone.category : '');
        }
        if (index === selected) {
          zone.polygon.forEach(function (p, corner) {
            el('circle', {
              cx: p[0] * width, cy: p[1] * height, r: radius, class: 'corner', 'data-corner': corner,
              fill: '#fff', stroke: colour, 'stroke-width': radius / 3,
            }, canvas);
          });
        }
      });
      list.textContent = '';
      if (!zones.length) {
        const empty = document.createElement('li');
        empty.className = 'empty';
        empty.textContent = editor.dataset.msgNoZones;
        list.appendChild(empty);
      }
      zones.forEach(function (zone, index) {
        const item = document.createElement('li');
        const button = document.createElement('button');
        button.type = 'button';
        button.className = 'zone-item' + (index === selected ? ' selected' : '');
        button.dataset.index = index;
        const swatch = document.createElement('span');
        swatch.className = 'swatch';
        swatch.style.background = colours[zone.role] || '#22d3ee';
        button.appendChild(swatch);
        const name = document.createElement('strong');
        name.textContent = zone.id;
        button.appendChild(name);
        button.appendChild(document.createTextNode(' ' + (roleNames[zone.role] || zone.role) +
          (zone.role === 'bin' && zone.category ? ' · ' + zone.category : '') +
          ' · ' + zone.polygon.length + ' ' + editor.dataset.msgCorners));
        // Choosing the chosen zone again puts it down.
        button.addEventListener('click', function () {
          selected = selected === index ? -1 : index;
          showFields();
          draw();
        });
        item.appendChild(button);
        list.appendChild(item);
      });
    }

    // Where a pointer event falls on the frame, normalised.
    function at(event) {
      const box = canvas.getBoundingClientRect();
      return [round((event.clientX - box.left) / box.width), round((event.clientY - box.top) / box.height)];
    }

    async function load() {
      const answer = await send('GET', '/api/v1/zones/' + encodeURIComponent(camera));
      if (!answer.ok) { say(message, answer.data.message || String(answer.status), false); return; }
      zones = (answer.data.zones || []).map(function (z) {
        return { id: z.id, role: z.role, category: z.category || null, polygon: z.polygon.slice() };
      });
      selected = -1;
      dirty = false;
      showFields();
      draw();
    }

    if (editable) {
      canvas.classList.add('editable');
      canvas.addEventListener('pointerdown', function (event) {
        const corner = event.target.closest('circle.corner');
        moved = false;
        if (corner && selected >= 0) {
          dragging = Number(corner.dataset.corner);
          canvas.setPointerCapture(event.pointerId);
          event.preventDefault();
        }
      });
      canvas.addEventListener('pointermove', function (event) {
        if (dragging === null || selected < 0) return;
        zones[selected].polygon[dragging] = at(event);
        moved = true;
        draw();
      });
      canvas.addEventListener('pointerup', function (event) {
        if (dragging !== null) {
          dragging = null;
          if (moved) markDirty();
          return;
        }
        // With no zone chosen, a tap on a zone chooses it and a tap elsewhere starts a new one;
        // with one chosen, every tap adds a corner to it (the list chooses another).
        const shape = event.target.closest('.zone');
        if (selected < 0 && shape) {
          selected = Number(shape.dataset.index);
          showFields();
          draw();
          return;
        }
        if (selected < 0) newZone();
        zones[selected].polygon.push(at(event));
        markDirty();
        draw();
      });
    }

    function newZone() {
      const role = roleField.value || 'bin';
      zones.push({ id: uniqueId(), role: role, category: role === 'bin' ? categoryField.value : null, polygon: [] });
      selected = zones.length - 1;
      showFields();
      draw();
    }

    document.getElementById('new-zone').addEventListener('click', function () { newZone(); markDirty(); });
    document.getElementById('undo-corner').addEventListener('click', function () {
      if (selected < 0) return;
      zones[selected].polygon.pop();
      markDirty();
      draw();
    });
    document.getElementById('delete-zone').addEventListener('click', function () {
      if (selected < 0) return;
      zones.splice(selected, 1);
      selected = -1;
      markDirty();
      showFields();
      draw();
    });
    const newPicture = function () { image.src = image.src.split('?')[0] + '?t=' + Date.now(); };
    document.getElementById('new-picture').addEventListener('click', newPicture);
    // A camera that has not delivered a frame yet: try again until it has.
    image.addEventListener('error', function () { setTimeout(newPicture, 1000); });
    idField.addEventListener('input', function () {
      if (selected < 0) return;
      zones[selected].id = idField.value.trim();
      markDirty();
      draw();
    });
    roleField.addEventListener('change', function () {
      categoryLabel.hidden = roleField.value !== 'bin';
      if (selected < 0) return;
      const zone = zones[selected];
      zone.role = roleField.value;
      zone.category = zone.role === 'bin' ? (zone.category || categoryField.value) : null;
      if (zone.role === 'bin') categoryField.value = zone.category;
      markDirty();
      draw();
    });
    categoryField.addEventListener('change', function () {
      if (selected < 0 || zones[selected].role !== 'bin') return;
      zones[selected].category = categoryField.value;
      markDirty();
      draw();
    });

    document.getElementById('save-zones').addEventListener('click', async function () {
      const short = zones.find(function (z) { return z.polygon.length < 3; });
      if (short) {
        say(message, editor.dataset.msgNeedsCorners + ' ' + short.id, false);
        selected = zones.indexOf(short);
        showFields();
        draw();
        return;
      }
      const body = {
        zones: zones.map(function (z) {
          const zone = { id: z.id, role: z.role, polygon: z.polygon };
          if (z.role === 'bin') zone.category = z.category;
          return zone;
        }),
      };
      const answer = await send('PUT', '/api/v1/zones/' + encodeURIComponent(camera), body);
      if (answer.ok) {
        const written = (answer.data.written || []).join(', ');
        zones = (answer.data.zones || []).map(function (z) {
          return { id: z.id, role: z.role, category: z.category || null, polygon: z.polygon.slice() };
        });
        selected = -1;
        dirty = false;
        showFields();
        draw();
        say(message, editor.dataset.msgSaved + (written ? ' ' + written : ''), true);
      } else {
        const text = answer.data.message || String(answer.status);
        say(message, editor.dataset.msgNotSaved + ' ' + text, false);
        // The server names the zone it refused, e.g. `scenes.gate.zones[2].polygon`.
        const named = /zones\[(\d+)\]/.exec(text);
        if (named && zones[Number(named[1])]) { selected = Number(named[1]); showFields(); draw(); }
      }
    });

    window.addEventListener('beforeunload', function (event) {
      if (dirty) { event.preventDefault(); event.returnValue = ''; }
    });
    categoryLabel.hidden = roleField.value !== 'bin';
    load().catch(function (e) { say(message, String(e), false); });
  }

  // ---- Thresholds --------------------------------------------------------------------------
  const thresholds = document.getElementById('thresholds-form');
  if (thresholds) {
    const message = document.getElementById('thresholds-message');
    thresholds.addEventListener('submit', async function (event) {
      event.preventDefault();
      if (thresholds.dataset.editable !== 'true') return;
      const values = {};
      for (const input of thresholds.querySelectorAll('input[data-key]')) {
        const before = input.dataset.initial === undefined ? '' : input.dataset.initial;
        if (input.value.trim() === before) continue;
        values[input.dataset.key] = input.value.trim() === '' ? null : Number(input.value);
      }
      if (!Object.keys(values).length) return;
      const answer = await send('POST', '/api/v1/settings', { values: values });
      if (answer.ok) {
        for (const input of thresholds.querySelectorAll('input[data-key]')) input.dataset.initial = input.value.trim();
        say(message, thresholds.dataset.msgSaved + ' ' + (answer.data.written || []).join(', '), true);
      } else {
        say(message, thresholds.dataset.msgNotSaved + ' ' + (answer.data.message || answer.status), false);
      }
    });
  }

  // ---- Registered trucks ---------------------------------------------------------------------
  const registered = document.getElementById('registered-trucks');
  if (registered) {
    const message = document.getElementById('registered-message');
    registered.addEventListener('submit', async function (event) {
      event.preventDefault();
      if (registered.dataset.editable !== 'true') return;
      const plates = document.getElementById('registered-plates').value
        .split('\n').map(function (line) { return line.trim(); }).filter(function (line) { return line !== ''; });
      const answer = await send('POST', '/api/v1/settings', { values: { 'plates.registered': plates } });
      if (answer.ok) {
        say(message, registered.dataset.msgSaved + ' ' + (answer.data.written || []).join(', '), true);
      } else {
        say(message, registered.dataset.msgNotSaved + ' ' + (answer.data.message || answer.status), false);
      }
    });
  }

  // ---- Model test --------------------------------------------------------------------------
  const test = document.getElementById('model-test');
  if (test) {
    const button = document.getElementById('run-test');
    const message = document.getElementById('test-message');
    const stage = document.getElementById('test-stage');
    const picture = document.getElementById('test-image');
    const boxes = document.getElementById('test-boxes');
    const table = document.getElementById('test-results');
    const colours = ['#22d3ee', '#f59e0b', '#a855f7', '#22c55e', '#ef4444', '#eab308'];
    button.addEventListener('click', async function () {
      button.disabled = true;
      say(message, test.dataset.msgRunning, true);
      try {
        const answer = await send('POST', '/api/v1/cameras/' + encodeURIComponent(test.dataset.camera) + '/test');
        if (!answer.ok) { say(message, answer.data.message || String(answer.status), false); return; }
        const run = answer.data;
        picture.src = run.image;
        picture.width = run.width;
        picture.height = run.height;
        boxes.setAttribute('viewBox', '0 0 ' + run.width + ' ' + run.height);
        while (boxes.firstChild) boxes.removeChild(boxes.firstChild);
        const rows = table.querySelector('tbody');
        rows.textContent = '';
        let found = 0;
        const line = Math.max(2, run.width / 320);
        (run.results || []).forEach(function (result, m) {
          const colour = colours[m % colours.length];
          const findings = result.findings || {};
          const items = findings.task === 'detect' ? findings.detections : findings.classes;
          (items || []).forEach(function (item) {
            found++;
            const row = rows.insertRow();
            row.className = 'finding';
            row.insertCell().textContent = result.model.name;
            row.insertCell().textContent = item.label;
            const score = row.insertCell();
            score.className = 'num';
            score.textContent = item.score.toFixed(2);
            const where = row.insertCell();
            if (item.bbox) {
              const b = item.bbox;
              where.textContent = [b.x1, b.y1, b.x2, b.y2].map(Math.round).join(', ');
              el('rect', {
                x: b.x1, y: b.y1, width: Math.max(1, b.x2 - b.x1), height: Math.max(1, b.y2 - b.y1),
                fill: 'none', stroke: colour, 'stroke-width': line, class: 'finding-box',
              }, boxes);
              const caption = el('text', {
                x: b.x1 + line, y: Math.max(b.y1 - line * 2, run.width / 40), 'font-size': Math.max(12, run.width / 45),
                fill: '#fff', stroke: '#000', 'stroke-width': Math.max(1, run.width / 600), 'paint-order': 'stroke',
              }, boxes);
              caption.textContent = item.label + ' ' + item.score.toFixed(2);
            } else {
              where.textContent = '–';
            }
          });
        });
        for (const failure of run.failures || []) {
          const row = rows.insertRow();
          row.className = 'error';
          row.insertCell().textContent = failure[0];
          const cell = row.insertCell();
          cell.colSpan = 3;
          cell.textContent = failure[1];
        }
        stage.hidden = false;
        table.hidden = false;
        const when = new Date(run.captured_at).toLocaleString();
        say(message, (found ? test.dataset.msgFound + ' ' + found : test.dataset.msgNothing) + ' · ' + when, true);
      } catch (e) {
        say(message, String(e), false);
      } finally {
        button.disabled = false;
      }
    });
  }

  // ---- The box learns its site -------------------------------------------------------------
  const learning = document.getElementById('learning');
  if (learning) {
    const counts = document.getElementById('learning-counts');
    const train = document.getElementById('learn-train');
    const progress = document.getElementById('learn-progress');
    const message = document.getElementById('learn-message');
    const summary = document.getElementById('learn-summary');
    const report = document.getElementById('learn-report');
    const deployRow = document.getElementById('learn-deploy-row');
    const deploy = document.getElementById('learn-deploy');
    const deployMessage = document.getElementById('deploy-message');
    let polling = null;

    function show(status) {
      const samples = status.samples || {};
      if (samples.error) {
        say(counts, samples.error, false);
      } else {
        const parts = Object.keys(samples.counts || {}).map(function (label) { return label + ' ' + samples.counts[label]; });
        counts.textContent = (parts.length ? parts.join(', ') : '0') + (samples.folder ? ' · ' + samples.folder : '');
      }
      const running = status.running;
      progress.hidden = !running;
      if (running) {
        progress.max = Math.max(1, running.total);
        progress.value = running.done;
        say(message, learning.dataset.msgTraining + ' ' + running.done + '/' + running.total, true);
      }
      const last = status.last;
      if (last && !running) {
        if (last.error) {
          say(message, last.error, false);
        } else {
          const accuracy = last.learned ? ' · held-out accuracy ' + last.learned.held_out_accuracy.toFixed(3) : '';
          say(message, learning.dataset.msgTrained + ' ' + last.name + accuracy, true);
        }
        summary.textContent = last.summary || '';
        summary.hidden = !last.summary;
        report.hidden = !!last.error;
        deployRow.hidden = !!last.error;
      }
      const deployment = status.deployment;
      if (deployment) {
        const good = deployment.stage === 'confirmed' || deployment.stage === 'probation';
        say(deployMessage, deployment.name + ' → ' + deployment.key + ': ' + deployment.stage + ' · ' + deployment.message, good);
      }
      const busy = !!running || (deployment && deployment.stage === 'probation');
      if (busy && !polling) polling = setInterval(refresh, 1000);
      if (!busy && polling) { clearInterval(polling); polling = null; }
    }

    async function refresh() {
      const answer = await send('GET', '/api/v1/learn');
      if (answer.ok) show(answer.data); else say(message, answer.data.message || String(answer.status), false);
    }

    train.addEventListener('click', async function () {
      const labels = document.getElementById('learn-labels').value.split(',')
        .map(function (label) { return label.trim(); }).filter(function (label) { return label; });
      const answer = await send('POST', '/api/v1/learn', { name: document.getElementById('learn-name').value.trim(), labels: labels });
      if (!answer.ok) { say(message, answer.data.message || String(answer.status), false); return; }
      refresh();
    });

    deploy.addEventListener('click', async function () {
      deploy.disabled = true;
      const answer = await send('POST', '/api/v1/learn/deploy', { slot: document.getElementById('learn-slot').value });
      deploy.disabled = false;
      if (!answer.ok) { say(deployMessage, answer.data.message || String(answer.status), false); return; }
      refresh();
    });

    refresh();
  }
})();
