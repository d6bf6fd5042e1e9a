"""LoRA adapter specs as every contract names them: names, sources, and the launch-time lists (pure data)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from berth_server.errors import InvalidRequest

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class AdapterSource(msgspec.Struct, frozen=True, kw_only=True):
    """One adapter to register: SageMaker's POST /adapters body ({name, src, preload, pin}) plus Berth's persist."""

    name: str
    src: str  # local folder, file://, s3:// prefix, .tar.gz, or a hub id: resolved like model weights
    preload: bool = True
    pin: bool = False
    persist: bool = False  # Berth's: re-applied after a server restart too (BERTH_HOME/adapters)


def check_adapter_name(name: object, param: str = "name") -> str:
    """An adapter name follows the model-name rules: letters, digits, '_' and '-', no paths."""
    if not isinstance(name, str) or not ADAPTER_NAME.match(name):
        raise InvalidRequest(
            f"adapter name {name!r} is invalid: it must start with a letter or digit and hold only letters,"
            " digits, '_' and '-' (no paths)", param=param,
        )
    return name


def parse_lora_adapters(raw: str) -> tuple[AdapterSource, ...]:
    """TGI's LORA_ADAPTERS: 'name=path,...' or bare ids/paths (named after their last path part)."""
    adapters: list[AdapterSource] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        name, sep, src = entry.partition("=")
        if not sep:
            src = entry
            name = re.sub(r"[^A-Za-z0-9_-]", "-", entry.rstrip("/").rsplit("/", 1)[-1].removesuffix(".tar.gz"))
        adapters.append(AdapterSource(name=check_adapter_name(name.strip(), "LORA_ADAPTERS"), src=src.strip()))
    return tuple(adapters)


def from_peft_model_config(config: Any) -> list[AdapterSource]:
    """Xinference's peft_model_config={"lora_list": [{"lora_name", "local_path"}], ...} at launch."""
    if config is None:
        return []
    if not isinstance(config, dict):
        raise InvalidRequest("peft_model_config must be an object with a lora_list", param="peft_model_config")
    entries = config.get("lora_list") or []
    if not isinstance(entries, list):
        raise InvalidRequest("peft_model_config.lora_list must be a list", param="peft_model_config")
    adapters = []
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get("lora_name") or not entry.get("local_path"):
            raise InvalidRequest("each peft_model_config.lora_list entry needs lora_name and local_path",
                                 param="peft_model_config")
        name = check_adapter_name(entry["lora_name"], "peft_model_config")
        adapters.append(AdapterSource(name=name, src=str(entry["local_path"])))
    return adapters
