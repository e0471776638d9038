"""A real PostgreSQL server for the centre's tests: started once per session (see
:class:`centre.pgserver.PgServer`); each test that wants one makes a fresh database.

Test modules import the fixture by name: ``from pg_helpers import pg_server_fixture as
pg_server_fixture``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from centre.pgserver import PgServer


@pytest.fixture(name="pg_server", scope="session")
def pg_server_fixture() -> Iterator[PgServer]:
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()
