// Flotilla console: live updates (server-sent events from the API), the
// log viewer, the theme toggle and small form helpers. Pages work without
// it; it only makes them live. Everything it writes into the page goes
// through textContent or attributes, never HTML.
(function () {
  "use strict";

  var $ = function (sel, root) { return (root || document).querySelector(sel); };
  var $$ = function (sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); };

  // --- Theme: system, dark or light, kept in localStorage. ---
  function initTheme() {
    var btn = $("#theme-toggle");
    if (!btn) { return; }
    var order = ["system", "dark", "light"];
    var cur = document.documentElement.getAttribute("data-theme") || "system";
    var show = function () { btn.textContent = "Theme: " + cur; };
    btn.hidden = false;
    show();
    btn.addEventListener("click", function () {
      cur = order[(order.indexOf(cur) + 1) % order.length];
      try {
        if (cur === "system") { localStorage.removeItem("flotilla-theme"); } else { localStorage.setItem("flotilla-theme", cur); }
      } catch (e) { /* the choice lasts for this page only */ }
      if (cur === "system") { document.documentElement.removeAttribute("data-theme"); } else { document.documentElement.setAttribute("data-theme", cur); }
      show();
    });
  }

  // --- Times: "12 s ago", kept current. ---
  function ago(iso) {
    var t = Date.parse(iso);
    if (!iso || isNaN(t)) { return "never"; }
    var s = Math.max(0, (Date.now() - t) / 1000);
    if (s < 5) { return "just now"; }
    if (s < 60) { return Math.floor(s) + " s ago"; }
    if (s < 3600) { return Math.floor(s / 60) + " min ago"; }
    if (s < 172800) { return Math.floor(s / 3600) + " h ago"; }
    return Math.floor(s / 86400) + " days ago";
  }
  function refreshTimes() {
    $$("time[data-ago]").forEach(function (el) { el.textContent = ago(el.getAttribute("datetime")); });
  }

  // --- Event streams. A browser allows few connections to a host, so every
  // stream is closed when the page goes away (a page kept for Back would
  // otherwise hold its streams open and starve the next page's requests),
  // and a page shown again from that cache is loaded afresh.
  // The browser reconnects an EventSource by itself when its connection
  // breaks, resuming after the last event (Last-Event-ID), but gives up for
  // good when a reconnect is answered with an error status: a load balancer's
  // 503 while no gateway is up, say. A stream that gave up is opened again
  // after a pause (1 s, twice as long each time up to 30 s), resuming after
  // the last event received (its id as lastEventId in the URL: the events
  // and the logs follows both take it). ---
  var streams = [];
  function openStream(url, on) {
    var s = { es: null, last: "", timer: null, closed: false };
    var wait = 1000;
    var connect = function () {
      var u = url;
      if (s.last) { u += (u.indexOf("?") < 0 ? "?" : "&") + "lastEventId=" + encodeURIComponent(s.last); }
      var es = s.es = new EventSource(u);
      es.addEventListener("open", function () {
        wait = 1000;
        if (on.open) { on.open(); }
      });
      es.addEventListener("error", function () {
        if (on.error) { on.error(); }
        if (es.readyState === EventSource.CLOSED && !s.closed) {
          s.timer = setTimeout(connect, wait);
          wait = Math.min(2 * wait, 30000);
        }
      });
      Object.keys(on.events).forEach(function (name) {
        es.addEventListener(name, function (m) {
          if (m.lastEventId) { s.last = m.lastEventId; }
          on.events[name](m);
        });
      });
    };
    s.close = function () {
      s.closed = true;
      clearTimeout(s.timer);
      if (s.es) { s.es.close(); }
    };
    connect();
    streams.push(s);
    return s;
  }
  window.addEventListener("pagehide", function () {
    streams.forEach(function (s) { s.close(); });
    streams = [];
  });
  window.addEventListener("pageshow", function (e) {
    if (e.persisted) { location.reload(); }
  });

  // --- A live feed: a stream of the API's events, with its status shown. ---
  function feed(url, name, onMessage, onOpen) {
    var status = $$("[data-live-status]");
    var set = function (text, cls) {
      status.forEach(function (el) { el.textContent = text; el.className = "live " + (cls || ""); });
    };
    var events = {};
    events[name] = function (m) {
      var data;
      try { data = JSON.parse(m.data); } catch (e) { return; }
      onMessage(data, m.lastEventId);
    };
    openStream(url, {
      open: function () { set("live", "on"); if (onOpen) { onOpen(); } },
      error: function () { set("reconnecting…", "off"); },
      events: events
    });
  }

  function verbOf(ev) { var i = (ev.type || "").indexOf("."); return i < 0 ? ev.type : ev.type.slice(i + 1); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function badge(state) { return el("span", "badge s-" + state, state); }

  // eventItem builds one line of a timeline, as the server renders it.
  function eventItem(ev) {
    var d = ev.data || {};
    var li = el("li");
    li.setAttribute("data-event-id", ev.id);
    var t = el("time", "", ago(ev.time));
    t.setAttribute("datetime", ev.time);
    t.setAttribute("title", ev.time);
    t.setAttribute("data-ago", "");
    li.appendChild(t);
    li.appendChild(document.createTextNode(" "));
    var a = el("a", "", d.name || String(ev.entityId).split("-")[0]);
    a.href = "/instances/" + encodeURIComponent(ev.entityId);
    li.appendChild(a);
    li.appendChild(document.createTextNode(" "));
    li.appendChild(el("span", "verb", verbOf(ev)));
    if (d.state) {
      li.appendChild(document.createTextNode(" → "));
      li.appendChild(badge(d.state));
    }
    // A progress event says the agent's report (running-setup/succeeded).
    var detail = verbOf(ev) === "progress" && d.agentProgress ? d.agentProgress : d.stateDetail;
    if (detail) {
      li.appendChild(document.createTextNode(" "));
      li.appendChild(el("span", "muted", detail));
    }
    li.appendChild(document.createTextNode(" "));
    li.appendChild(el("span", "actor", "by " + ev.actor));
    return li;
  }

  // addEvent puts ev at the top of list (newest first) unless it is there.
  function addEvent(list, ev) {
    if (!list || !ev.id || list.querySelector('[data-event-id="' + CSS.escape(ev.id) + '"]')) { return false; }
    var empty = $(".empty", list);
    if (empty) { empty.remove(); }
    list.insertBefore(eventItem(ev), list.firstChild);
    var max = parseInt(list.getAttribute("data-max") || "100", 10);
    while (list.children.length > max) { list.removeChild(list.lastChild); }
    return true;
  }

  // --- Overview: counts by state and recent events. ---
  // The counts are the gateway's fleet overview (GET /api/v1/overview),
  // read again after instance events, one read at a time. The overview
  // follows the events on its own, and may not have counted the one this
  // page just got: its answer says the last it counted (sequence), and
  // while that is older the page reads it again, every 250 ms, 40 times
  // at most.
  function initOverview() {
    var list = $("#recent[data-feed]");
    var section = $("[data-overview]");
    if (!list || !section) { return; }
    var inFlight = false, again = false, want = 0, lagging = false, retries = 0;
    var text = function (sel, v) { var e = $(sel); if (e) { e.textContent = String(v); } };
    var show = function (ov) {
      var states = ov.states || {};
      $$("[data-count]").forEach(function (n) { n.textContent = String(parseInt(states[n.getAttribute("data-count")] || "0", 10)); });
      text("[data-total]", parseInt(ov.instances || "0", 10));
      text("[data-agents-connected]", parseInt(ov.agentsConnected || "0", 10));
      text("[data-agents-expected]", parseInt(ov.agentsExpected || "0", 10));
      var building = $("[data-building]");
      if (building) { building.remove(); }
    };
    var refresh = function () {
      if (inFlight) { again = true; return; }
      inFlight = true;
      fetch(section.getAttribute("data-overview"), { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) {
          if (r.status === 503) { setTimeout(refresh, 2000); return null; } // still being built
          return r.ok ? r.json() : null;
        })
        .then(function (ov) {
          if (!ov) { return; }
          show(ov);
          lagging = parseInt(ov.sequence || "0", 10) < want;
        })
        .catch(function () {})
        .then(function () {
          inFlight = false;
          if (again) {
            again = false;
            refresh();
          } else if (lagging && retries < 40) {
            retries++;
            setTimeout(refresh, 250);
          } else {
            retries = 0;
          }
        });
    };
    feed(list.getAttribute("data-feed"), "event", function (ev, seq) {
      addEvent(list, ev);
      if ((ev.type || "").indexOf("instance.") === 0) {
        want = Math.max(want, parseInt(seq || "0", 10));
        refresh();
      }
    }, refresh);
  }

  // --- Instances list: live state badges. ---
  function initList() {
    var table = $("table[data-feed]");
    if (!table) { return; }
    var all = $("#select-all");
    if (all) {
      all.hidden = false;
      all.addEventListener("change", function () {
        $$('input[name="id"]', table).forEach(function (c) { c.checked = all.checked; });
      });
    }
    feed(table.getAttribute("data-feed"), "event", function (ev) {
      var d = ev.data || {};
      var row = $('tr[data-id="' + CSS.escape(ev.entityId) + '"]', table);
      if (!row) {
        if (verbOf(ev) === "created") { $("#fleet-changed").hidden = false; }
        return;
      }
      var state = verbOf(ev) === "deleted" ? "deleted" : d.state;
      setBadge($('[data-bind="state"]', row), state);
      setText($('[data-bind="stateDetail"]', row), d.stateDetail, "");
      setText($('[data-bind="agent.status"]', row), (d.agent || {}).status, "—");
      setText($('[data-bind="agent.version"]', row), (d.agent || {}).version, "");
      raise(row, "data-template-version", d.templateVersion);
    });
    // A template changed: its instances provisioned from an older version
    // say so.
    var templates = table.getAttribute("data-template-feed");
    if (templates) {
      feed(templates, "event", function (ev) {
        $$('tr[data-template="' + CSS.escape(ev.entityId) + '"]', table).forEach(function (row) {
          raise(row, "data-template-now", (ev.data || {}).version);
        });
      });
    }
  }

  // raise sets a row's version attribute to v if v is newer (the feed
  // replays older events over the page), and shows the template badge
  // as the two versions now say: "v1, now v2" (vocab.TemplateBehind).
  function raise(row, attr, v) {
    var n = parseInt(v, 10) || 0;
    if (n > (parseInt(row.getAttribute(attr), 10) || 0)) { row.setAttribute(attr, String(n)); }
    var made = parseInt(row.getAttribute("data-template-version"), 10) || 0;
    var now = parseInt(row.getAttribute("data-template-now"), 10) || 0;
    var b = $('[data-bind="template-behind"]', row);
    if (b) {
      b.textContent = (made === 0 || made >= now) ? "" : "v" + made + ", now v" + now;
      b.hidden = !b.textContent;
    }
  }

  function setBadge(e, state) {
    if (e && state) { e.textContent = state; e.className = "badge s-" + state; }
  }
  function setText(e, v, none) {
    if (e) { e.textContent = (v === undefined || v === null || v === "") ? none : String(v); }
  }
  function path(obj, p) {
    return p.split(".").reduce(function (o, k) { return o && o[k]; }, obj);
  }
  function safeURL(u) {
    try {
      var x = new URL(u);
      return (x.protocol === "http:" || x.protocol === "https:") ? x.href : "";
    } catch (e) { return ""; }
  }
  function bytes(n) {
    n = Number(n) || 0;
    if (n < 1024) { return n + " B"; }
    var units = "KMGTPE", i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
    return n.toFixed(1) + " " + units[i] + "iB";
  }

  // applyInstance shows an instance as the API answers it.
  function applyInstance(root, inst) {
    $$('[data-bind="state"]', root).forEach(function (e) { setBadge(e, inst.state); });
    // The lifecycle actions that would change it now (data-from: their states).
    $$("[data-from]", root).forEach(function (e) {
      e.hidden = e.getAttribute("data-from").split(" ").indexOf(inst.state) < 0;
    });
    ["stateDetail", "desiredState", "agentProgress", "addresses.privateIp", "addresses.publicIp", "addresses.privateDns",
      "addresses.publicDns", "vmId", "dataDisk.id", "agent.status", "agent.version"].forEach(function (p) {
      setText($('[data-bind="' + p + '"]', root), path(inst, p), "—");
    });
    setText($('[data-bind="agentProgressMessage"]', root), inst.agentProgressMessage, "");
    // The agent's upgrade is offered until it runs the manager's version.
    var up = $("#upgrade-agent", root);
    if (up && path(inst, "agent.version") === up.getAttribute("data-version")) { up.hidden = true; }
    var link = $('[data-bind="url"]', root), none = $('[data-bind="url-none"]', root);
    var u = safeURL(path(inst, "addresses.url") || "");
    if (link) {
      link.hidden = !u;
      if (u) { link.href = u; link.textContent = u; } else { link.removeAttribute("href"); }
    }
    if (none) { none.hidden = !!u; }
    ["agent.lastHeartbeat", "agent.connectTime"].forEach(function (p) {
      var e = $('[data-bind="' + p + '"]', root);
      if (e) {
        var t = path(inst, p) || "";
        e.setAttribute("datetime", t);
        e.textContent = ago(t);
      }
    });
    var used = Number(path(inst, "dataDisk.usedBytes")) || 0, total = Number(path(inst, "dataDisk.totalBytes")) || 0;
    var meter = $('[data-bind="disk"]', root);
    if (meter) { meter.value = total > 0 ? Math.min(used / total, 1) : 0; }
    setText($('[data-bind="disk-text"]', root), total > 0 ? bytes(used) + " of " + bytes(total) : "", "unknown");
    var steps = $$('[data-bind="steps"] li', root), cur = -1, detail = inst.stateDetail || "";
    steps.forEach(function (li, i) {
      var s = li.getAttribute("data-step");
      if (detail === s || detail.indexOf(s + ":") === 0) { cur = i; }
    });
    var done = 0;
    steps.forEach(function (li, i) {
      var st = "todo";
      if (inst.state === "running") { st = "done"; }
      else if ((inst.state === "provisioning" || inst.state === "failed") && cur >= 0 && i < cur) { st = "done"; }
      else if (inst.state === "provisioning" && i === cur) { st = "current"; }
      else if (inst.state === "failed" && i === cur) { st = "failed"; }
      li.className = st;
      if (st === "current") { li.setAttribute("aria-current", "step"); } else { li.removeAttribute("aria-current"); }
      if (st === "done") { done++; }
    });
    var prog = $('[data-bind="progress"]', root);
    if (prog) { prog.value = done; }
  }

  // --- The instance page: state, timeline, logs. ---
  function initInstance() {
    var head = $("#instance[data-feed]");
    if (!head) { return; }
    var id = head.getAttribute("data-id");
    var main = $("#main");
    var pending = null;
    var refresh = function () {
      pending = null;
      fetch("/api/v1/instances/" + encodeURIComponent(id), { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (inst) { if (inst) { applyInstance(main, inst); } })
        .catch(function () { /* the next event or tick tries again */ });
    };
    var soon = function () { if (!pending) { pending = setTimeout(refresh, 250); } };
    var timeline = $("#timeline");
    feed(head.getAttribute("data-feed"), "event", function (ev) {
      if (addEvent(timeline, ev)) { soon(); }
    }, soon);
    setInterval(refresh, 10000);
    initLogs();
  }

  function initLogs() {
    var box = $("#logs[data-src]");
    if (!box) { return; }
    var list = $("#log-lines"), follow = $("#log-follow"), pauseBtn = $("#log-pause"), search = $("#log-search");
    var status = $("[data-log-status]", box), matches = $("#log-matches");
    var paused = false, held = [], max = 5000;
    pauseBtn.hidden = false;
    search.hidden = false;
    var setStatus = function (text) { status.textContent = text; };
    var query = function () { return search.value.trim().toLowerCase(); };
    var filter = function (li, q) {
      li.hidden = q !== "" && li.textContent.toLowerCase().indexOf(q) < 0;
    };
    var count = function () {
      var q = query();
      if (!q) { matches.textContent = ""; return; }
      var n = $$("li:not([hidden])", list).length;
      matches.textContent = n + (n === 1 ? " line matches" : " lines match");
    };
    var scroll = function () { if (follow.checked) { list.scrollTop = list.scrollHeight; } };
    var show = function (line) {
      var li = el("li", line.stderr ? "stderr" : "");
      var t = el("time", "", (line.time || "").slice(11, 23));
      t.setAttribute("datetime", line.time || "");
      t.setAttribute("title", line.time || "");
      li.appendChild(t);
      li.appendChild(document.createTextNode(" "));
      // As vocab.LogSource shows it.
      li.appendChild(el("span", "src", (line.source || "") + (line.stderr ? "/stderr" : "")));
      li.appendChild(document.createTextNode(" "));
      li.appendChild(el("span", "txt", line.text || ""));
      filter(li, query());
      list.appendChild(li);
      while (list.children.length > max) { list.removeChild(list.firstChild); }
    };
    var opened = false;
    openStream(box.getAttribute("data-src"), {
      open: function () {
        // The follow starts with the newest lines, which take the place of
        // those the page came with. A follow opened again resumes after the
        // last line received (its cursor: Last-Event-ID, or lastEventId in
        // the URL): the lines shown stay.
        if (!opened) {
          list.textContent = "";
          opened = true;
        }
        setStatus(paused ? "paused" : "live");
      },
      error: function () { setStatus("reconnecting…"); },
      events: {
        log: function (m) {
          var line;
          try { line = JSON.parse(m.data); } catch (e) { return; }
          if (paused) {
            held.push(line);
            if (held.length > max) { held.shift(); }
            setStatus("paused: " + held.length + " new line" + (held.length === 1 ? "" : "s"));
            return;
          }
          show(line);
          count();
          scroll();
        }
      }
    });
    pauseBtn.addEventListener("click", function () {
      paused = !paused;
      pauseBtn.textContent = paused ? "Resume" : "Pause";
      pauseBtn.setAttribute("aria-pressed", paused ? "true" : "false");
      if (!paused) {
        held.forEach(show);
        held = [];
        count();
        scroll();
      }
      setStatus(paused ? "paused" : "live");
    });
    search.addEventListener("input", function () {
      var q = query();
      $$("li", list).forEach(function (li) { filter(li, q); });
      count();
    });
    follow.addEventListener("change", scroll);
  }

  // --- Forms. ---
  function initForms() {
    var f = $("form[data-focus]");
    if (f) {
      var target = document.getElementById(f.getAttribute("data-focus"));
      if (target) { target.focus(); }
    }
    // A group that applies to one provider or strategy shows only then
    // (disabled, it is not sent); one with an error always shows.
    $$("fieldset[data-when]").forEach(function (set) {
      var rule = set.getAttribute("data-when").split("="), form = set.form || set.closest("form");
      var ctl = form && form.elements.namedItem(rule[0]);
      if (!ctl || $(".field-error", set)) { return; }
      var update = function () { set.hidden = set.disabled = ctl.value !== rule[1]; };
      ctl.addEventListener("change", update);
      update();
    });
    $$(".setup-action").forEach(function (row) {
      var sel = $("select", row);
      if (!sel) { return; }
      sel.addEventListener("change", function () {
        row.setAttribute("data-type", sel.value);
        $$(".setup-fields", row).forEach(function (g) {
          g.classList.toggle("other", g.getAttribute("data-for") !== sel.value);
        });
      });
    });
  }

  // --- A secret shown once: selected whole on focus, copied with a button
  // (where the browser lets a page write to the clipboard). ---
  function initOnce() {
    $$("input[data-select-all]").forEach(function (el) {
      el.addEventListener("focus", function () { el.select(); });
    });
    $$("button[data-copy]").forEach(function (btn) {
      var src = document.getElementById(btn.getAttribute("data-copy"));
      var status = $("[data-copy-status]");
      if (!src || !navigator.clipboard || !window.isSecureContext) { return; }
      btn.hidden = false;
      btn.addEventListener("click", function () {
        navigator.clipboard.writeText(src.value).then(function () {
          btn.textContent = "Copied";
          if (status) { status.textContent = "Copied to the clipboard."; }
        }, function () {
          src.focus();
          if (status) { status.textContent = "The browser did not allow copying: it is selected, copy it yourself."; }
        });
      });
    });
  }

  // --- A rollout's page: its state, message and instances, live (the
  // rollout's events carry it whole). ---
  var rolloutVersion = 0;
  function applyRollout(ro) {
    // Events and reads may cross: an older version is not shown over a newer.
    if (Number(ro.version) < rolloutVersion) { return; }
    rolloutVersion = Number(ro.version);
    var root = $("#main");
    var head = $("#rollout");
    setBadge($('[data-bind="state"]', head), ro.state);
    $$("[data-from]", head).forEach(function (e) {
      e.hidden = e.getAttribute("data-from").split(" ").indexOf(ro.state) < 0;
    });
    setText($('[data-bind="message"]', root), ro.message, "");
    var counts = {}, order = [];
    (ro.instances || []).forEach(function (e) {
      if (!counts[e.state]) { order.push(e.state); counts[e.state] = 0; }
      counts[e.state]++;
      var row = $('tr[data-instance="' + e.instanceId + '"]', root);
      if (!row) { return; }
      setBadge($('[data-bind="state"]', row), e.state);
      setText($('[data-bind="message"]', row), e.message, "");
      ["askTime", "endTime"].forEach(function (k) {
        var t = $('[data-bind="' + k + '"]', row);
        if (t && e[k]) { t.setAttribute("datetime", e[k]); t.setAttribute("data-ago", ""); t.textContent = ago(e[k]); }
      });
    });
    setText($('[data-bind="progress"]', root), order.map(function (s) { return counts[s] + " " + s; }).join(", "), "");
  }
  function initRollout() {
    var head = $("#rollout[data-feed]");
    if (!head) { return; }
    var id = head.getAttribute("data-id");
    var refresh = function () {
      fetch("/api/v1/rollouts/" + encodeURIComponent(id), { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (ro) { if (ro) { applyRollout(ro); } })
        .catch(function () { /* the next event tries again */ });
    };
    feed(head.getAttribute("data-feed"), "event", function (ev) {
      if (ev.data && ev.data.id === id) { applyRollout(ev.data); }
    }, refresh);
  }

  document.addEventListener("DOMContentLoaded", function () {
    initTheme();
    initForms();
    initOnce();
    initOverview();
    initList();
    initInstance();
    initRollout();
    refreshTimes();
    setInterval(refreshTimes, 15000);
  });
})();
