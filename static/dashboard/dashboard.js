// After htmx swaps a schedule row, put the keyboard focus on the control the row marks with
// data-focus (the toggle, or "Keep active" in the confirm step), so a keyboard user never
// falls back to the top of the page. Done here once, not with `autofocus`, which Chromium
// would apply again on its own a frame later and steal focus back.
document.addEventListener("htmx:afterSettle", function () {
  var target = document.querySelector("[data-focus]");
  if (target) {
    target.removeAttribute("data-focus");
    target.focus();
  }
});

// Live tail: after each refresh of a run's logs, show the newest line (the list scrolls inside
// its box), unless the reader has scrolled up to read older lines.
var logsAtBottom = true;
document.addEventListener("htmx:beforeSwap", function () {
  var logs = document.querySelector("ol.logs");
  logsAtBottom = !logs || logs.scrollHeight - logs.scrollTop - logs.clientHeight < 24;
});
document.addEventListener("htmx:afterSettle", function () {
  var logs = document.querySelector("ol.logs");
  if (logs && logsAtBottom) {
    logs.scrollTop = logs.scrollHeight;
  }
});
document.addEventListener("DOMContentLoaded", function () {
  var logs = document.querySelector("ol.logs");
  if (logs) {
    logs.scrollTop = logs.scrollHeight;
  }
});

// Runs list: a header checkbox (data-ticks="run") ticks or clears every run checkbox of the page.
document.addEventListener("change", function (event) {
  var all = event.target;
  if (!all.matches || !all.matches("input[data-ticks]")) {
    return;
  }
  var form = all.form || document;
  form.querySelectorAll('input[type="checkbox"][name="' + all.dataset.ticks + '"]').forEach(function (box) {
    box.checked = all.checked;
  });
});

// A live part is not swapped while the person types in one of its forms (a queue's limit): the
// refresh would throw away what they typed. Used in hx-trigger filters: every 15s[!editingIn('id')].
function editingIn(id) {
  var active = document.activeElement;
  var part = document.getElementById(id);
  return !!(part && active && part.contains(active) && active.matches("input, select, textarea"));
}

// Schedule form: show the controls of the chosen kind only (the stylesheet hides the others by
// the form's data-kind; without JavaScript the kind the page was drawn with keeps its controls, and
// a save with another kind draws the page again with that kind's).
document.addEventListener("change", function (event) {
  if (event.target.name === "kind" && event.target.form && event.target.form.classList.contains("schedule-form")) {
    event.target.form.dataset.kind = event.target.value;
  }
});
