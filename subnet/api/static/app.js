// mesh-node dashboard: polls /subnet/* and streams chat from /v1/chat/completions.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const UNIT = 1e18;
  const POLL_MS = 2000;
  let peerLabels = {};
  let roles = {};  // node id -> role, for the rewards table
  const REWARD_EPOCHS = 50;

  function short(s, n) { s = String(s || ""); return s.length > n ? s.slice(0, n) + "…" : s; }
  function tensor(amount) { return (Number(amount) / UNIT).toLocaleString(undefined, { maximumFractionDigits: 3 }); }
  function ago(ts) {
    if (ts == null) return { text: "never", cls: "muted" };
    const s = Math.max(0, Date.now() / 1000 - ts);
    const text = s < 5 ? "just now" : s < 120 ? `${Math.round(s)} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago`
      : `${Math.round(s / 3600)} h ago`;
    return { text, title: new Date(ts * 1000).toLocaleString() };
  }
  function tokens(n) { return n >= 10000 ? `${Math.round(n / 1000)}k` : String(n); }
  function repChange(c) {
    const d = c.after - c.before;
    return `${c.before.toFixed(2)} → ${c.after.toFixed(2)} (${d >= 0 ? "+" : "−"}${Math.abs(d).toFixed(2)})`;
  }
  function reason(c) { return c.detail && c.detail !== c.reason ? `${c.reason}: ${c.detail}` : c.reason; }

  function row(tbody, cells) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      if (c && typeof c === "object") {
        td.textContent = c.text;
        if (c.cls) td.className = c.cls;
        if (c.title) td.title = c.title;
      } else td.textContent = c == null ? "" : String(c);
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }

  async function getJSON(path) {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) {
      let msg = `${r.status}`;
      try { msg = (await r.json()).error.message; } catch (_) { /* not JSON */ }
      const err = new Error(msg);
      err.status = r.status;
      throw err;
    }
    return r.json();
  }

  // ---- subnet views ---------------------------------------------------------------------
  const history = { scores: {}, rewards: {} };

  async function refresh() {
    let summary;
    try {
      summary = await getJSON("/subnet/summary");
    } catch (e) {
      $("subnet-summary").textContent = e.status === 404 ? "no subnet view (API started without --chain)"
        : `subnet state unavailable: ${e.message}`;
      return;
    }
    $("subnet-summary").textContent =
      `subnet ${summary.subnet_id} “${summary.name}” (${summary.state}) · epoch ${summary.epoch} · ` +
      `block ${summary.block} · ${Math.round(summary.progress * 100)}% of epoch`;
    $("epoch-progress").style.width = `${(summary.progress * 100).toFixed(1)}%`;
    const [nodes, coverage, epochs, rewards, reputation] = await Promise.all([
      getJSON("/subnet/nodes"), getJSON("/subnet/coverage"), getJSON("/subnet/epochs?limit=50"),
      getJSON(`/subnet/rewards?limit=${REWARD_EPOCHS}`), getJSON("/subnet/reputation?limit=50").catch(() => ({ data: [] })),
    ]);
    renderNodes(nodes.data);
    Plots.coverageGrid($("coverage"), coverage.data, (peer) => peerLabels[peer] || short(peer, 14));
    renderEpochs(epochs.data);
    renderRewards(nodes.data, rewards.data);
    renderReputation(reputation.data);
    renderPlots(nodes.data, epochs.data, rewards.data);
  }

  function renderNodes(nodes) {
    peerLabels = {};
    roles = {};
    for (const n of nodes) {
      peerLabels[n.peer_id] = `#${n.node_id} ${short(n.peer_id.slice(-6), 6)}`;
      roles[n.node_id] = n.role;
    }
    const tbody = $("nodes-table").querySelector("tbody");
    tbody.textContent = "";
    if (!nodes.length) { row(tbody, [{ text: "no nodes registered", cls: "empty" }]); return; }
    for (const n of nodes) {
      const spans = n.blocks.map((b) => `${b.model}[${b.start}:${b.end})`).join(", ");
      const c = n.reputation_change;
      const rep = c ? `${n.reputation.toFixed(2)} ${c.after < c.before ? "↓" : "↑"}` : n.reputation.toFixed(2);
      const cache = n.cache_tokens_total == null ? "—" : `${tokens(n.cache_tokens_free)} / ${tokens(n.cache_tokens_total)}`;
      row(tbody, [
        `#${n.node_id}`, { text: n.role, cls: `role role-${n.role}` }, { text: n.state, cls: `state state-${n.state}` },
        { text: short(n.peer_id, 12), cls: "mono", title: n.peer_id }, n.node_class, tensor(n.stake),
        { text: rep, cls: c && c.after < c.before ? "rep-down" : "", title: c ? repChange(c) : "" },
        c ? { text: `epoch ${c.epoch}: ${c.detail || c.reason}`, cls: "why", title: `${repChange(c)} · ${reason(c)}` }
          : { text: "—", cls: "why" },
        spans || "—", n.throughput == null ? "—" : n.throughput.toFixed(1), { text: cache, title: "tokens free / total" },
        ago(n.last_seen), n.last_score == null ? "—" : n.last_score.toFixed(4),
      ]);
    }
  }

  function renderRewards(nodes, rewards) {
    const per = {};
    for (const n of nodes) per[n.node_id] = { emission: 0, validator: 0, slash: 0, last: null };
    for (const r of rewards) {
      const p = (per[r.node_id] ||= { emission: 0, validator: 0, slash: 0, last: null });
      const amount = Number(r.amount);
      if (amount < 0 || r.kind === "slash") p.slash += amount;
      else if (r.kind === "validator") p.validator += amount;
      else p.emission += amount;
      if (amount > 0 && (p.last == null || r.epoch > p.last)) p.last = r.epoch;
    }
    const epochs = new Set(rewards.map((r) => r.epoch)).size;
    $("rewards-caption").textContent = `TENSOR paid in the last ${REWARD_EPOCHS} epochs (${epochs} with payouts)`;
    const tbody = $("rewards-table").querySelector("tbody");
    tbody.textContent = "";
    const ids = Object.keys(per).map(Number).sort((a, b) => a - b);
    if (!ids.length) { row(tbody, [{ text: "no rewards paid yet", cls: "empty" }]); return; }
    for (const id of ids) {
      const p = per[id];
      row(tbody, [
        `#${id}`, roles[id] || "removed", tensor(p.emission), tensor(p.validator),
        { text: p.slash ? tensor(p.slash) : "0", cls: p.slash ? "rep-down" : "" },
        { text: tensor(p.emission + p.validator + p.slash), cls: "total" }, p.last == null ? "—" : p.last,
      ]);
    }
  }

  function renderReputation(changes) {
    const tbody = $("reputation-table").querySelector("tbody");
    tbody.textContent = "";
    if (!changes.length) { row(tbody, [{ text: "no reputation changes yet", cls: "empty" }]); return; }
    for (const c of changes.slice(0, 12)) {
      row(tbody, [
        c.epoch == null ? "—" : c.epoch, `#${c.node_id}`,
        { text: repChange(c), cls: c.after < c.before ? "rep-down" : "rep-up" },
        { text: reason(c), cls: "why" },
      ]);
    }
  }

  function renderEpochs(epochs) {
    Plots.timeline($("epoch-timeline"), epochs);
    const tbody = $("epochs-table").querySelector("tbody");
    tbody.textContent = "";
    for (const e of epochs.slice(0, 12)) {
      const proposal = e.proposal ? e.proposal.map((p) => `#${p.node_id}:${p.score.toFixed(3)}`).join(" ") : "—";
      const ratio = e.attestation_ratio == null ? "" : ` (${Math.round(e.attestation_ratio * 100)}%)`;
      row(tbody, [
        e.epoch, { text: e.outcome, cls: `outcome-${e.outcome}` },
        e.elected_validator == null ? "—" : `#${e.elected_validator}`,
        { text: short(e.probe_seed, 12), cls: "mono", title: e.probe_seed || "" },
        e.commits.length, e.reveals.length, proposal,
        e.attestations.map((a) => `#${a}`).join(" ") + ratio,
      ]);
    }
  }

  function renderPlots(nodes, epochs, rewards) {
    for (const e of epochs) {
      if (!e.proposal) continue;
      for (const p of e.proposal) (history.scores[p.node_id] ||= {})[e.epoch] = p.score;
    }
    for (const r of rewards) ((history.rewards[r.node_id] ||= {})[r.epoch] ||= {})[r.kind] = Number(r.amount);
    const ids = [...new Set([...nodes.map((n) => n.node_id), ...Object.keys(history.scores).map(Number)])]
      .sort((a, b) => a - b);
    const scoreSeries = ids.map((id) => ({
      name: `#${id}`,
      points: Object.entries(history.scores[id] || {}).map(([e, s]) => [Number(e), s]).sort((a, b) => a[0] - b[0]),
    }));
    Plots.lineChart($("scores-plot"), scoreSeries, { yMin: 0, yMax: 1, emptyText: "no proposals yet" });
    const rewardSeries = ids.map((id) => {
      const byEpoch = history.rewards[id] || {};
      let sum = 0;
      const pts = Object.keys(byEpoch).map(Number).sort((a, b) => a - b).map((e) => {
        sum += Object.values(byEpoch[e]).reduce((a, b) => a + b, 0) / UNIT;
        return [e, sum];
      });
      return { name: `#${id}`, points: pts };
    });
    Plots.lineChart($("rewards-plot"), rewardSeries, { emptyText: "no rewards paid yet" });
  }

  async function poll() {
    try { await refresh(); } catch (e) { $("subnet-summary").textContent = `error: ${e.message}`; }
    setTimeout(poll, POLL_MS);
  }

  // ---- chat --------------------------------------------------------------------------------
  const conversation = [];
  let controller = null;

  function addMessage(role, text) {
    const div = document.createElement("div");
    div.className = `msg ${role}`;
    const r = document.createElement("span");
    r.className = "role";
    r.textContent = role === "assistant" ? "assistant:" : role === "user" ? "you:" : "error:";
    const body = document.createElement("span");
    body.className = "content";
    body.textContent = text;
    div.append(r, body);
    $("chat-log").appendChild(div);
    $("chat-log").scrollTop = $("chat-log").scrollHeight;
    return body;
  }

  async function loadModels() {
    const key = $("chat-key").value;
    try {
      const r = await fetch("/v1/models", { headers: key ? { Authorization: `Bearer ${key}` } : {} });
      const data = await r.json();
      if (!r.ok) throw new Error(data.error ? data.error.message : r.status);
      const sel = $("chat-model");
      const prev = sel.value;
      sel.textContent = "";
      for (const m of data.data) {
        const o = document.createElement("option");
        o.value = o.textContent = m.id;
        sel.appendChild(o);
      }
      if (prev) sel.value = prev;
      // Only the model list's own messages are replaced: a periodic refresh must not wipe the
      // status of a chat turn ("N tokens in ...") that finished just before it.
      const status = $("chat-status"), none = "no model is servable right now";
      if (!data.data.length) status.textContent = none;
      else if (status.textContent === none || status.textContent.startsWith("models: ")) status.textContent = "";
    } catch (e) {
      $("chat-status").textContent = `models: ${e.message}`;
    }
  }

  // Parse an OpenAI SSE stream: "data: {...}\n\n" events, ending with "data: [DONE]".
  async function* sseEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, i);
        buf = buf.slice(i + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    }
  }

  async function send(text) {
    const model = $("chat-model").value;
    if (!model) { addMessage("error", "no model selected"); return; }
    conversation.push({ role: "user", content: text });
    addMessage("user", text);
    const out = addMessage("assistant", "");
    out.parentElement.classList.add("streaming");
    controller = new AbortController();
    $("chat-send").disabled = true;
    $("chat-stop").disabled = false;
    $("chat-status").textContent = "generating…";
    const key = $("chat-key").value;
    const started = performance.now();
    let tokens = 0, answer = "", finish = null;
    try {
      const r = await fetch("/v1/chat/completions", {
        method: "POST",
        signal: controller.signal,
        headers: Object.assign({ "Content-Type": "application/json" }, key ? { Authorization: `Bearer ${key}` } : {}),
        body: JSON.stringify({
          model, messages: conversation, stream: true, stream_options: { include_usage: true },
          max_tokens: Number($("chat-max-tokens").value) || 64,
          temperature: Number($("chat-temperature").value),
        }),
      });
      if (!r.ok) {
        const err = await r.json().catch(() => ({}));
        throw new Error(err.error ? `${r.status}: ${err.error.message}` : `HTTP ${r.status}`);
      }
      for await (const chunk of sseEvents(r)) {
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        for (const c of chunk.choices || []) {
          if (c.delta && c.delta.content) { answer += c.delta.content; out.textContent = answer; }
          if (c.finish_reason) finish = c.finish_reason;
        }
        $("chat-log").scrollTop = $("chat-log").scrollHeight;
      }
      conversation.push({ role: "assistant", content: answer });
      const secs = (performance.now() - started) / 1000;
      $("chat-status").textContent = `${tokens} tokens in ${secs.toFixed(1)} s (finish: ${finish})`;
      out.parentElement.classList.add("done");
    } catch (e) {
      if (e.name === "AbortError") {
        conversation.push({ role: "assistant", content: answer });
        $("chat-status").textContent = "stopped";
      } else {
        conversation.pop();  // the failed turn is not part of the history
        addMessage("error", e.message);
        $("chat-status").textContent = "";
      }
    } finally {
      out.parentElement.classList.remove("streaming");
      controller = null;
      $("chat-send").disabled = false;
      $("chat-stop").disabled = true;
    }
  }

  $("chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text || controller) return;
    $("chat-input").value = "";
    send(text);
  });
  $("chat-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("chat-form").requestSubmit(); }
  });
  $("chat-stop").addEventListener("click", () => controller && controller.abort());
  $("chat-clear").addEventListener("click", () => {
    conversation.length = 0;
    $("chat-log").textContent = "";
    $("chat-status").textContent = "conversation cleared";
  });
  $("chat-key").value = localStorage.getItem("mesh-node-api-key") || "";
  $("chat-key").addEventListener("change", () => {
    localStorage.setItem("mesh-node-api-key", $("chat-key").value);
    loadModels();
  });

  loadModels();
  setInterval(loadModels, 15000);
  poll();
})();
