// The live event stream: the API's Server-Sent Events, rendered as rows.
// Text goes into the page with textContent only, never as HTML: event
// fields come from agents. Loaded from the master itself (CSP: script-src
// 'self'); the page reads without it.
(function () {
  "use strict";
  var table = document.getElementById("events");
  var rows = document.getElementById("event-rows");
  var status = document.getElementById("live-status");
  if (!table || !rows || !window.EventSource) { return; }
  var MAX_ROWS = 500;
  function cell(text, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    td.textContent = text;
    return td;
  }
  function time(us) {
    var d = new Date(Math.floor(us / 1000));
    return isNaN(d.getTime()) ? "" : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }
  function add(ev) {
    var tr = document.createElement("tr");
    tr.className = "event fresh";
    tr.appendChild(cell(time(ev.time_us), ""));
    tr.appendChild(cell(ev.tag || "", "tag"));
    tr.appendChild(cell(ev.agent || "", ""));
    var data = cell("", "");
    var code = document.createElement("code");
    code.textContent = JSON.stringify(ev.data);
    data.appendChild(code);
    tr.appendChild(data);
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > MAX_ROWS) { rows.removeChild(rows.lastChild); }
  }
  function say(text, state) { status.textContent = text; status.setAttribute("data-state", state); }
  var source = new EventSource(table.getAttribute("data-source"), { withCredentials: true });
  source.onopen = function () { say("Live: new events appear at the top.", "live"); };
  source.onerror = function () { say("Disconnected; reconnecting…", "reconnecting"); };
  // The API names its SSE events: `event` (data: the event as JSON) and
  // `missed` (data: {"missed": N}, N null when unknown).
  source.addEventListener("event", function (message) {
    try { add(JSON.parse(message.data)); } catch (e) { /* not an event */ }
  });
  source.addEventListener("missed", function (message) {
    var count = null;
    try { count = JSON.parse(message.data).missed; } catch (e) { /* unknown */ }
    var tr = document.createElement("tr");
    tr.className = "event missed";
    var td = cell("The stream fell behind and skipped " + (count === null ? "some" : count) + " events.", "bad");
    td.colSpan = 4;
    tr.appendChild(td);
    rows.insertBefore(tr, rows.firstChild);
  });
})();
