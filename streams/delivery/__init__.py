"""Alert delivery: a plain aiokafka consumer of the violation and alert topics that sends each
record to the channels its routes name (webhook, Slack, PagerDuty, email), at least once.

``novaquota deliver --config FILE`` runs it (docs/delivery.md).
"""

from __future__ import annotations

__all__: list[str] = []
