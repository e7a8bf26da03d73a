// Live parts of the pages, no framework: newer camera frames swapped in, sections marked
// data-refresh re-read from the server's own rendering, and the events list updated over SSE.
'use strict';
(function () {
  // The next frame is loaded off-screen and then swapped in, so the picture never blanks.
  for (const img of document.querySelectorAll('img[data-live-frame]')) {
    const source = img.dataset.liveFrame;
    let loading = false;
    setInterval(function () {
      if (document.hidden || loading) return;
      loading = true;
      const next = new Image();
      next.onload = function () { img.src = next.src; loading = false; };
      next.onerror = function () { loading = false; };
      next.src = source + '?t=' + Date.now();
    }, 1000);
  }

  // Replaces the sections with these ids by the server's fresh rendering of this same page.
  async function refresh(ids) {
    const response = await fetch(location.href, { credentials: 'same-origin', cache: 'no-store' });
    if (response.redirected) { location.reload(); return; } // the login ended
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), 'text/html');
    for (const id of ids) {
      const current = document.getElementById(id);
      const replacement = fresh.getElementById(id);
      if (current && replacement) current.replaceWith(document.importNode(replacement, true));
    }
  }

  const periodic = Array.from(document.querySelectorAll('[data-refresh="periodic"][id]'), function (s) { return s.id; });
  if (periodic.length) {
    setInterval(function () { if (!document.hidden) refresh(periodic).catch(function () {}); }, 5000);
  }

  const live = document.querySelector('[data-refresh="events"][id]');
  const indicator = document.getElementById('live-indicator');
  if (live && window.EventSource) {
    const stream = new EventSource('/api/v1/events/stream');
    let pending = null;
    const soon = function () {
      if (pending) return;
      // A burst of events (one frame, many boxes) becomes one refresh.
      pending = setTimeout(function () { pending = null; refresh([live.id]).catch(function () {}); }, 300);
    };
    stream.addEventListener('event', soon);
    stream.addEventListener('lagged', soon);
    stream.onopen = function () { if (indicator) indicator.classList.add('on'); };
    stream.onerror = function () { if (indicator) indicator.classList.remove('on'); };
  }
})();
