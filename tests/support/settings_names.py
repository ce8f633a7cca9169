"""The environment variables the settings classes read, for tests that check what deployment
files (Kubernetes manifests, the Dockerfile) set."""

from __future__ import annotations

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

__all__ = ["env_names"]


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The environment variables pydantic-settings reads for ``cls`` (upper case)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c.upper() for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field}".upper())
    return names
