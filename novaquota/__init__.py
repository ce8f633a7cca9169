"""The NovaCron Quota Stream Python client: ``from novaquota.client import QuotaClient``."""
