"""An example transform plug-in: `callable = "plugins.py:label_band"` in settings.toml.

A plug-in takes a list of field dicts and returns a list as long: a dict (the new fields),
None (filtered: counted under the step's name) or consumer.transform.Reject(reason, message).
"""

from __future__ import annotations

from typing import Any

from consumer.transform import Reject


def label_band(batch: list[dict[str, Any]]) -> list[Any]:
    out: list[Any] = []
    for fields in batch:
        temp = fields.get("temp_c")
        if not isinstance(temp, float):
            out.append(Reject("no_temperature", "label_band needs a numeric temp_c"))
        else:
            band = "hot" if temp >= 30 else "cold" if temp < 5 else "normal"
            out.append({**fields, "band": band})
    return out
