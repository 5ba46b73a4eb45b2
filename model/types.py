"""Shared type aliases."""

from typing import Any

import jax

__all__ = ["Array", "Params", "PRNGKey", "Metrics"]

Array = jax.Array
Params = dict[str, Any]  # flat mapping of parameter name -> array
PRNGKey = jax.Array
Metrics = dict[str, Any]
