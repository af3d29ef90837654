// The dashboard's only script: refresh the live region of the page in place, and ask
// before a dangerous action. No framework, nothing loaded from elsewhere.
(function () {
  "use strict";
  var live = document.querySelector("[data-live]");
  var state = document.getElementById("live-state");
  var every = Number(document.body.dataset.refreshMs || 0);

  function mark(text, failed) {
    if (!state) return;
    state.textContent = text;
    state.classList.toggle("stale", Boolean(failed));
  }

  function refresh() {
    fetch(window.location.href, {
      headers: { "X-Dashboard-Fragment": "1", "Accept": "text/html" },
      credentials: "same-origin",
      cache: "no-store",
    })
      .then(function (response) {
        if (response.status === 401 || response.status === 403) {
          mark("signed out", true);
          return null;
        }
        if (!response.ok) {
          mark("stale (" + response.status + ")", true);
          return null;
        }
        return response.text();
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          live.innerHTML = html;
          live.dataset.refreshedAt = String(Date.now());
          mark("live", false);
        }
      })
      .catch(function () {
        mark("offline", true);
      })
      .finally(function () {
        window.setTimeout(refresh, every);
      });
  }

  if (live && every > 0) {
    window.setTimeout(refresh, every);
  }

  document.addEventListener("submit", function (event) {
    var question = event.target.dataset ? event.target.dataset.confirm : null;
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });
})();
