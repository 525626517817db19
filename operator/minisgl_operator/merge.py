"""Merge of the user's podTemplate over the generated pod template (applied last).

Rules, close to a strategic merge patch: mappings merge key by key; lists whose items all
carry a "name" (containers, volumes, env, volumeMounts, ...) merge item by item on that name,
new names appended; any other list, and any scalar, replaces; a null value deletes the key.
"""
from __future__ import annotations

import copy
from typing import Any


def _named(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(i, dict) and "name" in i for i in items)


def _merge_named(base: list[dict], override: list[dict]) -> list[dict]:
    merged = [copy.deepcopy(item) for item in base]
    index = {item["name"]: i for i, item in enumerate(merged)}
    for item in override:
        if item["name"] in index:
            merged[index[item["name"]]] = deep_merge(merged[index[item["name"]]], item)
        else:
            index[item["name"]] = len(merged)
            merged.append(copy.deepcopy(item))
    return merged


def deep_merge(base: dict, override: dict) -> dict:
    """Return a new dict: `override` merged over `base` (neither is modified)."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        elif _named(value) and _named(result.get(key)) and value:
            result[key] = _merge_named(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result
