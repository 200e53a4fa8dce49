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

  // An upload (the import forms): the form's hx-indicator <progress> shows how much of the file has been sent,
  // and its data-upload-status element says so; once all is sent the bar runs on (no value) while the server
  // checks and imports, which a large zip takes a while to do.
  function uploadProgress(form) {
    const selector = form && form.getAttribute("hx-indicator");
    const bar = selector && document.querySelector(selector);
    return bar && bar.tagName === "PROGRESS" ? [bar, form.querySelector("[data-upload-status]")] : [null, null];
  }
  document.addEventListener("htmx:beforeRequest", (event) => {
    const [bar, status] = uploadProgress(event.target.closest("form"));
    if (!bar) return;
    bar.removeAttribute("value");
    bar.dataset.phase = "upload";
    if (status) status.textContent = "uploading…";
  });
  document.addEventListener("htmx:xhr:progress", (event) => {
    const [bar, status] = uploadProgress(event.target.closest("form"));
    const { loaded, total, lengthComputable } = event.detail;
    // htmx reports the reply's download the same way: only the events before the upload ends count
    if (!bar || bar.dataset.phase !== "upload" || !lengthComputable || !total) return;
    bar.max = total;
    if (loaded < total) {
      bar.value = loaded;
      if (status) status.textContent = `uploading ${Math.floor((100 * loaded) / total)} % of ${(total / 1e6).toFixed(1)} MB`;
    } else {
      bar.removeAttribute("value");
      bar.dataset.phase = "server";
      if (status) status.textContent = "uploaded; checking and importing every image…";
    }
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
