"""Flower's processes retry a message's missing content within 50 ms, not after seconds."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError, pull_objects

from federation.flower_pulls import prompt_object_pulls


def test_content_that_arrives_late_is_fetched_promptly(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower stretches each wait by up to 20% at random: without it the retries come at a known
    # 0.05, 0.15 and 0.35 s, and a slow machine has the rest of the bound to spare
    monkeypatch.setattr(inflatable_utils, "random", SimpleNamespace(uniform=lambda low, high: 0.0))
    saved = {
        f: dict(f.__kwdefaults__ or {})
        for f in (pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    }
    try:
        assert prompt_object_pulls()
        arrives = time.monotonic() + 0.3  # the content is there 0.3 s after the first try

        def pull(object_id: str) -> bytes:
            if time.monotonic() < arrives:
                raise ObjectUnavailableError(object_id)
            return b"content"

        started = time.monotonic()
        assert pull_objects(["a"], pull) == {"a": b"content"}
        assert time.monotonic() - started < 0.9  # Flower's own waits: 1 s, then 2 s
    finally:
        for function, defaults in saved.items():
            function.__kwdefaults__ = defaults


def test_the_waits_are_checked() -> None:
    with pytest.raises(ValueError, match="0 < initial_s <= cap_s"):
        prompt_object_pulls(1.0, 0.5)
