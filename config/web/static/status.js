// The status page: rendered from the embedded snapshot at once, then live over server-sent events.
"use strict";
(() => {
  const { t, el, ago, bytes, rate, lang } = KIT;
  const $ = (id) => document.getElementById(id);

  function render(s) {
    const banner = $("banner");
    const problems = [];
    if (!s.edge || !s.edge.running) problems.push(t("edge_down"));
    if (s.safe_mode) problems.push(t("safe_mode") + ": " + (s.config_errors || []).join("; "));
    banner.hidden = problems.length === 0;
    banner.textContent = problems.join(" · ");

    const rows = $("link-rows");
    rows.replaceChildren();
    for (const ln of s.links || []) {
      const state = ln.stale ? ["stale", t("stale")] : ln.online ? ["up", t("online")] : ["down", t("offline")];
      rows.append(el("tr", { "data-link": ln.name },
        el("td", {}, el("strong", {}, ln.name), el("br"), ln.kind || ""),
        el("td", { class: "state " + state[0] }, state[1]),
        el("td", {}, rate(ln.rate_bps), el("br"), "rtt " + (ln.rtt_s ?? "–") + " s"),
        el("td", {}, ago(ln.last_success_s))));
    }
    if (!(s.links || []).length) rows.append(el("tr", {}, el("td", {}, t("no_links"))));

    for (let i = 0; i < 5; i++) {
      const n = (s.queued || {})["P" + i];
      const cell = $("q-P" + i);
      cell.textContent = n === undefined ? "–" : String(n);
      if (i === 0) cell.classList.toggle("hot", n > 0);
    }

    const b = s.battery;
    $("bat-pct").textContent = b ? Math.round(b.percent) + " %" : "–";
    $("bat-info").textContent = !b ? t("no_battery")
      : b.on_mains ? t("mains")
      : b.hours_left !== null && b.hours_left !== undefined ? t("hours_left", { n: b.hours_left.toFixed(1) }) : "";

    const p = s.position;
    $("gnss-fix").textContent = p ? t("fix", { n: p.satellites }) : t("no_fix");
    $("gnss-info").textContent = p ? p.lat.toFixed(5) + ", " + p.lon.toFixed(5) + " · " + ago(p.age_s)
      : s.gnss ? (lang === "zh" ? s.gnss.zh : s.gnss.en) : "";
    const clock = $("clock");
    clock.textContent = s.clock_ok ? t("clock_ok") : t("clock_bad");
    clock.className = s.clock_ok ? "ok" : "error";

    const list = $("delivered-list");
    list.replaceChildren();
    for (const d of s.delivered || []) list.append(el("li", {}, t("delivered_on", d) + " · " + ago(d.ago_s)));
    if (!(s.delivered || []).length) list.append(el("li", {}, t("no_deliveries")));

    const disk = s.disk;
    $("storage-info").replaceChildren(
      el("div", { class: "big" }, disk ? Math.round(100 * (1 - disk.free / disk.total)) + " %" : "–"),
      el("div", {}, disk ? t("disk_free", { free: bytes(disk.free), total: bytes(disk.total) }) : ""),
      el("div", {}, t("store", { n: bytes(s.store_bytes) })));

    const team = s.team || [];
    $("team-info").replaceChildren(team.length
      ? el("ul", {}, ...team.map((m) => el("li", {}, (m.name || m.node) + " · " + ago(m.age_s))))
      : el("p", {}, t("no_team")));
  }

  render(KIT.data("snapshot") || {});
  const source = new EventSource("/events");
  source.onmessage = (e) => render(JSON.parse(e.data));
})();
