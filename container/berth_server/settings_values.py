"""Parsers for environment values (booleans, integers, numbers); each error names its variable.

Pure functions over a mapping: settings.py is still the only module that reads the environment.
"""

from __future__ import annotations

from collections.abc import Mapping

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A setting has a value Berth cannot use; the message names the variable."""


def parse_bool(name: str, raw: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case); SettingsError naming `name` otherwise."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true or false)")


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """The boolean `name` in env, or default when unset."""
    raw = env.get(name)
    return default if raw is None else parse_bool(name, raw)


def env_int(env: Mapping[str, str], name: str, default: int | None, minimum: int = 0) -> int | None:
    """The integer `name` in env (at least `minimum`), or default when unset or blank."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    """The number `name` in env, or default when unset or blank."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


def env_first_int(env: Mapping[str, str], names: tuple[str, ...], default: int | None) -> int | None:
    """The first of `names` set to a positive integer, or default."""
    for name in names:
        value = env_int(env, name, None, 1)
        if value is not None:
            return value
    return default
