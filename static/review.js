// The review grid: keyboard-first selection and bulk labelling. Keys: arrows move, space selects,
// shift+arrows extend, class hotkeys reclassify the selection, Enter confirms the rest of the page
// as predicted, z undoes the last bulk action, e enlarges the cell under the cursor, n next page.
(function () {
  "use strict";
  const root = document.body.dataset.root || ""; // the path leukolab is served under (a proxy's prefix)
  const config = JSON.parse(document.getElementById("review-config").textContent);
  const hotkeys = Object.fromEntries(config.classes.map((c) => [c.hotkey, c.name]));
  const csrf = (JSON.parse(document.body.getAttribute("hx-headers") || "{}"))["X-CSRF-Token"];
  const grid = document.getElementById("review-grid");
  const status = document.getElementById("review-status");
  const nextButton = document.getElementById("next-page");
  const enlarged = document.getElementById("enlarged");
  let cells = [];       // {cell_id, prediction, label}
  let done = new Set(); // cells labelled on this page since it loaded
  let selected = new Set();
  let cursor = 0;
  let anchor = null;
  let nextCursor = null;
  let pageCursor = null;

  function query(extra) {
    const params = new URLSearchParams();
    params.set("group", document.getElementById("group").value);
    const cls = document.getElementById("cls").value;
    const sample = document.getElementById("sample").value.trim();
    if (cls) params.set("cls", cls);
    if (sample) params.set("sample", sample);
    params.set("limit", String(grid.clientWidth > 0 ? Math.max(24, Math.floor(grid.clientWidth / 112) * 4) : 48));
    if (extra) params.set("cursor", extra);
    return params;
  }

  function say(text, pending) {
    status.textContent = text;
    status.dataset.pending = String(pending || 0);
  }

  async function api(method, path, body) {
    const response = await fetch(path, {
      method,
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: body ? JSON.stringify(body) : undefined,
    });
    const data = response.status === 204 ? null : await response.json();
    if (!response.ok) throw new Error((data && data.detail) || response.statusText);
    return data;
  }

  async function load(at) {
    pageCursor = at || null;
    say("loading…", 1);
    try {
      const data = await api("GET", `${root}/api/v1/review?` + query(at).toString());
      cells = data.cells;
      nextCursor = data.next_cursor;
      done = new Set();
      selected = new Set();
      cursor = 0;
      anchor = null;
      render();
      say(cells.length ? `${cells.length} cells` : "no cells here", 0);
    } catch (error) {
      cells = [];
      render();
      say(error.message, 0);
    }
  }

  function render() {
    grid.replaceChildren(
      ...cells.map((cell, index) => {
        const figure = document.createElement("figure");
        figure.className = "review-cell";
        figure.dataset.cellId = String(cell.cell_id);
        figure.dataset.index = String(index);
        figure.classList.toggle("cursor", index === cursor);
        figure.classList.toggle("selected", selected.has(cell.cell_id));
        figure.classList.toggle("done", done.has(cell.cell_id));
        const img = document.createElement("img");
        img.src = `${root}/api/v1/cells/${cell.cell_id}/image`;
        img.alt = `cell ${cell.cell_id}`;
        img.width = 96;
        img.height = 96;
        const caption = document.createElement("figcaption");
        const predicted = cell.prediction ? `${cell.prediction.label} ${Math.round(cell.prediction.confidence * 100)}%` : "–";
        caption.textContent = cell.label ? `${predicted} · ${cell.label}` : predicted;
        figure.append(img, caption);
        figure.addEventListener("click", (event) => {
          cursor = index;
          if (event.shiftKey || event.ctrlKey) toggle(cell.cell_id);
          render();
        });
        return figure;
      }),
    );
    nextButton.hidden = !nextCursor;
    grid.dataset.selected = String(selected.size);
    grid.dataset.cursor = cells[cursor] ? String(cells[cursor].cell_id) : "";
    if (!enlarged.hidden) showEnlarged();
  }

  function toggle(cellId) {
    if (selected.has(cellId)) selected.delete(cellId);
    else selected.add(cellId);
  }

  function columns() {
    const first = grid.querySelector(".review-cell");
    if (!first) return 1;
    return Math.max(1, Math.round(grid.clientWidth / first.getBoundingClientRect().width) || 1);
  }

  function move(delta, extend) {
    if (!cells.length) return;
    const target = Math.min(cells.length - 1, Math.max(0, cursor + delta));
    if (extend) {
      if (anchor === null) anchor = cursor;
      const [from, to] = [Math.min(anchor, target), Math.max(anchor, target)];
      selected = new Set(cells.slice(from, to + 1).map((c) => c.cell_id));
    } else {
      anchor = null;
    }
    cursor = target;
    render();
  }

  async function bulk(body, ids, newLabel) {
    say("saving…", 1);
    try {
      const result = await api("POST", `${root}/api/v1/review/labels`, body);
      for (const cell of cells) {
        if (ids.includes(cell.cell_id)) {
          done.add(cell.cell_id);
          cell.label = newLabel ? newLabel : cell.prediction && cell.prediction.label;
        }
      }
      selected = new Set();
      anchor = null;
      render();
      say(`labelled ${result.count} cells (action ${result.action_id})`, 0);
      status.dataset.lastAction = String(result.action_id);
    } catch (error) {
      say(error.message, 0);
    }
  }

  function reclassify(label) {
    const ids = selected.size ? [...selected] : cells[cursor] ? [cells[cursor].cell_id] : [];
    if (!ids.length) return;
    bulk({ cell_ids: ids, label }, ids, label);
  }

  function confirmRest() {
    const ids = cells.filter((c) => !done.has(c.cell_id) && !selected.has(c.cell_id) && c.prediction).map((c) => c.cell_id);
    if (!ids.length) return say("nothing left on this page to confirm", 0);
    bulk({ cell_ids: ids, as_predicted: true }, ids, null);
  }

  async function undo() {
    say("undoing…", 1);
    try {
      const result = await api("POST", `${root}/api/v1/review/undo`);
      say(`undid action ${result.action_id} (${result.count} labels)`, 1);
      await load(pageCursor);
      say(`undid action ${result.action_id} (${result.count} labels)`, 0);
    } catch (error) {
      say(error.message, 0);
    }
  }

  async function showEnlarged() {
    const cell = cells[cursor];
    if (!cell) return;
    enlarged.hidden = false;
    document.getElementById("enlarged-image").src = `${root}/api/v1/cells/${cell.cell_id}/image`;
    document.getElementById("enlarged-caption").textContent = `cell ${cell.cell_id}`;
    document.getElementById("enlarged-link").href = `${root}/cells/${cell.cell_id}`;
    const rows = document.getElementById("history-rows");
    try {
      const events = await api("GET", `${root}/api/v1/cells/${cell.cell_id}/history`);
      rows.replaceChildren(
        ...events.map((e) => {
          const tr = document.createElement("tr");
          const suggestion = e.suggestion ? `${e.suggestion.label} ${Math.round(e.suggestion.confidence * 100)}%` : "";
          for (const text of [e.created_at.slice(0, 19).replace("T", " "), e.user, e.event, e.label || "", e.source, suggestion]) {
            const td = document.createElement("td");
            td.textContent = text;
            tr.append(td);
          }
          return tr;
        }),
      );
    } catch (error) {
      rows.replaceChildren();
      document.getElementById("enlarged-caption").textContent = `cell ${cell.cell_id}: ${error.message}`;
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.target.closest && event.target.closest("input, select, textarea")) return;
    const across = columns();
    const keys = {
      ArrowRight: () => move(1, event.shiftKey),
      ArrowLeft: () => move(-1, event.shiftKey),
      ArrowDown: () => move(across, event.shiftKey),
      ArrowUp: () => move(-across, event.shiftKey),
      " ": () => {
        if (cells[cursor]) toggle(cells[cursor].cell_id);
        render();
      },
      Enter: confirmRest,
      z: undo,
      e: () => (enlarged.hidden ? showEnlarged() : (enlarged.hidden = true)),
      Escape: () => (enlarged.hidden = true),
      n: () => nextCursor && load(nextCursor),
    };
    const action = keys[event.key] || (hotkeys[event.key] && (() => reclassify(hotkeys[event.key])));
    if (!action) return;
    event.preventDefault();
    action();
  });
  nextButton.addEventListener("click", () => load(nextCursor));
  document.getElementById("review-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const shown = query();
    shown.delete("limit");
    history.replaceState(null, "", `${location.pathname}?${shown}`); // a reload or a shared link keeps the filters
    load(null);
  });
  load(null);
})();
