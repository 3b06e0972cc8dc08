"""cdc-masking: the ``masking`` transform of cdc."""

from __future__ import annotations

from cdc_masking.__about__ import __version__
from cdc_masking.config import MaskingConfig, MaskingRule, RulesFile, load_rules_file, structure_config
from cdc_masking.strategies import BUILTIN_STRATEGIES, Masker, MaskingStrategy, StrategyContext, identify_token, make_token
from cdc_masking.transform import MaskingTransform, masked_values_counter

__all__ = [
    "BUILTIN_STRATEGIES",
    "Masker",
    "MaskingConfig",
    "MaskingRule",
    "MaskingStrategy",
    "MaskingTransform",
    "RulesFile",
    "StrategyContext",
    "__version__",
    "identify_token",
    "load_rules_file",
    "make_token",
    "masked_values_counter",
    "structure_config",
]
