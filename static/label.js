// The labelling page: keyboard-first, with the next image prefetched and an outbox that keeps
// every label in localStorage until the server has acknowledged it.
(() => {
  "use strict";
  const config = JSON.parse(document.getElementById("label-config").textContent);
  const outboxKey = `leukolab.outbox.${config.user}`;
  const $ = (id) => document.getElementById(id);
  const image = $("cell-image");
  const keys = new Map();
  for (const entry of config.keymap) for (const key of entry.keys) keys.set(key, entry);

  let current = null;   // the cell on screen
  let upcoming = null;  // the prefetched next cell
  let outbox = JSON.parse(localStorage.getItem(outboxKey) || "[]");
  let chain = Promise.resolve();  // label posts and undos run one after another, in order

  async function api(method, url, body) {
    const response = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": config.csrf, "Content-Type": "application/json", Accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) { window.location = `/login?next=${encodeURIComponent(location.pathname)}`; }
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
    const response = await api("GET", `/api/v1/queue/next${exclude ? "?" + exclude : ""}`);
    if (response.status === 204) return null;
    if (!response.ok) throw new Error(`next cell: HTTP ${response.status}`);
    const cell = await response.json();
    new Image().src = cell.image_url;  // prefetch the pixels
    return cell;
  }

  function show(cell, loading = false) {
    current = cell;
    $("empty").hidden = Boolean(cell) || loading;
    image.hidden = !cell;
    if (!cell) {
      delete image.dataset.cellId;
      $("cell-reason").textContent = loading ? "loading the next cell…" : "";
      $("suggestion").textContent = "";
      return;
    }
    image.src = cell.image_url;
    image.dataset.cellId = cell.cell_id;
    $("cell-reason").textContent = `reason: ${cell.reason}`;
    $("suggestion").textContent = cell.suggestion
      ? `model suggests ${cell.suggestion.label} (${Math.round(cell.suggestion.confidence * 100)} %)` : "";
  }

  // One refill at a time: two in flight could both be handed the same leased cell.
  let refilling = null;
  function refill() {
    refilling ??= (async () => {
      try {
        while (!current || !upcoming) {
          const cell = await fetchNext();
          if (!cell) { if (!current) show(null); break; }
          if (!current) show(cell);
          else if (cell.cell_id !== current.cell_id) upcoming = cell;
          else break;
        }
      } catch (error) {
        showError(error.message);
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
        response = await api("POST", `/api/v1/cells/${item.cell_id}/labels`, { label: item.label });
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
  }

  function label(value) {
    if (!current) return;
    outbox.push({ cell_id: current.cell_id, label: value, at: new Date().toISOString() });
    saveOutbox();
    advance();
    chain = chain.then(flush);
  }

  function undo() {
    chain = chain.then(flush).then(async () => {
      const response = await api("POST", "/api/v1/labels/undo");
      const body = await response.json().catch(() => ({}));
      if (!response.ok) { showError(body.detail || `undo: HTTP ${response.status}`); return; }
      showError("");
      if (current) upcoming = current;  // still leased to me; it comes back after the undone cell
      show({ cell_id: body.cell_id, image_url: `/api/v1/cells/${body.cell_id}/image`, reason: `undo (was ${body.label})`, suggestion: null });
      refreshStats();
    });
  }

  let statsTimer = null;
  function refreshStats() {
    clearTimeout(statsTimer);
    statsTimer = setTimeout(async () => {
      const response = await api("GET", "/api/v1/stats");
      if (!response.ok) return;
      const stats = await response.json();
      $("my-today").textContent = stats.my_today;
      $("queue-size").textContent = stats.queue;
      $("cells-total").textContent = stats.cells;
      for (const cell of document.querySelectorAll("#per-class [data-class]")) {
        const name = cell.dataset.class;
        cell.textContent = name === "unsure" ? stats.unsure : (stats.per_class[name] ?? 0);
      }
    }, 300);
  }

  function act(entry) {
    const dialog = $("keymap");
    if (entry.action === "label") label(entry.label);
    else if (entry.action === "undo") undo();
    else if (entry.action === "help") dialog.open ? dialog.close() : dialog.showModal();
    else if (entry.action === "close") dialog.close();
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (event.target.closest("input, select, textarea")) return;
    const entry = keys.get(event.key);
    if (!entry) return;
    event.preventDefault();
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

  setInterval(() => { if (current) api("POST", `/api/v1/cells/${current.cell_id}/lease`); }, 60_000);
  window.addEventListener("online", () => { chain = chain.then(flush); });

  saveOutbox();
  chain = chain.then(flush);
  refill();
})();
