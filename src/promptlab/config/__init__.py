"""Typed configs: the schemas (schema.py), their registration with Hydra, the checks a type cannot express,
the keys that change how a job is launched but not what it computes, and composing a config in Python.
"""

from promptlab.config.registry import CONFIG_PACKAGE, compose, register_configs
from promptlab.config.validate import validate
from promptlab.launch import LAUNCH_KEYS, is_launch_key

__all__ = ["CONFIG_PACKAGE", "LAUNCH_KEYS", "compose", "is_launch_key", "register_configs", "validate"]
