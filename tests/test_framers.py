"""Framers: any chunking of a stream yields the same messages; limits hold."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aem_loop import framers


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def _frame_all(framer, chunks):
    msgs = []
    for c in chunks:
        msgs += framer.feed(c)
    msgs += framer.eof()
    return msgs


lines_msgs = st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=20)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@settings(max_examples=200, deadline=None)
@given(lines_msgs, cuts)
def test_lines_any_chunking(msgs, cut):
    data = b"".join(m + b"\n" for m in msgs)
    assert _frame_all(framers.Lines(), _chunks(data, cut)) == msgs


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\r\n" not in b and not
                                              b.endswith(b"\r")), max_size=15), cuts)
def test_lines_multibyte_separator_any_chunking(msgs, cut):
    data = b"".join(m + b"\r\n" for m in msgs)
    assert _frame_all(framers.Lines(b"\r\n", max_len=30), _chunks(data, cut)) == msgs


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=15), cuts, st.sampled_from([1, 2, 4, 8]),
       st.sampled_from(["big", "little"]))
def test_length_prefixed_any_chunking(msgs, cut, size, order):
    data = b"".join(len(m).to_bytes(size, order) + m for m in msgs)
    f = framers.LengthPrefixed(size, order, max_len=300)
    assert _frame_all(f, _chunks(data, cut)) == msgs


paths = st.text(alphabet="abcdefghij/._-", min_size=0, max_size=20).map(lambda s: "/" + s)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(paths, st.binary(max_size=50)), max_size=8), cuts)
def test_http_head_any_chunking(reqs, cut):
    data = b"".join(
        f"POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(b)}\r\n\r\n".encode() + b
        for p, b in reqs
    )
    got = _frame_all(framers.HTTPHead(max_body=100), _chunks(data, cut))
    assert [(r.method, r.target, r.body) for r in got] == [("POST", p, b) for p, b in reqs]


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000), cuts)
def test_raw_keeps_every_byte(data, cut):
    assert b"".join(_frame_all(framers.Raw(), _chunks(data, cut))) == data


def test_lines_over_max_len_is_an_error_in_one_chunk_and_in_many():
    with pytest.raises(framers.FrameTooLarge) as e:
        framers.Lines(max_len=10).feed(b"x" * 11 + b"\n")
    assert e.value.limit == 10
    f = framers.Lines(max_len=10)
    f.feed(b"x" * 10)
    with pytest.raises(framers.FrameTooLarge):
        f.feed(b"x")  # never buffers more than the limit


def test_length_prefixed_refuses_a_large_declared_length_before_buffering():
    f = framers.LengthPrefixed(4, max_len=100)
    with pytest.raises(framers.FrameTooLarge) as e:
        f.feed((10**9).to_bytes(4, "big"))
    assert e.value.size == 10**9
    assert f.buffered() == 4


def test_incomplete_message_at_eof():
    f = framers.LengthPrefixed(2)
    assert f.feed(b"\x00\x05abc") == []
    with pytest.raises(framers.IncompleteMessage) as e:
        f.eof()
    assert e.value.partial == b"\x00\x05abc"
    f2 = framers.Lines(require_final_sep=True)
    f2.feed(b"tail")
    with pytest.raises(framers.IncompleteMessage):
        f2.eof()
    f3 = framers.Lines()
    f3.feed(b"tail")
    assert f3.eof() == [b"tail"]  # as StreamReader.readline


@pytest.mark.parametrize(
    ("raw", "error", "what"),
    [
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 200 + b"\r\n\r\n", framers.FrameTooLarge, "head"),
        (b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", framers.FrameTooLarge, "body"),
        (b"GET /\r\n\r\n", framers.BadMessage, None),
        (b"GET / HTTP/2.0\r\n\r\n", framers.BadMessage, None),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", framers.BadMessage, None),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
         framers.BadMessage, None),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", framers.BadMessage, None),
    ],
)
def test_http_head_errors(raw, error, what):
    with pytest.raises(error) as e:
        framers.HTTPHead(max_len=128, max_body=10).feed(raw)
    if what:
        assert e.value.what == what


def test_http_head_parses_a_request():
    f = framers.HTTPHead()
    (req,) = f.feed(b"\r\nGET /a/b?x=1 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
    assert (req.method, req.path, req.version) == ("GET", "/a/b", "HTTP/1.0")
    assert req.header("HOST") == "h" and req.keep_alive


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: framers.Lines(b""), "sep"),
        (lambda: framers.Lines(max_len=0), "max_len"),
        (lambda: framers.Lines(max_len="9"), "max_len"),
        (lambda: framers.LengthPrefixed(3), "size"),
        (lambda: framers.LengthPrefixed(4, "middle"), "byteorder"),
        (lambda: framers.HTTPHead(max_body=-1), "max_body"),
    ],
)
def test_bad_framer_options_are_named(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()
