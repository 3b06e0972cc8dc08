"""Two ways to reach ClickHouse behind one small interface.

* :class:`HttpTransport`: a server over HTTP(S). aiochclient holds the connection (its aiohttp
  session) and runs DDL; SELECTs and INSERTs are posted on the same session with TabSeparated
  bodies we build and parse ourselves (aiochclient decodes Nullable(String) with backslashes
  wrongly, and we must see every HTTP status).
* :class:`ChdbTransport`: embedded ClickHouse (chdb) on a data path; its calls block, so they run
  in a worker thread, one at a time.

Heavy imports (aiohttp, aiochclient, chdb) happen only when a transport is created.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog

from cdc_core.errors import PermanentError, TransientError
from cdc_core.secrets import Secret

__all__ = ["ChdbTransport", "ClickHouseError", "HttpTransport", "Transport", "open_transport"]

log = structlog.get_logger()

# Server error codes that mean "this data is bad" (bisect and reject), and codes worth a retry.
DATA_ERROR_CODES = frozenset({6, 25, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 128, 321, 349})
TRANSIENT_CODES = frozenset({3, 159, 164, 202, 203, 209, 210, 241, 242, 252, 394, 425, 999})
_CODE = re.compile(r"Code:\s*(\d+)")


class ClickHouseError(Exception):
    """An error the engine reported (``code`` is ClickHouse's error code when present)."""

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    @classmethod
    def from_text(cls, text: str, status: int | None = None) -> ClickHouseError:
        m = _CODE.search(text)
        return cls(text.strip()[:2000], code=int(m.group(1)) if m else None, status=status)

    @property
    def is_data_error(self) -> bool:
        return self.code in DATA_ERROR_CODES

    @property
    def view_out_of_date(self) -> bool:
        """18.16 refuses an INSERT while a materialized view's query lacks a column its target
        table just gained: a schema change is between ``ALTER`` and the view's replacement (see
        ``TableLayout.plan``). Nothing was lost; it passes once the new view is in place."""
        return self.code == 10 and "pushing to view" in str(self)

    @property
    def is_transient(self) -> bool:
        if self.view_out_of_date:
            return True
        return self.code in TRANSIENT_CODES or (self.status is not None and self.status >= 500 and self.code is None) or self.status == 503

    def classify(self) -> Exception:
        """The core's error type for this failure."""
        return TransientError(str(self)) if self.is_transient else PermanentError(str(self))


class Transport(Protocol):
    description: str
    max_in_flight: int

    async def execute(self, sql: str) -> None: ...

    async def select(self, sql: str) -> bytes:
        """Run a query and return its TabSeparated output."""

    async def insert(self, table: str, columns: list[str], payload: bytes, settings: Mapping[str, str]) -> None: ...

    async def close(self) -> None: ...


class HttpTransport:
    """A ClickHouse server over HTTP(S) (tested against 18.16)."""

    def __init__(
        self,
        url: str,
        *,
        user: Secret | None,
        password: Secret | None,
        ca_file: str | None,
        verify: bool,
        max_in_flight: int,
        request_timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        import aiohttp
        from aiochclient import ChClient

        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentError("clickhouse url must be http(s)://host:port or chdb:///path")
        user_text = user.reveal() if user is not None else urllib.parse.unquote(parts.username or "") or None
        password_text = password.reveal() if password is not None else urllib.parse.unquote(parts.password or "") or None
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))
        self.description = f"{parts.scheme}://{netloc}"  # never the credentials
        self.max_in_flight = max_in_flight
        ssl_ctx: ssl.SSLContext | bool = True
        if parts.scheme == "https":
            ssl_ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
            if not verify:
                ssl_ctx.check_hostname = False
                ssl_ctx.verify_mode = ssl.CERT_NONE
        connector = aiohttp.TCPConnector(limit=max(max_in_flight * 2, 4), ssl=ssl_ctx if parts.scheme == "https" else True)
        timeout = aiohttp.ClientTimeout(total=request_timeout_s, connect=connect_timeout_s)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        self._client = ChClient(self._session, url=self.url, user=user_text, password=password_text, database="default")
        self._headers: dict[str, str] = dict(self._client.headers)
        self._aiohttp = aiohttp

    async def _post(self, params: dict[str, str], data: bytes) -> bytes:
        try:
            async with self._session.post(self.url, params=params, data=data, headers=self._headers) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise ClickHouseError.from_text(body.decode("utf-8", "replace"), status=resp.status)
                # ClickHouse may report an error after a 200 header in the body's tail.
                if b"DB::Exception" in body[-4096:] and b"Code:" in body[-4096:] and params.get("query", "").startswith("INSERT"):
                    raise ClickHouseError.from_text(body[-4096:].decode("utf-8", "replace"), status=resp.status)
                return body
        except ClickHouseError:
            raise
        except (TimeoutError, self._aiohttp.ClientError, OSError) as exc:
            raise TransientError(f"clickhouse {self.description}: {type(exc).__name__}: {exc}") from exc

    async def execute(self, sql: str) -> None:
        from aiochclient import ChClientError

        try:
            await self._client.execute(sql)
        except ChClientError as exc:
            raise ClickHouseError.from_text(str(exc)) from None
        except (TimeoutError, self._aiohttp.ClientError, OSError) as exc:
            raise TransientError(f"clickhouse {self.description}: {type(exc).__name__}: {exc}") from exc

    async def select(self, sql: str) -> bytes:
        return await self._post({}, (sql + " FORMAT TabSeparated").encode("utf-8"))

    async def insert(self, table: str, columns: list[str], payload: bytes, settings: Mapping[str, str]) -> None:
        query = f"INSERT INTO {table} ({', '.join(columns)}) FORMAT TabSeparated"
        await self._post({"query": query, **settings}, payload)

    async def close(self) -> None:
        await self._session.close()


