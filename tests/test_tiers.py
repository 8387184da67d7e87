"""The selector backend's urgent tiers (backends/tiers.py): one epoll set per
level above the default, holding the fds read or written at that level.
These tests look at what the kernel reports from the sets, on real sockets."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from aem_loop.backends.tiers import UrgentTiers

HIGH, JOB = 60, 100


def bit(*levels: int) -> int:
    b = 0
    for lv in levels:
        b |= 1 << lv
    return b


@pytest.fixture
def pair() -> Iterator[tuple[UrgentTiers, socket.socket, socket.socket]]:
    tiers = UrgentTiers()
    a, b = socket.socketpair()
    yield tiers, a, b
    tiers.close()
    a.close()
    b.close()


def test_a_reader_joins_its_level_and_leaves_every_set(pair):
    tiers, a, b = pair
    fd = a.fileno()
    tiers.update(fd, JOB, None)
    assert fd in tiers and tiers.fds() == [fd]
    assert tiers.ready(bit(JOB)) == []  # nothing to read yet
    b.send(b"x")
    assert tiers.ready(bit(JOB)) == [(fd, select.EPOLLIN)]
    assert tiers.ready(bit(HIGH)) == []  # another level's set does not hold it
    tiers.update(fd, None, None)
    assert fd not in tiers and tiers.fds() == []
    assert tiers.ready(bit(JOB)) == []  # still readable, but in no set
    tiers.update(fd, None, None)  # leaving twice is nothing
    tiers.update(fd, 50, None)  # the default level has no set
    assert fd not in tiers


def test_a_writer_beside_the_reader_and_levels_that_move(pair):
    tiers, a, b = pair
    fd = a.fileno()
    tiers.update(fd, HIGH, None)
    tiers.update(fd, HIGH, JOB)  # a writer at another level: both sets
    assert tiers.ready(bit(JOB)) == [(fd, select.EPOLLOUT)]  # writable at once
    assert tiers.ready(bit(HIGH)) == []
    tiers.update(fd, HIGH, HIGH)  # the writer moves to the reader's level
    assert tiers.ready(bit(JOB)) == []
    b.send(b"x")
    assert tiers.ready(bit(HIGH)) == [(fd, select.EPOLLIN | select.EPOLLOUT)]
    tiers.update(fd, HIGH, None)  # the writer goes: the reader stays
    assert tiers.ready(bit(HIGH)) == [(fd, select.EPOLLIN)]
    tiers.update(fd, None, JOB)  # only a writer, above
    assert tiers.ready(bit(HIGH, JOB)) == [(fd, select.EPOLLOUT)]
    tiers.update(fd, None, 40)  # only a writer, below the default: in no set
    assert fd not in tiers and tiers.ready(bit(HIGH, JOB)) == []


def test_an_fd_number_closed_in_a_set_and_reused(pair):
    """A socket closed while still in a set (epoll drops it with the file)
    and a new one given the same number, whose registration differs: the
    new one is watched.  (The same registration again is not looked at, as
    the loop's own selector does not: a program that closes a socket
    without removing its reader has the stock loops' behaviour.)"""
    tiers, a, _ = pair
    c = d = None
    try:
        fd = a.fileno()
        tiers.update(fd, JOB, None)
        a.close()
        c, d = socket.socketpair()
        assert c.fileno() == fd  # the lowest free number: the one just closed
        tiers.update(fd, JOB, JOB)  # the set still lists it as joined, for reading
        d.send(b"x")
        assert tiers.ready(bit(JOB)) == [(fd, select.EPOLLIN | select.EPOLLOUT)]
        tiers.update(fd, None, None)
        c.close()
        e, f = socket.socketpair()
        try:
            assert e.fileno() == fd
            tiers.update(fd, HIGH, None)  # joins afresh
            f.send(b"y")
            assert tiers.ready(bit(HIGH)) == [(fd, select.EPOLLIN)]
        finally:
            e.close()
            f.close()
    finally:
        for s in (c, d):
            if s is not None:
                s.close()
