"""Flower's processes fetch a message's content promptly once it is there.

A Flower 1.42 process that receives a message pulls its content (the arrays) separately,
and retries an object that is not there yet after 1, 2, 4, 8 s (``PULL_INITIAL_BACKOFF``,
``PULL_BACKOFF_CAP`` in ``flwr.supercore.constant``). A ClientApp task starts the moment its
message arrives at the SuperNode, usually before the content does, and the coordinator pulls
each reply as soon as it is announced: seconds of waiting per message for content that
arrives milliseconds later. This retries every 50 ms at first, at most every 0.5 s.
"""

from __future__ import annotations

import logging

import flwr

_FLOWER_VERSION = "1.42.0"  # the version whose object pulls this tunes
INITIAL_BACKOFF_S = 0.05
BACKOFF_CAP_S = 0.5
_log = logging.getLogger(__name__)


def prompt_object_pulls(initial_s: float = INITIAL_BACKOFF_S, cap_s: float = BACKOFF_CAP_S) -> bool:
    """Shorten this process's retry waits for message content; whether Flower's were replaced."""
    if not 0 < initial_s <= cap_s:
        raise ValueError(f"need 0 < initial_s <= cap_s, got {initial_s}, {cap_s}")
    if flwr.__version__ != _FLOWER_VERSION:
        _log.warning("Flower %s: message content is pulled with Flower's own retry waits", flwr.__version__)
        return False
    from flwr.supercore.inflatable import inflatable_utils

    functions = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    if any("initial_backoff" not in (f.__kwdefaults__ or {}) for f in functions):
        return False
    for function in functions:
        assert function.__kwdefaults__ is not None
        function.__kwdefaults__.update(initial_backoff=initial_s, backoff_cap=cap_s)
    return True
