"""Typed keys for what the centre's aiohttp application carries."""

from __future__ import annotations

from aiohttp import web

from centre.config import CentreConfig
from centre.store import Store
from centre.uploads import Uploads

CONFIG = web.AppKey("config", CentreConfig)
STORE = web.AppKey("store", Store)
UPLOADS = web.AppKey("uploads", Uploads)
