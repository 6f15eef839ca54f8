// The ragkv cache dashboard: asks for the admin key (kept in sessionStorage, sent only as a
// bearer header), polls admin/dashboard/data and draws tables and uPlot charts.
"use strict";

(() => {
  const KEY_STORAGE = "ragkv.adminKey";
  const POLL_MS = 3000;
  const WINDOW_POINTS = 12; // one minute of 5 s points
  const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
  const $ = (selector) => document.querySelector(selector);

  const state = { key: null, timer: null, generation: 0, points: [], maxPoints: 720, charts: {} };

  const apiError = (status, message) => Object.assign(new Error(message), { status });

  // -- formatting ----------------------------------------------------------------------------

  const none = "—";
  const formats = {
    int: (v) => (v == null ? none : Math.round(v).toLocaleString("en-US")),
    pct: (v) => (v == null ? none : `${(v * 100).toFixed(1)}%`),
    num1: (v) => (v == null ? none : Number(v).toFixed(1)),
    num2: (v) => (v == null ? none : Number(v).toFixed(2)),
    text: (v) => (v == null ? none : String(v)),
    bytes: (v) => {
      if (v == null) return none;
      const unit = v >= 1024 ? Math.min(4, Math.floor(Math.log2(v) / 10)) : 0;
      return unit === 0 ? `${v} B` : `${(v / 1024 ** unit).toFixed(1)} ${BYTE_UNITS[unit]}`;
    },
    seconds: (v) => (v == null ? none : `${Number(v).toFixed(2)} s`),
  };

  const pick = (object, path) =>
    path.split(".").reduce((value, key) => (value == null ? undefined : value[key]), object);

  // -- HTTP ----------------------------------------------------------------------------------

  async function api(path, options = {}) {
    const headers = { Authorization: `Bearer ${state.key}` };
    if (options.body) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { ...options, headers, cache: "no-store" });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = (body && body.error && body.error.message) || response.statusText;
      throw apiError(response.status, message);
    }
    return body;
  }

  // -- messages ------------------------------------------------------------------------------

  function show(element, text) {
    element.textContent = text;
    element.hidden = !text;
  }
  const showError = (text) => show($("#error"), text);
  const showNotice = (text) => show($("#notice"), text);

  // -- key and polling -----------------------------------------------------------------------

  function connect(key) {
    sessionStorage.setItem(KEY_STORAGE, key);
    state.key = key;
    state.points = [];
    state.generation += 1;
    $("#key-form").hidden = true;
    $("#connected").hidden = false;
    show($("#status"), "connecting…");
    poll(state.generation);
  }

  function disconnect(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = null;
    state.generation += 1;
    clearTimeout(state.timer);
    clearData();
    $("#key-form").hidden = false;
    $("#connected").hidden = true;
    $("#admin-key").value = "";
    showNotice("");
    showError(message);
  }

  async function poll(generation) {
    clearTimeout(state.timer);
    const last = state.points.length ? state.points[state.points.length - 1].t : null;
    try {
      const data = await api(`dashboard/data${last == null ? "" : `?since=${last}`}`);
      if (generation !== state.generation) return; // the key changed while this was in flight
      showError("");
      render(data);
      show($("#status"), `connected · updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      if (generation !== state.generation) return;
      if (error.status === 401 || error.status === 403) {
        disconnect(`${error.status}: ${error.message}`);
        return;
      }
      showError(`could not load the dashboard data: ${error.message}`);
    }
    state.timer = setTimeout(() => poll(generation), POLL_MS);
  }

  const refresh = () => poll(state.generation);

  // -- rendering -----------------------------------------------------------------------------

  function clearData() {
    $("#content").hidden = true;
    document.querySelectorAll("[data-field]").forEach((element) => {
      element.textContent = "";
    });
    document.querySelectorAll("tbody").forEach((body) => body.replaceChildren());
    $("#tokens-per-s").textContent = "";
    Object.values(state.charts).forEach((chart) => chart.destroy());
    state.charts = {};
    state.points = [];
  }

  function render(data) {
    $("#content").hidden = false;
    document.querySelectorAll("[data-field]").forEach((element) => {
      const format = formats[element.dataset.fmt || "int"];
      element.textContent = format(pick(data, element.dataset.field));
    });
    renderLevels(data.levels);
    renderCategories(data.categories, data.stats.semantic);
    renderTenants(data.tenants);
    renderTiers(data.stats.chunk);
    renderCollections(data.retrieval.largest);
    if (data.series) {
      state.maxPoints = data.series.max_points;
      state.points = state.points.concat(data.series.points).slice(-state.maxPoints);
    }
    $("#tokens-per-s").textContent = formats.num1(lastRate("generated_tokens"));
    renderCharts();
  }

  function cell(value, format = "int", field = null) {
    const td = document.createElement("td");
    td.textContent = formats[format](value);
    if (field) {
      td.dataset.field = field;
      td.dataset.fmt = format;
    }
    return td;
  }

  function button(label, onClick) {
    const element = document.createElement("button");
    element.type = "button";
    element.textContent = label;
    element.addEventListener("click", onClick);
    return element;
  }

  function fillTable(selector, rows) {
    $(selector).replaceChildren(
      ...rows.map((cells) => {
        const tr = document.createElement("tr");
        tr.append(...cells);
        return tr;
      }),
    );
  }

  function renderLevels(levels) {
    const rows = ["semantic", "prefix", "chunk"].map((name) => {
      const level = levels[name];
      if (level == null) return [cell(name, "text"), cell("off", "text")];
      return [
        cell(name, "text"), cell(level.requests), cell(level.looked_up), cell(level.hits),
        cell(level.unit, "text"), cell(level.hit_rate, "pct"), cell(level.tokens_saved),
        cell(level.prefill_s_saved, "seconds"),
      ];
    });
    fillTable("#levels-body", rows);
  }

  function renderCategories(categories, semantic) {
    const counted = semantic ? semantic.categories : {};
    const rows = categories.map((row) => {
      const field = (name) => (counted[row.category] ? `stats.semantic.categories.${row.category}.${name}` : null);
      const threshold = cell(`${row.effective_threshold} / ${row.threshold}`, "text");
      if (row.effective_threshold < row.threshold) threshold.className = "relaxed";
      return [
        cell(row.category, "text"), cell(row.entries || 0, "int", field("entries")),
        cell(row.lookups || 0, "int", field("lookups")), cell(row.hits || 0, "int", field("hits")),
        cell(row.hit_rate || 0, "pct"), cell(row.false_hit_reports || 0, "int", field("false_hit_reports")),
        cell(row.guard_rejections || 0, "int", field("guard_rejections")), threshold,
        cell(row.ttl_s, "text"), cell(row.expirations || 0, "int", field("expirations")),
        cell(row.evictions || 0, "int", field("evictions")),
        actionsCell(
          button("Edit", () => editCategory(row)),
          button("Flush", () => flush({ level: "semantic", category: row.category }, `category '${row.category}'`)),
        ),
      ];
    });
    fillTable("#categories-body", rows);
  }

  function renderTenants(tenants) {
    const rows = tenants.map((row) => [
      cell(row.tenant, "text"), cell(row.entries), cell(row.bytes, "bytes"), cell(row.lookups),
      cell(row.hits), cell(row.hit_rate, "pct"),
      actionsCell(button("Flush", () => flush({ level: "all", tenant: row.tenant }, `tenant '${row.tenant}'`))),
    ]);
    fillTable("#tenants-body", rows);
  }

  function renderTiers(chunk) {
    if (chunk == null) {
      fillTable("#tiers-body", [[cell("chunk cache off", "text")]]);
      return;
    }
    const rows = Object.entries(chunk.tiers).map(([tier, info]) => [
      cell(tier, "text"), cell(info.entries, "int", `stats.chunk.tiers.${tier}.entries`),
      cell(info.bytes, "bytes"), cell(info.max_bytes, "bytes"),
      cell(chunk.counters[`hits_${tier}`] || 0),
      cell(info.evictions, "int", `stats.chunk.tiers.${tier}.evictions`),
    ]);
    fillTable("#tiers-body", rows);
  }

  function renderCollections(collections) {
    fillTable("#collections-body", collections.map((row) => [
      cell(row.tenant, "text"), cell(row.name, "text"), cell(row.documents), cell(row.chunks),
    ]));
  }

  function actionsCell(...buttons) {
    const td = document.createElement("td");
    td.className = "row-actions";
    td.append(...buttons);
    return td;
  }

  // -- time series ---------------------------------------------------------------------------

  // (num_i - num_j) / (den_i - den_j) with j = i - window; null when nothing happened.
  function windowRatio(points, num, den, window = WINDOW_POINTS) {
    return points.map((point, i) => {
      const before = points[Math.max(0, i - window)];
      const total = point[den] - before[den];
      return point[den] == null || total <= 0 ? null : (point[num] - before[num]) / total;
    });
  }

  // per-second rate of a cumulative counter between consecutive points
  function perSecond(points, key) {
    return points.map((point, i) => {
      if (i === 0 || point[key] == null) return null;
      const seconds = point.t - points[i - 1].t;
      return seconds > 0 ? Math.max(0, point[key] - points[i - 1][key]) / seconds : null;
    });
  }

  function lastRate(key) {
    const rates = perSecond(state.points.slice(-2), key);
    return rates.length === 2 ? rates[1] : null;
  }

  const COLORS = ["#2563eb", "#16a34a", "#ea580c", "#9333ea"];

  function chartData(name, points) {
    const column = (key) => points.map((point) => point[key]);
    const pct = (values) => values.map((v) => (v == null ? null : v * 100));
    switch (name) {
      case "hitRate": return [["semantic %", "prefix %", "chunk %"], [
        pct(windowRatio(points, "semantic_hits", "semantic_lookups")),
        pct(windowRatio(points, "cached_tokens", "prompt_tokens")),
        pct(windowRatio(points, "chunk_tokens_reused", "chunk_tokens"))]];
      case "saved": return [["prefix tokens", "chunk tokens"], [
        perSecond(points, "cached_tokens"), perSecond(points, "chunk_tokens_reused")]];
      case "semantic": return [["lookups", "hits", "guard rejections"], [
        perSecond(points, "semantic_lookups"), perSecond(points, "semantic_hits"),
        perSecond(points, "semantic_guard_rejections")]];
      case "pool": return [["used", "free"], [
        points.map((p) => p.pool_pages - p.free_pages), column("free_pages")]];
      case "queue": return [["running", "waiting"], [column("running"), column("waiting")]];
      case "latency": return [["TTFT p50", "TTFT p95", "inter-token p50", "inter-token p95"], [
        column("ttft_p50_ms"), column("ttft_p95_ms"), column("itl_p50_ms"), column("itl_p95_ms")]];
      default: return [["tokens/s"], [perSecond(points, "generated_tokens")]];
    }
  }

  function renderCharts() {
    if (typeof uPlot === "undefined") return;
    const times = state.points.map((point) => point.t);
    document.querySelectorAll("[data-chart]").forEach((figure) => {
      const name = figure.dataset.chart;
      const [labels, columns] = chartData(name, state.points);
      const data = [times, ...columns];
      if (state.charts[name]) {
        state.charts[name].setData(data);
        return;
      }
      const options = {
        width: Math.max(280, figure.clientWidth - 8),
        height: 170,
        legend: { live: false },
        series: [{}, ...labels.map((label, i) => ({ label, stroke: COLORS[i], width: 1.5, spanGaps: false }))],
        axes: [{}, { size: 56 }],
      };
      state.charts[name] = new uPlot(options, data, figure);
    });
  }

  // -- actions -------------------------------------------------------------------------------

  function confirmAction(text) {
    const dialog = $("#confirm");
    $("#confirm-text").textContent = text;
    dialog.returnValue = "";
    dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    });
  }

  async function act(text, run) {
    if (!(await confirmAction(text))) return;
    try {
      showNotice(await run());
    } catch (error) {
      showNotice(`failed: ${error.message}`);
    }
    refresh();
  }

  function flush(body, label) {
    return act(`Flush ${label}? Cached entries are dropped; counters stay.`, async () => {
      const result = await api("cache/flush", { method: "POST", body: JSON.stringify(body) });
      return `flushed ${label}: ${JSON.stringify(result.flushed)}`;
    });
  }

  function editCategory(row) {
    const dialog = $("#edit-category");
    $("#edit-name").textContent = row.category;
    $("#edit-floor").textContent = row.floor;
    $("#edit-threshold").value = row.threshold;
    $("#edit-ttl").value = row.ttl_s == null ? "" : row.ttl_s;
    dialog.returnValue = "";
    dialog.addEventListener("close", async () => {
      if (dialog.returnValue !== "save") return;
      try {
        const table = await api("cache/categories");
        const policy = table.categories[row.category];
        policy.threshold = Number($("#edit-threshold").value);
        const ttl = $("#edit-ttl").value;
        policy.ttl_s = ttl === "" ? null : Number(ttl);
        await api("cache/categories", { method: "PUT", body: JSON.stringify({ categories: table.categories }) });
        showNotice(`category '${row.category}' saved`);
      } catch (error) {
        showNotice(`failed: ${error.message}`);
      }
      refresh();
    }, { once: true });
    dialog.showModal();
  }

  // -- wiring --------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("#key-form").addEventListener("submit", (event) => {
      event.preventDefault(); // never a GET with the key in the URL
      const key = $("#admin-key").value.trim();
      if (key) connect(key);
    });
    $("#forget-key").addEventListener("click", () => disconnect(""));
    document.querySelectorAll("[data-flush]").forEach((element) => {
      const level = element.dataset.flush;
      element.addEventListener("click", () => flush({ level }, level === "all" ? "all levels" : `the ${level} level`));
    });
    $("#feedback-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const entryId = Number($("#feedback-entry").value);
      act(`Mark cache entry ${entryId} as a wrong hit? The entry is dropped.`, async () => {
        const result = await api("cache/feedback", {
          method: "POST",
          body: JSON.stringify({ entry_id: entryId, correct: false }),
        });
        return `entry ${result.entry_id} dropped (category '${result.category}')`;
      });
    });
    window.addEventListener("resize", () => {
      Object.entries(state.charts).forEach(([name, chart]) => {
        const figure = document.querySelector(`[data-chart="${name}"]`);
        chart.setSize({ width: Math.max(280, figure.clientWidth - 8), height: 170 });
      });
    });
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) connect(saved);
  });
})();
