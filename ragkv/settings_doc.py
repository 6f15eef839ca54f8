"""The README's configuration table, generated from `Settings` (`python -m ragkv.settings_doc`)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ragkv.settings import Settings

SKIP_DEFAULTS = {"semantic_cache.categories", "semantic_cache.classifier_examples"}


def _default(name: str, info: FieldInfo) -> str:
    if name in SKIP_DEFAULTS:
        return "(built in, see below)"
    value: Any = info.default
    if value is PydanticUndefined and info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if value is None:
        return "none"
    return f"`{json.dumps(value, default=str)}`"


def rows(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    """One markdown row per leaf setting: path, env variable, default, description."""
    out: list[str] = []
    for field_name, info in model.model_fields.items():
        name = f"{prefix}{field_name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(rows(annotation, f"{name}."))
            continue
        env = "RAGKV_" + name.replace(".", "__").upper()
        description = (info.description or "").replace("|", "/")
        out.append(f"| `{name}` | `{env}` | {_default(name, info)} | {description} |")
    return out


def markdown_table() -> str:
    """The whole table with its header."""
    header = "| setting | env | default | meaning |\n|---|---|---|---|"
    return "\n".join([header, *rows()])


if __name__ == "__main__":
    print(markdown_table())
