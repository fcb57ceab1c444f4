"""The HTTP client interface under `OpenAIEngine`: `http1.Http1Upstream` on the network, httpx where a
transport is given.

Why two: every request of the gateway is one upstream call, and the client's cost per call is a large
part of the gateway's own. Against a fast stub, a 16-chunk stream cost 0.34-0.38 ms of CPU with aiohttp
and 1.24-1.28 ms with httpx (paired runs on this machine); the lean HTTP/1.1 client costs less than
aiohttp (see `http1.py`). httpx stays for what only it offers: a pluggable transport, used by the
in-process engine (an ASGI app in this process) and by unit tests (a mock transport).

Both read SSE lines without a line-length limit, honour a read timeout (the longest silence) and raise
`UpstreamIOError` for anything that goes wrong on the wire, also while the caller reads the stream
inside `post`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

import httpx


class UpstreamIOError(Exception):
    """The upstream could not be reached, broke off, or went silent; the message names the cause."""


class UpstreamResponse(Protocol):
    status: int

    def lines(self) -> AsyncIterator[list[bytes]]: ...  # batches: the lines that arrived together

    async def read(self) -> bytes: ...

    async def close(self) -> None: ...


class Upstream(Protocol):
    def open(self) -> None: ...

    async def close(self) -> None: ...

    async def status(self, path: str, timeout_s: float) -> int | None: ...

    def post(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> contextlib.AbstractAsyncContextManager[UpstreamResponse]: ...


async def split_lines(parts: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """Byte chunks -> the lines each chunk completes, without their line ends, as one batch (what arrived
    together: a caller that is behind handles them at once), however long a line is (a line split over
    many chunks is joined once, when its end arrives)."""
    partial: list[bytes] = []
    async for part in parts:
        *complete, rest = part.split(b"\n")
        if complete:
            complete[0] = b"".join((*partial, complete[0]))
            partial.clear()
            yield [line.rstrip(b"\r") for line in complete]
        if rest:
            partial.append(rest)
    if partial:
        yield [b"".join(partial).rstrip(b"\r")]


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code

    def lines(self) -> AsyncIterator[list[bytes]]:
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