# One chdb session per process (chdb allows one data path per process); shared by sinks.
_CHDB_LOCK = threading.Lock()
_CHDB_SESSIONS: dict[str, Any] = {}


def _chdb_session(path: str) -> Any:
    from chdb import session as chdb_session

    with _CHDB_LOCK:
        if path not in _CHDB_SESSIONS:
            if _CHDB_SESSIONS:
                other = next(iter(_CHDB_SESSIONS))
                raise PermanentError(f"chdb already opened {other} in this process; one embedded data path per process")
            Path(path).mkdir(parents=True, exist_ok=True)
            _CHDB_SESSIONS[path] = chdb_session.Session(path)  # type: ignore[no-untyped-call]
        return _CHDB_SESSIONS[path]


class ChdbTransport:
    """Embedded ClickHouse (chdb). Blocking calls run in a worker thread, serialized."""

    max_in_flight = 1

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = f"chdb://{path}"
        self._lock = asyncio.Lock()
        self._session: Any = None

    async def _run(self, sql: str, fmt: str = "TabSeparated") -> bytes:
        async with self._lock:
            if self._session is None:
                self._session = await asyncio.to_thread(_chdb_session, self.path)
            try:
                result = await asyncio.to_thread(self._session.query, sql, fmt)
            except Exception as exc:  # chdb raises its own ChdbError (a RuntimeError subclass)
                raise ClickHouseError.from_text(str(exc)) from None
            data = result.bytes() if result is not None and hasattr(result, "bytes") else b""
            return bytes(data)

    async def execute(self, sql: str) -> None:
        await self._run(sql)

    async def select(self, sql: str) -> bytes:
        return await self._run(sql)

    async def insert(self, table: str, columns: list[str], payload: bytes, settings: Mapping[str, str]) -> None:
        sets = f" SETTINGS {', '.join(f'{k} = {v!r}' for k, v in settings.items())}" if settings else ""
        query = f"INSERT INTO {table} ({', '.join(columns)}){sets} FORMAT TabSeparated\n"
        await self._run(query + payload.decode("utf-8"))

    async def close(self) -> None:
        return None  # the process-wide session stays open for the next sink on this path


def open_transport(url: str, base_dir: Path, **http: Any) -> Transport:
    if url.startswith("chdb://"):
        raw = url[len("chdb://") :]
        path = Path(raw) if raw.startswith("/") else base_dir / raw
        return ChdbTransport(str(path.resolve()))
    return HttpTransport(url, **http)
