// Adjudication: one key (a class hotkey) decides the cell shown, then the next case loads.
(function () {
  "use strict";
  const root = document.body.dataset.root || ""; // the path leukolab is served under (a proxy's prefix)
  const config = JSON.parse(document.getElementById("adjudication-config").textContent);
  const hotkeys = Object.fromEntries(config.classes.map((c) => [c.hotkey, c.name]));
  const csrf = (JSON.parse(document.body.getAttribute("hx-headers") || "{}"))["X-CSRF-Token"];
  const card = document.getElementById("case");
  const status = document.getElementById("adjudication-status");
  let busy = false;
  const decided = sessionStorage.getItem("leukolab.adjudicated");
  if (decided) {
    status.textContent = decided;
    sessionStorage.removeItem("leukolab.adjudicated");
  }

  async function decide(label) {
    if (!card || busy) return;
    busy = true;
    status.textContent = "saving…";
    const response = await fetch(`${root}/api/v1/cells/${card.dataset.cellId}/adjudication`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ label }),
    });
    if (response.ok) {
      // said on the next case's page, which the reload brings
      sessionStorage.setItem("leukolab.adjudicated", `cell ${card.dataset.cellId} decided: ${label}`);
      window.location.reload();
    } else {
      const data = await response.json().catch(() => ({}));
      status.textContent = data.detail || response.statusText;
      busy = false;
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.target.closest && event.target.closest("input, select, textarea")) return;
    const label = hotkeys[event.key];
    if (!label) return;
    event.preventDefault();
    decide(label);
  });
  for (const button of document.querySelectorAll("button.decide")) {
    button.addEventListener("click", () => decide(button.dataset.label));
  }
})();
