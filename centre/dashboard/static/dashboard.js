// The centre's dashboard: kits and team tracks on the offline map, the live report feed
// with its filters and media, and orders to a kit or a team member with their state.
"use strict";
(() => {
  const { t, el, csrf } = KIT;
  const info = KIT.data("tileinfo");
  const kindNames = KIT.data("kinds");
  const HIDDEN_BY_DEFAULT = ["track", "receipt", "audit"]; // and the kits' own status (kit list)
  const popup = document.getElementById("popup");
  const feed = document.getElementById("feed");
  const filters = document.getElementById("filters");
  const orderForm = document.getElementById("order");
  const live = document.getElementById("live");
  document.getElementById("map-name").textContent = info.name || "";
  const map = SlippyMap(document.getElementById("map"), { info });
  let kits = [], members = [], items = new Map(), next = 0, centred = false;

  const when = (ms) => (ms ? new Date(ms).toLocaleString(KIT.lang === "zh" ? "zh-CN" : "en-GB") : t("never"));
  const ageOf = (ms) => (ms ? KIT.ago((Date.now() - ms) / 1000) : t("never"));
  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (r.status === 401) { location.href = "/dashboard/login"; throw new Error("logged out"); }
    if (!r.ok) throw new Error(await r.text());
    return r.json();
  }
  function show(...children) {
    popup.replaceChildren(el("button", { type: "button", class: "close" }, "×"), ...children);
    popup.querySelector(".close").onclick = () => { popup.hidden = true; };
    popup.hidden = false;
  }

  // -- the map --------------------------------------------------------------------------
  function drawMap() {
    const marks = [];
    for (const k of kits) {
      if (k.lat === null) continue;
      marks.push({ lat: k.lat, lon: k.lon, cls: "kit", label: k.name, id: "kit-" + k.kit_id, title: k.name,
        onClick: () => show(el("h2", {}, k.name + " (#" + k.kit_id + ")"), el("p", {}, t("received") + " " + ageOf(k.last_ms)),
          el("p", {}, Object.keys(k.links).join(", ")), el("p", {}, k.lat.toFixed(5) + ", " + k.lon.toFixed(5)), ...kitStatus(k)) });
    }
    for (const m of members) {
      m.points.slice(0, -1).forEach(([la, lo], i) => marks.push({ lat: la, lon: lo, cls: "trail", id: "trail-" + m.node + "-" + i }));
      const [la, lo, ms] = m.points[m.points.length - 1];
      marks.push({ lat: la, lon: lo, cls: "member", label: m.node, id: "member-" + m.node, title: m.node,
        onClick: () => show(el("h2", {}, t("member") + " " + m.node), el("p", {}, when(ms) + " · " + t("battery") + " " + (m.battery_pct ?? "–") + " %"),
          el("p", {}, m.points.length + " · " + t("kit") + " #" + m.kit_id)) });
    }
    for (const it of items.values()) {
      if (it.lat === null || it.lat === undefined) continue;
      marks.push({ lat: it.lat, lon: it.lon, cls: "report p" + it.priority, id: "report-" + it.id, title: kindNames[it.kind],
        onClick: () => show(card(it)) });
    }
    map.setMarkers(marks);
    if (!centred && kits.some((k) => k.lat !== null)) {
      const k = kits.find((x) => x.lat !== null);
      map.setView(k.lat, k.lon);
      centred = true;
    }
  }

  // -- kits -----------------------------------------------------------------------------
  // What the kit's newest status item said; its age by the kit's clock when that was set.
  const statusTime = (k) => (k.status_clock_ok ? k.status_ms : k.status_received_ms);
  function batteryText(k) {
    const bits = [k.battery_pct === null ? t("battery_unknown") : k.battery_pct + " %"];
    if (k.hours_left !== null) bits.push(t("hours_left", { n: k.hours_left }));
    if (k.mains) bits.push(t("on_mains"));
    if (k.power && k.power !== "normal") bits.push(t("power_" + k.power));
    return bits.join(" · ");
  }
  function backlogText(k) {
    const urgent = t("urgent_backlog", { p0: k.backlog_p0 ?? 0, p1: k.backlog_p1 ?? 0 });
    return String(k.backlog ?? "–") + (k.backlog_p0 || k.backlog_p1 ? " (" + urgent + ")" : "");
  }
  function statusAge(k) {
    return el("small", { class: "status-age", title: when(statusTime(k)) },
      t("status_age", { age: ageOf(statusTime(k)) }) + (k.status_clock_ok ? "" : " " + t("status_clock")));
  }
  function reportedLinks(k) {
    const spans = Object.entries(k.reported_links).map(([l, up]) =>
      el("span", { class: "link reported " + (up ? "up" : "down"), "data-link": l }, l + " " + t(up ? "link_up" : "link_down")));
    if (k.links_more_up || k.links_more_down) spans.push(el("span", { class: "link reported" }, t("links_more", { up: k.links_more_up, down: k.links_more_down })));
    return spans.length ? el("div", { class: "reported-links" }, ...spans) : null;
  }
  function kitStatus(k) {
    if (k.status_ms === null) return [el("p", {}, t("battery") + " " + t("not_reported"))];
    const device = [k.fix === null ? null : t(k.fix ? "gnss_fix" : "gnss_no_fix"), k.disk_pct === null ? null : t("disk_used", { n: k.disk_pct })];
    return [el("p", {}, t("battery") + " " + batteryText(k) + (k.power === "normal" ? " · " + t("power_normal") : "")),
      el("p", {}, t("backlog") + " " + backlogText(k)), reportedLinks(k),
      el("p", {}, device.filter((x) => x !== null).join(" · ")), el("p", {}, statusAge(k))];
  }
  async function loadKits() {
    kits = (await getJSON("/dashboard/api/kits")).kits;
    const rows = kits.map((k) => el("tr", { "data-kit": k.kit_id, class: k.enabled ? "" : "disabled" },
      el("td", {}, k.name, el("small", {}, " #" + k.kit_id)),
      el("td", {}, ageOf(k.last_ms)),
      el("td", {}, ...Object.entries(k.links).map(([l, ms]) => el("span", { class: "link", title: when(ms) }, l + " " + ageOf(ms))), reportedLinks(k)),
      el("td", { class: "battery" }, ...(k.status_ms === null ? [t("not_reported")] : [batteryText(k), el("br"), statusAge(k)])),
      el("td", { class: "backlog" }, k.status_ms === null ? t("not_reported") : backlogText(k)),
      el("td", {}, k.lat === null ? "–" : k.lat.toFixed(4) + ", " + k.lon.toFixed(4))));
    document.getElementById("kit-rows").replaceChildren(...rows);
    const select = orderForm.elements.kit_id, chosen = select.value;
    select.replaceChildren(...kits.filter((k) => k.enabled).map((k) => el("option", { value: k.kit_id }, k.name + " #" + k.kit_id)));
    if (chosen) select.value = chosen;
    if (select.value !== chosen) fillTargets();
    drawMap();
  }
  async function loadTracks() {
    members = (await getJSON("/dashboard/api/tracks")).members;
    fillTargets();
    drawMap();
  }
  // An order to a member goes through the kit that heard the member last: offer only those.
  function fillTargets() {
    const kit = orderForm.elements.kit_id.value;
    document.getElementById("targets").replaceChildren(
      el("option", { value: "^all" }, t("whole_team")),
      ...members.filter((m) => String(m.kit_id) === kit)
        .map((m) => el("option", { value: m.node }, t("member") + " " + m.node)));
  }

  // -- the feed -------------------------------------------------------------------------
  function query() {
    const f = filters.elements, q = new URLSearchParams();
    if (f.kind.value) q.set("kind", f.kind.value);
    if (f.priority.value) q.set("priority", f.priority.value);
    if (f.since.value) q.set("since_ms", String(new Date(f.since.value).getTime()));
    if (f.until.value) q.set("until_ms", String(new Date(f.until.value).getTime()));
    if (f.area.checked) q.set("bbox", map.bounds().map((v) => v.toFixed(6)).join(","));
    return q;
  }
  function matches(it, q) {
    const kind = q.get("kind");
    if (kind ? kind !== it.kind : HIDDEN_BY_DEFAULT.includes(it.kind)) return false;
    if (!kind && it.kind === "sensor" && it.source === "kit:status") return false;
    if (q.has("priority") && Number(q.get("priority")) !== it.priority) return false;
    if (q.has("since_ms") && it.created_ms < Number(q.get("since_ms"))) return false;
    if (q.has("until_ms") && it.created_ms > Number(q.get("until_ms"))) return false;
    if (q.has("bbox")) {
      const [s, w, n, e] = q.get("bbox").split(",").map(Number);
      if (it.lat === null || it.lat < s || it.lat > n || it.lon < w || it.lon > e) return false;
    }
    return true;
  }
  function mediaOf(it) {
    const m = it.media;
    if (!m) return null;
    if (!m.url) return el("p", { class: "hint" }, t("no_file"));
    const link = el("a", { href: m.url, download: "" }, t("download") + " (" + KIT.bytes(m.size) + ")");
    if (m.mime.startsWith("image/")) return el("div", {}, el("a", { href: m.url, target: "_blank" }, el("img", { src: m.url, alt: kindNames[it.kind], loading: "lazy" })));
    if (m.mime.startsWith("audio/")) return el("div", {}, el("audio", { controls: "", preload: "none", src: m.url }), " ", link);
    if (m.mime === "video/mp4" || m.mime === "video/webm") return el("div", {}, el("video", { controls: "", preload: "metadata", src: m.url }), " ", link);
    return el("div", {}, link);
  }
  function card(it) {
    const bits = [];
    if (it.data && it.data.count !== undefined) bits.push("× " + it.data.count);
    if (it.data && it.data.sender) bits.push(String(it.data.sender));
    return el("div", { class: "item-body" },
      el("h3", {}, el("span", { class: "kind" }, kindNames[it.kind] || it.kind), " ", el("span", { class: "prio p" + it.priority }, "P" + it.priority),
        " · " + it.kit_name + " · " + when(it.created_ms)),
      it.text ? el("p", { class: "text" }, it.text) : null,
      bits.length ? el("p", {}, bits.join(" · ")) : null,
      mediaOf(it),
      el("p", { class: "path" }, t("via", { link: it.link }) + " · " + t("received") + " " + when(it.received_ms) + " · " + t("copies", { n: it.copies }) +
        (it.lat !== null ? " · " + it.lat.toFixed(5) + ", " + it.lon.toFixed(5) : "") + " · " + it.source + " ",
        pathButton(it)));
  }
  // -- an item's delivery path: every copy that reached the centre, the first marked ----
  function pathButton(it) {
    const b = el("button", { type: "button", class: "show-path" }, t("path"));
    b.onclick = () => showPath(it).catch((e) => show(el("p", { class: "msg error" }, String(e.message || e))));
    return b;
  }
  function pathOf(d) {
    const rows = d.arrivals.map((a) => el("li", { class: a.first ? "arrival first" : "arrival", "data-link": a.link, "data-copy": a.copy },
      el("strong", {}, a.link_name), a.link_name !== a.link ? el("small", {}, " (" + a.link + ")") : null,
      " · " + when(a.received_ms),
      a.via ? " · " + t("from_addr", { via: a.via }) : null,
      a.relay_kit !== null ? " · " + t("relayed_by", { kit: (a.relay_name || "") + " #" + a.relay_kit }) : null,
      a.first ? el("span", { class: "first-mark" }, t("first_copy")) : null));
    return el("div", { class: "delivery-path" }, el("h3", {}, t("path") + " · " + t("copies", { n: d.copies })),
      el("ol", {}, ...rows), d.unrecorded ? el("p", { class: "hint" }, t("unrecorded", { n: d.unrecorded })) : null);
  }
  async function showPath(it) {
    const d = await getJSON("/dashboard/api/items/" + it.kit_id + "/" + it.seq);
    show(card(d), pathOf(d));
  }
  function row(it) {
    return el("li", { class: "item p" + it.priority + " kind-" + it.kind, "data-id": it.id, "data-kind": it.kind }, card(it));
  }
  function drawFeed() {
    const list = [...items.values()].sort((a, b) => b.feed - a.feed);
    feed.replaceChildren(...(list.length ? list.map(row) : [el("li", { class: "empty" }, t("no_items"))]));
  }
  async function loadFeed() {
    const d = await getJSON("/dashboard/api/items?" + query());
    items = new Map(d.items.map((it) => [it.id, it]));
    next = Math.max(next, d.next);
    drawFeed();
    drawMap();
  }
  filters.addEventListener("change", loadFeed);
  document.getElementById("map").addEventListener("pointerup", () => { if (filters.elements.area.checked) loadFeed(); });

  // -- live -----------------------------------------------------------------------------
  let kitsDue = null;
  function soon(fn) { // many items at once: one reload
    clearTimeout(kitsDue);
    kitsDue = setTimeout(() => { loadKits().catch(() => {}); loadTracks().catch(() => {}); }, 300);
  }
  function listen() {
    const source = new EventSource("/dashboard/events?after=" + next);
    source.onopen = () => { live.textContent = t("live"); live.className = "live up"; };
    source.onmessage = (e) => {
      const d = JSON.parse(e.data);
      next = Math.max(next, d.next);
      const q = query();
      let receipts = false;
      for (const it of d.items) {
        if (it.kind === "receipt") receipts = true;
        if (matches(it, q)) items.set(it.id, it);
      }
      drawFeed();
      soon();
      if (receipts) loadOrders();
    };
    source.onerror = () => {
      live.textContent = t("offline"); live.className = "live down";
      if (source.readyState === EventSource.CLOSED) { setTimeout(listen, 2000); }
    };
  }

  // -- orders ---------------------------------------------------------------------------
  // The mesh's routing error, in words where we have them, the code kept for the radio operator.
  function meshReason(code) {
    const words = t("mesh_" + code);
    return words === "mesh_" + code ? code : words + "（" + code + "）";
  }
  function orderState(o) {
    const parts = [];
    if (o.state === "queued") parts.push(t("state_queued"));
    if (o.state === "sent") parts.push(t("state_sent", { n: o.sent }));
    if (o.receipt_ms) parts.push(t("state_delivered", { link: o.receipt_link || "?" }));
    if (o.delivered_ms) parts.push(t("handheld", { who: o.delivered_to }) + " · " + when(o.delivered_ms));
    else if (o.delivery_error) parts.push(t("handheld_failed", { why: meshReason(o.delivery_error) }));
    return parts.join(" · ");
  }
  async function loadOrders() {
    const kit = orderForm.elements.kit_id.value;
    if (!kit) return;
    const d = await getJSON("/v1/orders?kit_id=" + encodeURIComponent(kit));
    document.getElementById("order-rows").replaceChildren(...d.orders.map((o) =>
      el("tr", { "data-order": o.order_id, "data-state": o.state },
        el("td", {}, "#" + o.order_id), el("td", {}, o.target || t("the_kit")), el("td", {}, o.text),
        el("td", { class: "state" }, orderState(o)))));
  }
  orderForm.elements.kit_id.addEventListener("change", () => { fillTargets(); loadOrders(); });
  orderForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = orderForm.elements, msg = document.getElementById("order-msg");
    const body = { kit_id: Number(f.kit_id.value), target: f.target.value.trim(), text: f.text.value };
    const r = await fetch("/v1/orders", { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() }, body: JSON.stringify(body) });
    if (r.status === 201) {
      msg.textContent = t("order_sent", { n: (await r.json()).order_id });
      msg.className = "msg ok";
      f.text.value = "";
    } else {
      msg.textContent = await r.text();
      msg.className = "msg error";
    }
    loadOrders();
  });
  document.getElementById("logout").addEventListener("submit", async (e) => {
    e.preventDefault();
    await fetch("/dashboard/logout", { method: "POST", headers: { "X-CSRF-Token": csrf() } });
    location.href = "/dashboard/login";
  });

  Promise.all([loadKits(), loadTracks(), loadFeed()]).then(() => {
    listen();
    loadOrders();
    document.body.dataset.ready = "1";
  });
  setInterval(() => { loadKits().catch(() => {}); loadOrders().catch(() => {}); }, 10000);
})();
