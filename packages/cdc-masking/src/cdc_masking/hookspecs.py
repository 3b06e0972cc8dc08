"""The hook this plugin adds (through ``cdc_add_hookspecs``): custom masking strategies.

A plugin implements it with ``@cdc_core.hookimpl``::

    @cdc_core.hookimpl
    def cdc_masking_register_strategies():
        return {"fpe_ssn": MyFormatPreservingStrategy()}

Each value is a :class:`~cdc_masking.strategies.MaskingStrategy`: an object (or class) with
``compile(options, context) -> Masker``. Names must not collide with the built-ins or with another
plugin's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from cdc_masking.strategies import MaskingStrategy

hookspec = pluggy.HookspecMarker("cdc")


@hookspec
def cdc_masking_register_strategies() -> Mapping[str, MaskingStrategy]:
    """Return the masking strategies this plugin provides, by name."""
