"""The centre's SQLite schema: kits, items, acknowledged ranges, media files, tus uploads,
orders."""

from __future__ import annotations

SCHEMA_VERSION = 1

DDL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kits(
    kit_id INTEGER PRIMARY KEY CHECK (kit_id BETWEEN 1 AND 65535),
    name TEXT NOT NULL,
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1))
);
-- One row per item for ever: kits may be offline for weeks, so no expiring dedup window.
CREATE TABLE IF NOT EXISTS items(
    kit_id INTEGER NOT NULL REFERENCES kits(kit_id),
    seq INTEGER NOT NULL CHECK (seq >= 0),
    uid BLOB NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    clock_ok INTEGER NOT NULL,
    source TEXT NOT NULL,
    text TEXT,
    lat REAL,
    lon REAL,
    alt REAL,
    data TEXT NOT NULL,
    body BLOB NOT NULL,
    received_ms INTEGER NOT NULL,
    link TEXT NOT NULL,
    copies INTEGER NOT NULL DEFAULT 1,
    media_path TEXT,
    PRIMARY KEY (kit_id, seq)
);
-- Complete items as disjoint inclusive seq ranges, merged as items complete.
CREATE TABLE IF NOT EXISTS acked(
    kit_id INTEGER NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    PRIMARY KEY (kit_id, lo)
) WITHOUT ROWID;
-- Complete, verified media files by the item they belong to; may precede the item's record.
CREATE TABLE IF NOT EXISTS media_files(
    kit_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (kit_id, seq)
);
-- tus uploads; `received` counts bytes fsynced, the authority over the partial file's size.
CREATE TABLE IF NOT EXISTS uploads(
    id TEXT PRIMARY KEY,
    length INTEGER NOT NULL,
    received INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL,
    concat TEXT,
    kit_id INTEGER,
    seq INTEGER,
    sha256 TEXT,
    final_path TEXT,
    created_ms INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0
);
-- Orders to a kit (or through it to a team member), sent until the kit's receipt arrives.
CREATE TABLE IF NOT EXISTS orders(
    order_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kit_id INTEGER NOT NULL REFERENCES kits(kit_id),
    target TEXT NOT NULL,
    text TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    last_sent_ms INTEGER,
    receipt_ms INTEGER,
    receipt_link TEXT
);
CREATE INDEX IF NOT EXISTS orders_pending ON orders(kit_id) WHERE receipt_ms IS NULL;
"""
