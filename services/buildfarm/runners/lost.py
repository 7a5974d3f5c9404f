"""The signal a remote runner gives when its work vanished underneath it.

A builder pod deleted by someone else (node drained, evicted, the namespace cleaned by hand)
is not a build failure: nothing is known about the build, so the step goes back to ``ready``
and is built again as a new attempt.  This is deliberately not a :class:`BuildfarmError`: it is
never shown to a person, and the engine's generic error handling must not turn it into a failure.
"""

from __future__ import annotations


class StepLost(Exception):
    """The step's remote work (its pod) disappeared; the engine re-queues the step."""
