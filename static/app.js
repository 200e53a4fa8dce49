// Loaded by every page after htmx. htmx 2 drops 4xx/5xx replies by default; our forms answer 409
// and 422 with a fragment that says what went wrong (e.g. the import's "Nothing was imported"
// table), so those are swapped in like a success. Other errors show a line at the top instead.
(() => {
  "use strict";
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "409", swap: true, error: false },
    { code: "422", swap: true, error: false },
    { code: "[45]..", swap: false, error: true },
    { code: "...", swap: false },
  ];

  document.addEventListener("htmx:responseError", (event) => {
    const banner = document.getElementById("page-error");
    if (!banner) return;
    const xhr = event.detail.xhr;
    banner.textContent = `The server refused this (HTTP ${xhr.status}); reload the page and try again.`;
    banner.hidden = false;
  });
  document.addEventListener("htmx:sendError", () => {
    const banner = document.getElementById("page-error");
    if (!banner) return;
    banner.textContent = "The server could not be reached; check the connection and try again.";
    banner.hidden = false;
  });
  document.addEventListener("htmx:beforeRequest", () => {
    const banner = document.getElementById("page-error");
    if (banner) banner.hidden = true;
  });

  // A plain form that changes many rows (a class merge, a retirement) asks first: data-confirm holds the question.
  document.addEventListener("submit", (event) => {
    const question = event.target.dataset && event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });

  // Messages with a Dismiss button stay until dismissed or replaced by the next action's answer.
  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-dismiss]");
    if (button) button.closest(button.dataset.dismiss).remove();
  });
})();
