// Shared helpers: the strings in the visitor's language, data blocks, CSRF, safe DOM building.
"use strict";
const KIT = (() => {
  function data(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }
  const strings = data("strings") || {};
  function t(key, vars) {
    let s = strings[key] || key;
    for (const [k, v] of Object.entries(vars || {})) s = s.split("{" + k + "}").join(String(v));
    return s;
  }
  // Every outside value goes in as text, never as HTML.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }
  function csrf() {
    return document.querySelector('meta[name="csrf"]').content;
  }
  function ago(s) {
    if (s === null || s === undefined) return t("never");
    return s < 120 ? t("ago", { n: Math.round(s) }) : t("min_ago", { n: Math.round(s / 60) });
  }
  function bytes(n) {
    if (n === null || n === undefined || n < 0) return "–";
    const u = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }
  function rate(bps) {
    if (bps === null || bps === undefined) return "–";
    return bps >= 1e6 ? (bps / 1e6).toFixed(1) + " MB/s" : bps >= 1e3 ? (bps / 1e3).toFixed(1) + " KB/s" : bps.toFixed(1) + " B/s";
  }
  const lang = document.documentElement.lang.startsWith("zh") ? "zh" : "en";
  return { data, t, el, csrf, ago, bytes, rate, lang };
})();
