"""Check deploy arguments early and size SageMaker's timeouts from the model."""

from __future__ import annotations

import re
from dataclasses import dataclass

from berth.errors import ValidationError

ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
ROLE_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
INSTANCE_TYPE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
# "70b", "8B", "0.5b", "1_5b", "8x7b" in a model id: the parameter count in billions.
_SIZE = re.compile(r"(?:(\d+)x)?(\d+(?:[._]\d+)?)b(?![a-z])", re.IGNORECASE)

MIN_TIMEOUT_S = 600
MAX_TIMEOUT_S = 3600  # SageMaker's ceiling for both timeouts


def endpoint_name(name: str) -> str:
    """Return the name if SageMaker accepts it, else raise with the rule."""
    if not name or not ENDPOINT_NAME.match(name):
        raise ValidationError(
            f"invalid endpoint name {name!r}: 1-63 letters, digits and hyphens, starting and ending "
            "with a letter or digit"
        )
    return name


def role_arn(role: str | None) -> str:
    """Return the execution role ARN, or raise when it is missing or not an IAM role ARN."""
    if not role:
        raise ValidationError("a SageMaker execution role is required (--role arn:aws:iam::<account>:role/<name>)")
    if not ROLE_ARN.match(role):
        raise ValidationError(f"invalid role {role!r}: expected arn:aws:iam::<12-digit account>:role/<name>")
    return role


def instance_type(value: str) -> str:
    """Return the instance type if it looks like ml.<family>.<size>, else raise."""
    if not value or not INSTANCE_TYPE.match(value):
        raise ValidationError(f"invalid instance type {value!r}: expected ml.<family>.<size>, e.g. ml.g5.2xlarge")
    return value


def guess_size_billions(model: str) -> float | None:
    """Guess the parameter count from a model id ("Llama-3-70B" -> 70, "Mixtral-8x7B" -> 56)."""
    best: float | None = None
    for experts, size in _SIZE.findall(model.rsplit("/", 1)[-1]):
        value = float(size.replace("_", ".")) * (int(experts) if experts else 1)
        best = value if best is None else max(best, value)
    return best


@dataclass(frozen=True)
class Timeouts:
    """SageMaker's container startup health check and model download timeouts, in seconds."""

    health_check_s: int
    download_s: int


def timeouts_for(model: str, size_billions: float | None = None, health_check_s: int | None = None,
                 download_s: int | None = None) -> Timeouts:
    """Size the timeouts: 600 s at least, ~20 s per billion parameters, capped at 3600; overrides win."""
    size = size_billions if size_billions is not None else guess_size_billions(model)
    sized = MIN_TIMEOUT_S if size is None else int(min(MAX_TIMEOUT_S, max(MIN_TIMEOUT_S, 300 + 20 * size)))
    result = Timeouts(health_check_s if health_check_s is not None else sized,
                      download_s if download_s is not None else sized)
    for label, value in (("health check", result.health_check_s), ("download", result.download_s)):
        if not 60 <= value <= MAX_TIMEOUT_S:
            raise ValidationError(f"{label} timeout {value}s is outside SageMaker's 60-3600 s range")
    return result


def parse_env(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Turn ["K=V", ...] into a dict; raise on an entry without '='."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValidationError(f"invalid --env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def adapter_name(name: str) -> str:
    """A LoRA adapter name: the container's rules (letters, digits, '_' and '-'), and an inference
    component name on SageMaker (letters, digits and '-', 63 at most)."""
    if not ENDPOINT_NAME.match(name or ""):
        raise ValidationError(f"adapter name {name!r}: use letters, digits and '-' (63 at most, no paths)")
    return name
