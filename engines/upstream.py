"""The HTTP client under `OpenAIEngine`: aiohttp on the network, httpx where a transport is given.

Why two: every request of the gateway is one streamed upstream call, and the client's cost per call is
a large part of the gateway's own. Against a fast stub, a 16-chunk stream costs 0.34-0.38 ms of CPU
with aiohttp and 1.24-1.28 ms with httpx (paired runs on this machine). httpx stays for what only it
offers: a pluggable transport, used by the in-process engine (an ASGI app in this process) and by
unit tests (a mock transport).

Both read SSE lines without a line-length limit, honour a read timeout (the longest silence) and raise
`UpstreamIOError` for anything that goes wrong on the wire, also while the caller reads the stream
inside `post`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp
import httpx


class UpstreamIOError(Exception):
    """The upstream could not be reached, broke off, or went silent; the message names the cause."""


class UpstreamResponse(Protocol):
    status: int

    def lines(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...

    async def close(self) -> None: ...


class Upstream(Protocol):
    def open(self) -> None: ...

    async def close(self) -> None: ...

    async def status(self, path: str, timeout_s: float) -> int | None: ...

    def post(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> contextlib.AbstractAsyncContextManager[UpstreamResponse]: ...


async def split_lines(parts: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Byte chunks -> lines without their line ends, however long a line is (a line split over many
    chunks is joined once, when its end arrives)."""
    partial: list[bytes] = []
    async for part in parts:
        *complete, rest = part.split(b"\n")
        if complete:
            complete[0] = b"".join((*partial, complete[0]))
            partial.clear()
            for line in complete:
                yield line.rstrip(b"\r")
        if rest:
            partial.append(rest)
    if partial:
        yield b"".join(partial).rstrip(b"\r")


class _AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status

    def lines(self) -> AsyncIterator[bytes]:
        return split_lines(self._response.content.iter_any())

    async def read(self) -> bytes:
        return await self._response.read()

    async def close(self) -> None:
        self._response.close()  # closes the connection: how a vLLM or NIM server learns to abort


class AiohttpUpstream:
    def __init__(self, base_url: str, headers: dict[str, str], connect_timeout_s: float, read_timeout_s: float) -> None:
        self.base_url = base_url
        self._headers = headers
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=read_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        """Sessions belong to a running loop: made on first use, and again after `close` (a restart)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                self.base_url, headers=self._headers, timeout=self._timeout, connector=connector
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def status(self, path: str, timeout_s: float) -> int | None:
        self.open()
        assert self._session is not None
        try:
            async with self._session.get(path, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    @contextlib.asynccontextmanager
    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> AsyncIterator[UpstreamResponse]:
        self.open()
        assert self._session is not None
        try:
            async with self._session.post(path, data=body, headers=headers) as response:
                yield _AiohttpResponse(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamIOError(type(exc).__name__) from exc


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code

    def lines(self) -> AsyncIterator[bytes]:
        return split_lines(self._response.aiter_bytes())

    async def read(self) -> bytes:
        return await self._response.aread()

    async def close(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        connect_timeout_s: float,
        read_timeout_s: float,
        transport: httpx.AsyncBaseTransport,
    ) -> None:
        timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=30.0, pool=connect_timeout_s)
        self._options = {"base_url": base_url, "headers": headers, "timeout": timeout, "transport": transport}
        self._client = httpx.AsyncClient(**self._options)

    def open(self) -> None:
        if self._client.is_closed:
            self._client = httpx.AsyncClient(**self._options)

    async def close(self) -> None:
        await self._client.aclose()

    async def status(self, path: str, timeout_s: float) -> int | None:
        try:
            return (await self._client.get(path, timeout=timeout_s)).status_code
        except httpx.HTTPError:
            return None

    @contextlib.asynccontextmanager
    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> AsyncIterator[UpstreamResponse]:
        try:
            async with self._client.stream("POST", path, content=body, headers=headers) as response:
                yield _HttpxResponse(response)
        except httpx.HTTPError as exc:
            raise UpstreamIOError(type(exc).__name__) from exc
