"""The labelling page's keys, from one file (static/keymap.json): its buttons, its help overlay and label.js all
read the list built here. Each class's key is its hotkey in the database."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from app.models import CellClass

KEYMAP_FILE = Path(__file__).resolve().parents[2] / "static" / "keymap.json"


@cache
def _file() -> dict[str, Any]:
    return json.loads(KEYMAP_FILE.read_text())


def keymap(classes: Sequence[CellClass]) -> list[dict[str, Any]]:
    """One entry per action: its keys, what it does, its help line, and the text of its button (if it has one)."""
    spec = _file()
    class_keys = spec["class_keys"]
    return [
        *(
            {
                "keys": [c.hotkey, *class_keys["extra_keys"].get(c.name, [])],
                "action": "label",
                "label": c.name,
                "help": class_keys["help"].format(name=c.display_name),
                "button": c.display_name,
                "colour": c.colour,
            }
            for c in classes
        ),
        *spec["keys"],
    ]


def action_keys() -> frozenset[str]:
    """Keys the page gives to actions (undo, unsure, help, ...) and second keys of classes: no class may take one."""
    spec = _file()
    extra = {key for keys in spec["class_keys"]["extra_keys"].values() for key in keys}
    return frozenset(key.lower() for entry in spec["keys"] for key in entry["keys"] if len(key) == 1) | extra
