"""A site's SuperNode: Flower's ``flower-supernode``, polling promptly.

Flower 1.42's SuperNode sleeps a fixed 3 s after every fetch that found no message, looks for
the site's reply every 0.5 s, and asks again for a message object that is not at the
coordinator yet after 1 s. In a deployed run every round after the first found the SuperNode
asleep (it asked once right after replying, before the other sites had answered), so a round
cost 3-4 s of waiting for a fraction of a second of work. Run as
``python -m federation.deployment.supernode [flower-supernode options]``, this is Flower's own
SuperNode with those waits set here (through :mod:`federation.flower_internals`):

- right after a message it asks for the next within :data:`FIRST_POLL_S`, the wait growing by
  half each time to :data:`IDLE_POLL_S` while idle (one small HTTPS request a second: Flower's
  heartbeat is one every 30 s);
- a reply is pushed within :data:`REPLY_CHECK_S` of the runner handing it over;
- a missing message object is asked for again after :data:`OBJECT_RETRY_S`.

Everything else (the connection, TLS, node authentication, heartbeats) is Flower's, unchanged.
"""

from __future__ import annotations

import sys

from federation.flower_internals import (
    SUPERNODE_LOOP,
    SuperNodeClock,
    flower_supernode,
    use_prompt_object_pulls,
    use_prompt_supernode_polling,
)

FIRST_POLL_S = 0.05
IDLE_POLL_S = 1.0
REPLY_CHECK_S = 0.02
OBJECT_RETRY_S = (0.05, 0.2)
"""First wait and cap of the doubling waits for a missing message object (Flower: 1 s, 10 s)."""


def main() -> None:
    """Start Flower's SuperNode (options as ``flower-supernode``'s) with prompt polling."""
    use_prompt_supernode_polling(SuperNodeClock(FIRST_POLL_S, IDLE_POLL_S, REPLY_CHECK_S))
    use_prompt_object_pulls(SUPERNODE_LOOP, *OBJECT_RETRY_S)
    sys.argv = ["flower-supernode", *sys.argv[1:]]
    flower_supernode()


if __name__ == "__main__":
    main()
