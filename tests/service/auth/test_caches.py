"""``service.auth.caches``: the single-use token (jti) replay cache."""

from __future__ import annotations

import threading
import time

from service.auth import JtiReplayCache
from tests.service.auth.helpers import Clock


def test_replay_cache_remembers_until_expiry_and_is_bounded():
    clock = Clock()
    cache = JtiReplayCache(max_entries=2, clock=clock)
    assert cache.seen("a", clock.now + 60) is False
    assert cache.seen("a", clock.now + 60) is True
    assert cache.seen("b", clock.now + 10) is False
    # Full: a new id is refused rather than forgetting a live one (fail closed).
    assert cache.seen("c", clock.now + 60) is True
    clock.now += 11  # "b" expired and is purged, freeing a slot
    assert len(cache) == 1
    assert cache.seen("c", clock.now + 60) is False
    clock.now += 60
    assert len(cache) == 0
    assert cache.seen("a", clock.now + 60) is False  # forgotten after its expiry
    assert cache.seen("old", clock.now - 1) is False and len(cache) == 1


def test_replay_cache_lets_exactly_one_of_concurrent_presentations_through():
    cache = JtiReplayCache()
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def present() -> None:
        barrier.wait()
        results.append(cache.seen("same-jti", time.time() + 60))

    threads = [threading.Thread(target=present) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] + [True] * 7
