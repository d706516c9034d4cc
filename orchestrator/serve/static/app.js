// Converge review page: the live verify result and live run progress. No framework, no build step.
// Values are written with textContent only: nothing received is parsed as HTML, except the
// verify fragment, which the server rendered and escaped.
"use strict";

function loadVerify() {
  const box = document.querySelector("[data-verify-url]");
  if (!box) return;
  fetch(box.dataset.verifyUrl, { credentials: "same-origin" })
    .then((r) => r.text().then((html) => ({ ok: r.ok, html })))
    .then(({ ok, html }) => {
      box.innerHTML = html;
      box.classList.remove("pending");
      box.classList.add(ok ? "done" : "failed");
    })
    .catch((err) => {
      box.textContent = "verify failed to load: " + err;
    });
}

const FIELDS = {
  stage: (r) => r.stage,
  step: (r) => (r.step === null ? "" : String(r.step)),
  attempt: (r) => (r.attempt === null ? "" : String(r.attempt)),
  steps: (r) => r.steps_done + "/" + r.steps_planned,
  tokens_per_second: (r) => (r.tokens_per_second === null ? "" : String(r.tokens_per_second)),
  tests: (r) => r.tests,
};

function showRun(row, run) {
  for (const [name, value] of Object.entries(FIELDS)) {
    const cell = row.querySelector('[data-field="' + name + '"]');
    if (cell) cell.textContent = value(run);
  }
  const badge = row.querySelector('[data-field="status"] .badge');
  if (badge) {
    badge.textContent = run.status;
    badge.className = "badge " + run.status;
  }
}

function followRuns() {
  const table = document.querySelector("table[data-events-url]");
  if (!table || !window.EventSource) return;
  const only = table.dataset.only;
  const live = document.getElementById("live");
  const source = new EventSource(table.dataset.eventsUrl);
  source.addEventListener("run", (event) => {
    const run = JSON.parse(event.data);
    if (only && run.id !== only) return;
    const row = Array.from(table.querySelectorAll("tr[data-run]")).find((r) => r.dataset.run === run.id);
    if (row) {
      showRun(row, run);
    } else if (!only) {
      window.location.reload(); // a new run: the server renders its row
    }
  });
  source.addEventListener("open", () => live && live.classList.add("on"));
  source.addEventListener("error", () => live && live.classList.remove("on"));
}

document.addEventListener("DOMContentLoaded", () => {
  loadVerify();
  followRuns();
});
