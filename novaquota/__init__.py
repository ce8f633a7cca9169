"""NovaCron Quota Stream: exact, event-sourced quotas on Kafka.

The Python client is ``from novaquota.client import QuotaClient`` (the base install); the
enforcement workers (``novaquota.streams``), projection workers (``novaquota.projections``),
message models (``novaquota.schemas``) and tooling (``novaquota.ops``) are subpackages, the
first two needing the ``worker`` and ``projections`` extras.
"""

__version__ = "0.2.0"
