// The labelling page: keyboard-first, with the next image prefetched and an outbox that keeps
// every label in localStorage until the server has acknowledged it.
(() => {
  "use strict";
  const root = document.body.dataset.root || ""; // the path leukolab is served under (a proxy's prefix)
  const config = JSON.parse(document.getElementById("label-config").textContent);
  const outboxKey = `leukolab.outbox.${config.user}`;
  const $ = (id) => document.getElementById(id);
  const image = $("cell-image");
  // Each class's colour marks its button (set here: the page's CSP refuses inline styles).
  for (const button of document.querySelectorAll("#buttons button[data-colour]")) {
    button.style.borderLeft = `6px solid ${button.dataset.colour}`;
  }
  const keys = new Map();
  for (const entry of config.keymap) for (const key of entry.keys) keys.set(key, entry);

  let current = null;   // the cell on screen
  let upcoming = null;  // the prefetched next cell
  let outbox = JSON.parse(localStorage.getItem(outboxKey) || "[]");
  let chain = Promise.resolve();  // label posts and undos run one after another, in order

  // One key per label, kept with it in the outbox: a resend after a lost reply is recognised
  // by the server as the same label, not a second one.
  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    (window.crypto || {}).getRandomValues ? crypto.getRandomValues(bytes) : bytes.forEach((_, i) => { bytes[i] = Math.random() * 256; });
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }
  for (const item of outbox) item.key ??= newKey();  // labels stored by an older version of this page

  async function api(method, url, body) {
    const response = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": config.csrf, "Content-Type": "application/json", Accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) { window.location = `${root}/login?next=${encodeURIComponent(location.pathname)}`; }
    return response;
  }

  function showError(message) { $("error").textContent = message || ""; }

  function saveOutbox() {
    localStorage.setItem(outboxKey, JSON.stringify(outbox));
    const status = $("save-status");
    status.dataset.pending = String(outbox.length);
    status.textContent = outbox.length ? `saving ${outbox.length} label${outbox.length > 1 ? "s" : ""}…` : "all labels saved";
  }

  async function fetchNext() {
    // Never ask for a cell that is on screen, prefetched, or labelled but not yet acknowledged.
    const ids = new Set([current, upcoming].filter(Boolean).map((c) => c.cell_id));
    for (const item of outbox) ids.add(item.cell_id);
    const exclude = [...ids].map((id) => `exclude=${id}`).join("&");
    const response = await api("GET", `${root}/api/v1/queue/next${exclude ? "?" + exclude : ""}`);
    if (response.status === 204) return null;
    if (!response.ok) throw new Error(`next cell: HTTP ${response.status}`);
    const cell = await response.json();
    new Image().src = cell.image_url;  // prefetch the pixels
    return cell;
  }

  // Key press to the next cell painted, as a Performance API measure ("leukolab:key-to-paint") that
  // `leukolab bench labelling --browser-labels N` reads; a mark and a measure per key, nothing else.
  let keyMark = null;
  function markPainted(cell) {
    if (!keyMark) return;
    const start = keyMark.startTime;
    keyMark = null;
    const measure = () => requestAnimationFrame(() => setTimeout(() => {
      performance.measure("leukolab:key-to-paint", { start, detail: cell.cell_id });
    }, 0));
    image.decode().then(measure, measure);
  }

  function show(cell, loading = false) {
    current = cell;
    $("empty").hidden = Boolean(cell) || loading;
    image.hidden = !cell;
    // The server leaves out suggestions too unsure to help; the one shown also marks its button.
    const suggested = cell && cell.suggestion ? cell.suggestion.label : null;
    // Before this lab has a model of its own, the reference model (another lab's cells) suggests: say so.
    const fromReference = Boolean(cell && cell.suggestion && cell.suggestion.source === "reference");
    const mark = $("suggestion-source");
    mark.hidden = !(suggested && fromReference);
    for (const button of document.querySelectorAll("#buttons button[data-label]")) {
      const on = button.dataset.label === suggested;
      button.classList.toggle("suggested", on);
      if (on) button.title = fromReference ? "the reference model's suggestion" : "the model's suggestion"; else button.removeAttribute("title");
    }
    if (!cell) {
      delete image.dataset.cellId;
      $("cell-reason").textContent = loading ? "loading the next cell…" : "";
      $("suggestion").textContent = "";
      return;
    }
    image.src = cell.image_url;
    image.dataset.cellId = cell.cell_id;
    markPainted(cell);
    $("cell-reason").textContent = `why this cell: ${cell.reason_text || cell.reason}`;
    const names = new Map([...document.querySelectorAll("#buttons button[data-label]")].map((b) => [b.dataset.label, b.textContent.replace(/^\s*\S+\s+/, "")]));
    const who = fromReference ? "reference model" : "model";
    $("suggestion").textContent = cell.suggestion && cell.suggestion.unlike_known
      ? `${who}: unlike any known class`
      : suggested ? `${who} suggests ${names.get(suggested) || suggested} (${Math.round(cell.suggestion.confidence * 100)} %)` : "";
  }

  // While the queue is empty, or the server cannot be reached, ask again later with backoff.
  let retryTimer = null;
  let emptyDelay = config.empty_poll_ms;
  let errorDelay = 2000;
  function retryLater(empty) {
    clearTimeout(retryTimer);
    const delay = empty ? emptyDelay : errorDelay;
    if (empty) emptyDelay = Math.min(emptyDelay * 1.5, config.empty_poll_ms * 6);
    else errorDelay = Math.min(errorDelay * 2, 30_000);
    retryTimer = setTimeout(() => {
      if (document.hidden) { retryLater(empty); return; }
      refill();
      if (empty) refreshStats();
    }, delay);
  }

  // One refill at a time: two in flight could both be handed the same leased cell.
  let refilling = null;
  function refill() {
    clearTimeout(retryTimer);
    refilling ??= (async () => {
      try {
        while (!current || !upcoming) {
          const cell = await fetchNext();
          errorDelay = 2000;
          if (!cell) {
            if (!current) { show(null); retryLater(true); }
            break;
          }
          emptyDelay = config.empty_poll_ms;
          if (!current) show(cell);
          else if (cell.cell_id === current.cell_id || cell.cell_id === upcoming?.cell_id) break;
          else if (!upcoming) upcoming = cell;
          else { release(cell); break; }  // an undo filled the slot while this fetch was out
        }
      } catch (error) {
        // Offline or a server error: keep trying, or the page would wait for a key it ignores.
        showError(navigator.onLine === false ? "connection lost: labels are kept in this browser and will be sent again" : error.message);
        retryLater(false);
      } finally {
        refilling = null;
      }
    })();
    return refilling;
  }

  function advance() {
    show(upcoming, upcoming === null);
    upcoming = null;
    refill();
  }

  async function flush() {
    while (outbox.length) {
      const item = outbox[0];
      let response;
      try {
        response = await api("POST", `${root}/api/v1/cells/${item.cell_id}/labels`, { label: item.label, idempotency_key: item.key });
      } catch (error) {
        showError("connection lost: labels are kept in this browser and will be sent again");
        await new Promise((resolve) => setTimeout(resolve, 2000));
        continue;
      }
      if (response.status >= 500 || response.status === 429) {
        await new Promise((resolve) => setTimeout(resolve, 2000));
        continue;
      }
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        showError(`cell ${item.cell_id}: ${body.detail || response.status}`);
      } else {
        showError("");
      }
      outbox.shift();
      saveOutbox();
    }
    refreshStats();
    if (!current || !upcoming) refill();  // a fetch that failed while offline is not waiting any more
  }

  let toastTimer = null;
  function toast(message) {
    const element = $("toast");
    element.textContent = message;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { element.textContent = ""; }, 2500);
  }

  function label(value) {
    if (!current) return;
    $("field-view").close();  // it shows the cell being labelled, which is about to leave
    outbox.push({ cell_id: current.cell_id, label: value, key: newKey(), at: new Date().toISOString() });
    saveOutbox();
    toast(value === "unsure" ? `cell ${current.cell_id} marked unsure` : `cell ${current.cell_id} labelled as ${value}`);
    advance();
    chain = chain.then(flush);
  }

  // Give leases back when they are not needed, so other readers can have those cells.
  function release(cell, keepalive = false) {
    if (!cell) return;
    fetch(`${root}/api/v1/cells/${cell.cell_id}/lease`, {
      method: "DELETE", credentials: "same-origin", keepalive, headers: { "X-CSRF-Token": config.csrf },
    }).catch(() => {});
  }

  function undo() {
    chain = chain.then(flush).then(async () => {
      const response = await api("POST", `${root}/api/v1/labels/undo`);
      const body = await response.json().catch(() => ({}));
      if (!response.ok) { showError(body.detail || `undo: HTTP ${response.status}`); return; }
      showError("");
      if (current) {  // still leased to me; it comes back after the undone cell
        if (upcoming && upcoming.cell_id !== current.cell_id) release(upcoming);
        upcoming = current;
      }
      show({ cell_id: body.cell_id, image_url: body.image_url || `${root}/api/v1/cells/${body.cell_id}/image`, reason: "undo", reason_text: `you undid your label ${body.label}`, suggestion: null });
      toast(`label ${body.label} undone: cell ${body.cell_id} is back`);
      refreshStats();
    });
  }

  let statsTimer = null;
  function refreshStats() {
    clearTimeout(statsTimer);
    statsTimer = setTimeout(async () => {
      const response = await api("GET", `${root}/api/v1/stats`);
      if (!response.ok) return;
      const stats = await response.json();
      $("my-today").textContent = stats.my_today;
      $("queue-size").textContent = stats.queue;
      $("queue-held").textContent = stats.queue_held;
      $("queue-held-note").hidden = !stats.queue_held;
      $("cells-total").textContent = stats.cells;
      for (const cell of document.querySelectorAll("#per-class [data-class]")) {
        const name = cell.dataset.class;
        cell.textContent = name === "unsure" ? stats.unsure : (stats.per_class[name] ?? 0);
      }
    }, 300);
  }

  // The cell in its smear field, boxed (cells located in a field; a tile has none).
  const SVG = "http://www.w3.org/2000/svg";
  async function showField() {
    const dialog = $("field-view");
    if (dialog.open) { dialog.close(); return; }
    if (!current) return;
    const response = await api("GET", `${root}/api/v1/cells/${current.cell_id}/field`);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { toast(body.detail || `field: HTTP ${response.status}`); return; }
    const svg = $("field-svg");
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${body.width} ${body.height}`);
    const picture = document.createElementNS(SVG, "image");
    for (const [name, value] of [["href", body.image_url], ["x", 0], ["y", 0], ["width", body.width], ["height", body.height]]) picture.setAttribute(name, value);
    svg.append(picture);
    const [x0, y0, x1, y1] = body.cell.box;
    const rect = document.createElementNS(SVG, "rect");
    for (const [name, value] of [["x", x0], ["y", y0], ["width", x1 - x0], ["height", y1 - y0], ["class", "box"], ["vector-effect", "non-scaling-stroke"]]) rect.setAttribute(name, value);
    rect.dataset.cellId = body.cell_id;
    svg.append(rect);
    const flags = [body.cell.touches_edge ? "cut by the field edge" : "", body.cell.merged ? "touching cells, not split" : ""].filter(Boolean);
    $("field-caption").textContent = `sample ${body.sample} · ${body.source_name} · box ${x0},${y0}–${x1},${y1}${flags.length ? " · " + flags.join(", ") : ""}`;
    dialog.showModal();
  }

  function act(entry) {
    const dialog = $("keymap");
    if (entry.action === "label") label(entry.label);
    else if (entry.action === "undo") undo();
    else if (entry.action === "help") dialog.open ? dialog.close() : dialog.showModal();
    else if (entry.action === "field") showField();
    else if (entry.action === "close") { dialog.close(); $("field-view").close(); }
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (event.target.closest("input, select, textarea")) return;
    const entry = keys.get(event.key);
    if (!entry) return;
    event.preventDefault();
    // a label key with no cell on screen does nothing, so it must not restart the pending measure
    if (entry.action === "label" && current) keyMark = performance.mark("leukolab:key");
    act(entry);
  });
  $("buttons").addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.dataset.label) act({ action: "label", label: button.dataset.label });
    else act({ action: button.dataset.action });
  });
  $("keymap").addEventListener("click", (event) => {
    if (event.target.closest("[data-action=close]")) $("keymap").close();
  });
  $("field-view").addEventListener("click", (event) => {
    if (event.target.closest("[data-action=close]")) $("field-view").close();
  });

  // Leases are renewed only while the page is in view; a page hidden for a minute gives them back
  // and asks again when it is shown, so an idle tab does not keep cells from other readers.
  setInterval(() => {
    if (document.hidden) return;
    for (const cell of [current, upcoming]) if (cell) api("POST", `${root}/api/v1/cells/${cell.cell_id}/lease`).catch(() => {});
  }, 60_000);
  let hiddenTimer = null;
  function releaseAll(keepalive) {
    release(current, keepalive);
    release(upcoming, keepalive);
  }
  document.addEventListener("visibilitychange", () => {
    clearTimeout(hiddenTimer);
    if (document.hidden) {
      hiddenTimer = setTimeout(() => {
        if (!document.hidden || refilling) return;
        releaseAll(false);
        upcoming = null;
        show(null, true);
      }, 60_000);
    } else if (!current || !upcoming) {
      refill();
    }
  });
  window.addEventListener("pagehide", () => releaseAll(true));
  window.addEventListener("online", () => { chain = chain.then(flush); refill(); });

  saveOutbox();
  chain = chain.then(flush);
  refill();
})();
