// The daebus dashboard page. Everything it shows comes from the bus, which anyone with
// access to the server can write to: it is put in the page with textContent only, never
// parsed as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "daebus-dashboard-token";
  const MAX_PARTS_SHOWN = 200;
  let socket = null;
  let retryDelay = 500;
  let nextId = 1;
  let currentCall = null;
  let latest = null;

  const $ = (id) => document.getElementById(id);

  // -- the token: from the URL's fragment (never sent to a server), then kept for the tab
  function takeTokenFromFragment() {
    const match = /(?:^#|&)token=([^&]*)/.exec(window.location.hash);
    if (match) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
  }
  const token = () => sessionStorage.getItem(TOKEN_KEY);

  // -- building the page from data, as text
  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }
  function cell(text, numeric) {
    return el("td", text === null || text === undefined ? "–" : text, numeric ? "n" : "");
  }
  function json(value) {
    try { return JSON.stringify(value, null, 2); } catch (e) { return String(value); }
  }
  function duration(seconds) {
    if (typeof seconds !== "number") return "?";
    if (seconds < 60) return seconds.toFixed(0) + "s";
    if (seconds < 3600) return Math.floor(seconds / 60) + "m" + String(Math.floor(seconds % 60)).padStart(2, "0") + "s";
    return Math.floor(seconds / 3600) + "h" + String(Math.floor((seconds % 3600) / 60)).padStart(2, "0") + "m";
  }
  function total(counts) {
    if (!counts || typeof counts !== "object") return 0;
    return ["requests", "broadcasts", "durable"].reduce(
      (sum, kind) => sum + (typeof counts[kind] === "number" ? counts[kind] : 0), 0);
  }
  function bytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1048576).toFixed(1) + " MiB";
  }
  function chips(label, values, kind, describe) {
    const line = el("div", null, "chips");
    line.append(el("span", label, "label"));
    if (!Array.isArray(values) || values.length === 0) line.append(el("span", "none", "dim"));
    else for (const value of values) line.append(el("span", describe(value), "chip " + kind));
    return line;
  }
  function describeListener(listener) {
    if (!listener || typeof listener !== "object") return String(listener);
    const marks = [];
    if (listener.durable) marks.push("durable");
    if (listener.shared) marks.push("shared");
    if (listener.ordered) marks.push("ordered");
    if (listener.group) marks.push("group " + listener.group);
    return String(listener.channel) + (marks.length ? " (" + marks.join(", ") + ")" : "");
  }
  function describeRoute(route) {
    if (!route || typeof route !== "object") return String(route);
    const methods = Array.isArray(route.methods) ? route.methods.join(",") : "";
    return methods + " " + String(route.path);
  }

  // -- the sections
  function showServices(data) {
    const box = $("services");
    const services = Array.isArray(data.services) ? data.services : [];
    let instances = 0;
    const nodes = [];
    for (const service of services) {
      const list = Array.isArray(service.instances) ? service.instances : [];
      instances += list.length;
      const card = el("div", null, "service");
      card.dataset.service = String(service.service);
      const title = el("h3", service.service);
      title.append(el("span", list.length + (list.length === 1 ? " instance" : " instances"), "count"));
      card.append(title);
      card.append(chips("actions", service.actions, "action", String));
      card.append(chips("listeners", service.listeners, "listener", describeListener));
      card.append(chips("routes", service.routes, "route", describeRoute));
      const table = el("table");
      const head = el("tr");
      for (const name of ["instance", "host", "pid", "state", "uptime", "in flight", "handled", "errors", "last seen"]) {
        head.append(el("th", name, ["pid", "in flight", "handled", "errors"].includes(name) ? "n" : ""));
      }
      const thead = el("thead");
      thead.append(head);
      table.append(thead);
      const body = el("tbody");
      for (const entry of list) {
        const row = el("tr");
        row.append(cell(entry.instance), cell(entry.host), cell(entry.pid, true), cell(entry.state),
          cell(duration(entry.uptime)), cell(entry.in_flight, true), cell(total(entry.handled), true),
          cell(total(entry.errors), true), cell(duration(entry.last_seen) + " ago"));
        body.append(row);
      }
      table.append(body);
      card.append(table);
      nodes.push(card);
    }
    if (nodes.length === 0) nodes.push(el("p", "No service in the registry yet.", "dim"));
    box.replaceChildren(...nodes);
    $("services-count").textContent = services.length + " services, " + instances + " instances";
    const error = $("registry-error");
    error.hidden = !data.registry_error;
    error.textContent = data.registry_error ? "registry: " + data.registry_error : "";
    // The call form offers the services and actions it knows.
    $("service-names").replaceChildren(...services.map((s) => { const o = el("option"); o.value = String(s.service); return o; }));
    showActionNames();
  }
  function showActionNames() {
    if (!latest) return;
    const wanted = $("call-service").value;
    const service = (latest.services || []).find((s) => String(s.service) === wanted);
    const actions = service && Array.isArray(service.actions) ? service.actions : [];
    $("action-names").replaceChildren(...actions.map((a) => { const o = el("option"); o.value = String(a); return o; }));
  }

  function showTraffic(traffic) {
    $("traffic-rate").textContent = traffic.rate;
    $("traffic-messages").textContent = traffic.messages;
    const notes = [];
    if (!traffic.receiving) notes.push("not receiving: the connection is being re-made");
    if (traffic.channels_not_shown) notes.push(traffic.channels_not_shown + " quieter channels not shown");
    if (traffic.undecoded) notes.push(traffic.undecoded + " messages too large to look into");
    if (traffic.not_json) notes.push(traffic.not_json + " not JSON");
    $("traffic-note").textContent = notes.join("; ");
    const rows = (traffic.channels || []).map((c) => {
      const row = el("tr");
      row.dataset.channel = String(c.channel);
      row.append(cell(c.channel), cell(c.kind), cell(c.rate, true), cell(c.messages, true),
        cell(bytes(c.bytes), true), cell(duration(c.idle), true));
      return row;
    });
    $("traffic").replaceChildren(...rows);

    $("pending").textContent = traffic.pending + " waiting for a reply" +
      (traffic.dropped ? ", " + traffic.dropped + " dropped" : "");
    const actions = (traffic.actions || []).map((a) => {
      const row = el("tr");
      row.dataset.action = String(a.service) + " " + String(a.action);
      const errors = cell(a.errors, true);
      if (a.errors) errors.classList.add("error");
      row.append(cell(a.service), cell(a.action), cell(a.calls, true), cell(a.rate, true),
        cell(a.p50, true), cell(a.p90, true), cell(a.p99, true), cell(a.max, true), errors,
        cell(a.last_error || ""));
      return row;
    });
    $("actions").replaceChildren(...actions);
  }

  function showServer(snapshot) {
    const server = snapshot.server || {};
    $("redis").textContent = snapshot.redis;
    const health = $("server-health");
    if (server.healthy === false) {
      health.textContent = "unhealthy: " + (server.error || "?");
      health.className = "error";
    } else if (server.healthy) {
      const parts = ["healthy"];
      if (server.connected_clients != null) parts.push(server.connected_clients + " clients");
      if (server.used_memory_human != null) parts.push(server.used_memory_human + " used");
      health.textContent = parts.join(", ");
      health.className = "dim";
    }
    const rows = [];
    for (const channel of server.durable || []) {
      const groups = Array.isArray(channel.groups) && channel.groups.length ? channel.groups : [null];
      for (const group of groups) {
        const row = el("tr");
        const dead = cell(group ? group.dead_letters : null, true);
        if (group && group.dead_letters) dead.classList.add("error");
        row.append(cell(channel.channel), cell(channel.length, true), cell(group ? group.group : "no group"),
          cell(group ? group.consumers : null, true), cell(group ? group.pending : null, true),
          cell(group ? group.lag : null, true), dead);
        rows.push(row);
      }
    }
    if (rows.length === 0) {
      const row = el("tr");
      const only = el("td", "no durable channel", "dim");
      only.colSpan = 7;
      row.append(only);
      rows.push(row);
    }
    $("durable").replaceChildren(...rows);
    $("dead-total").textContent = (server.dead_letters || 0) + " dead letters";
  }

  function show(snapshot) {
    latest = snapshot;
    showServer(snapshot);
    showServices(snapshot);
    showTraffic(snapshot.traffic || {});
    $("updated").textContent = new Date(snapshot.time * 1000).toLocaleTimeString();
  }

  // -- the WebSocket
  function setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.className = "badge " + (kind || "");
  }
  function send(message) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(message));
    return true;
  }
  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + "/ws");
    setStatus("connecting");
    socket.addEventListener("open", () => {
      if (token()) send({ type: "auth", token: token() });
    });
    socket.addEventListener("message", (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      onMessage(message);
    });
    socket.addEventListener("close", (event) => {
      socket = null;
      if (event.code === 4001) {
        setStatus("token needed", "down");
        $("token-form").hidden = false;
        $("token-error").textContent = token() ? "that token was refused" : "";
        return;
      }
      setStatus("disconnected", "down");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 5000);
    });
  }
  function onMessage(message) {
    switch (message.type) {
      case "auth_required":
        if (!token()) {  // the server waits for it: ask now
          setStatus("token needed", "down");
          $("token-form").hidden = false;
        }
        break;
      case "ready":
        retryDelay = 500;
        $("token-form").hidden = true;
        setStatus("connected", "up");
        break;
      case "snapshot":
        show(message.data);
        break;
      case "part":
        if (currentCall && message.id === currentCall.id) addPart(message.payload);
        break;
      case "reply":
        if (currentCall && message.id === currentCall.id) endCall(message);
        break;
      case "published":
        $("publish-result").textContent = "received by " + message.receivers;
        $("publish-result").className = "";
        break;
      case "error":
        if (currentCall && message.id === currentCall.id) {
          endCall({ ok: false, error: message.error, kind: "refused" });
        } else {
          $("publish-result").textContent = String(message.error);
          $("publish-result").className = "error";
        }
        break;
    }
  }

  // -- calling and publishing
  function parseJson(text, where) {
    try {
      return { value: JSON.parse(text) };
    } catch (e) {
      return { error: where + " is not valid JSON: " + e.message };
    }
  }
  function addPart(payload) {
    currentCall.parts += 1;
    $("call-part-count").textContent = String(currentCall.parts);
    if (currentCall.parts <= MAX_PARTS_SHOWN) $("call-parts").append(el("li", json(payload)));
  }
  function endCall(outcome) {
    const status = $("call-status");
    const reply = $("call-reply");
    if (outcome.ok) {
      reply.textContent = json(outcome.reply);
      reply.classList.remove("error");
      status.textContent = "answered in " + outcome.ms + " ms";
      status.className = "";
    } else {
      reply.textContent = (outcome.kind ? outcome.kind + ": " : "") + outcome.error;
      reply.classList.add("error");
      status.textContent = "failed";
      status.className = "error";
    }
    $("call-button").disabled = false;
    currentCall = null;
  }
  function onCall(event) {
    event.preventDefault();
    const parsed = parseJson($("call-payload").value, "the payload");
    const status = $("call-status");
    if (parsed.error) {
      status.textContent = parsed.error;
      status.className = "error";
      return;
    }
    const id = nextId++;
    const message = {
      type: "call", id: id, service: $("call-service").value, action: $("call-action").value,
      payload: parsed.value, timeout: Number($("call-timeout").value) || 10,
    };
    $("call-parts").replaceChildren();
    $("call-part-count").textContent = "";
    $("call-reply").textContent = "";
    if (!send(message)) {
      status.textContent = "not connected";
      status.className = "error";
      return;
    }
    currentCall = { id: id, parts: 0 };
    $("call-button").disabled = true;
    status.textContent = "waiting…";
    status.className = "dim";
  }
  function onPublish(event) {
    event.preventDefault();
    const parsed = parseJson($("publish-message").value, "the message");
    const result = $("publish-result");
    if (parsed.error) {
      result.textContent = parsed.error;
      result.className = "error";
      return;
    }
    const sent = send({ type: "publish", id: nextId++, channel: $("publish-channel").value, message: parsed.value });
    result.textContent = sent ? "publishing…" : "not connected";
    result.className = sent ? "dim" : "error";
  }
  function onToken(event) {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value);
    $("token-input").value = "";
    $("token-error").textContent = "";
    if (!send({ type: "auth", token: token() }) && !socket) connect();
  }

  document.addEventListener("DOMContentLoaded", () => {
    takeTokenFromFragment();
    $("call-form").addEventListener("submit", onCall);
    $("publish-form").addEventListener("submit", onPublish);
    $("token-form").addEventListener("submit", onToken);
    $("call-service").addEventListener("input", showActionNames);
    // A URL with a token pasted into this tab: no reload, only a change of fragment.
    window.addEventListener("hashchange", () => {
      takeTokenFromFragment();
      if (!socket) connect();
    });
    connect();
  });
})();
