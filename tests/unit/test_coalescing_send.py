"""Response body parts sent while the app does not wait go out in one write; parts sent after a wait
go out on their own; order, the final message and errors are kept."""

import asyncio

import pytest

from gateway.http.middleware import CoalescingSend, CoalescingTransport


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.messages: list[dict] = []
        self.fail = fail

    async def __call__(self, message: dict) -> None:
        if self.fail and message["type"] == "http.response.body":
            raise ConnectionResetError("client gone")
        await asyncio.sleep(0)  # a real transport may yield here
        self.messages.append(message)


def body(data: bytes, more: bool = True) -> dict:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def test_parts_ready_together_are_written_together():
    sink = Recorder()
    send = CoalescingSend(sink)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for part in (b"a", b"b", b"c"):  # an engine delivered three events at once
        await send(body(part))
    await asyncio.sleep(0.01)  # the app waits for the engine: what it had goes out now
    assert [m.get("body") for m in sink.messages] == [None, b"abc"]
    await send(body(b"d"))
    await send(body(b"", more=False))  # the end right after "d": both in the last message
    assert [m.get("body") for m in sink.messages] == [None, b"abc", b"d"]
    assert sink.messages[-1]["more_body"] is False


async def test_past_the_limit_the_app_waits_for_the_write():
    sink = Recorder()
    send = CoalescingSend(sink, limit=4)
    for part in (b"aa", b"bb", b"cc"):
        await send(body(part))
    assert b"".join(m["body"] for m in sink.messages) == b"aabb"  # written before the third part was taken
    await send(body(b"", more=False))
    assert b"".join(m["body"] for m in sink.messages) == b"aabbcc"


async def test_a_failed_write_is_raised_to_the_app():
    send = CoalescingSend(Recorder(fail=True))
    await send(body(b"a"))
    with pytest.raises(ConnectionResetError):
        await send(body(b"", more=False))


async def test_the_start_goes_out_with_the_first_body_part():
    sink = Recorder()
    send = CoalescingSend(sink)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    assert sink.messages == []  # held: uvicorn would write the head on its own
    await send(body(b'{"ok": true}', more=False))
    assert [m["type"] for m in sink.messages] == ["http.response.start", "http.response.body"]


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, parts) -> None:
        self.writes.append(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str):
        return ("127.0.0.1", 8000) if name == "sockname" else None


async def test_what_is_written_in_one_turn_goes_out_in_one_write():
    transport = Transport()
    coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
    coalescing.write(b"HTTP/1.1 200 OK\r\n\r\n")  # uvicorn: the head, then the body
    coalescing.write(b"{}")
    assert transport.writes == []
    await asyncio.sleep(0)
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    coalescing.write(b"more")
    coalescing.close()  # what is pending goes out before the connection closes
    assert transport.writes[-1] == b"more" and transport.closed
    assert coalescing.get_extra_info("sockname") == ("127.0.0.1", 8000)  # the rest is the transport's own
