from __future__ import annotations

import string
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from app.labelling.keymap import action_keys
from app.params import BoundedId, RequestBody

# The hotkeys the service takes (app.classes.service._check_hotkey), for the schema: one digit or letter,
# either case, that the page's key map does not give to an action. The service still checks, with a message
# that says which rule a key breaks; a key another class holds is a 409.
_FREE_KEYS = sorted(set(string.digits + string.ascii_lowercase) - action_keys())
HOTKEY_PATTERN = f"^[{''.join(_FREE_KEYS)}{''.join(key.upper() for key in _FREE_KEYS if key.isalpha())}]$"
HOTKEY_HELP = "one digit or letter a-z that the labelling page's key map does not use"
Hotkey = Annotated[str, Field(min_length=1, max_length=1, json_schema_extra={"pattern": HOTKEY_PATTERN})]
# A name's slug (the class key) keeps only a-z and 0-9, and may not be empty: documented as a pattern (found
# anywhere in the name); the service also refuses the reserved names (``unsure``...), with its own message.
NAME_PATTERN = "[A-Za-z0-9]"


class ClassOut(BaseModel):
    id: int
    name: str = Field(description="the stable key label rows store; never changes")
    display_name: str
    hotkey: str
    colour: str
    position: int
    is_wbc: bool
    retired: bool
    retired_at: datetime | None = None


class ClassCreate(RequestBody):
    name: str = Field(
        min_length=1,
        max_length=64,
        description="the display name, with a letter a-z or a digit; its slug becomes the key",
        json_schema_extra={"pattern": NAME_PATTERN},
    )
    hotkey: Hotkey = Field(description=HOTKEY_HELP)
    colour: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")
    is_wbc: bool = True


class ClassUpdate(RequestBody):
    display_name: (
        Annotated[str, Field(min_length=1, max_length=64, json_schema_extra={"pattern": NAME_PATTERN})] | None
    ) = Field(default=None, description="a new display name, with a letter a-z or a digit; the key stays")
    hotkey: Hotkey | None = Field(default=None, description=HOTKEY_HELP)
    colour: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")
    is_wbc: bool | None = None
    position: int | None = Field(default=None, ge=0, le=10_000)


class MergeIn(RequestBody):
    into: BoundedId = Field(description="the id of the class that takes over the merged class's cells")


class ClassEventOut(BaseModel):
    id: int
    action: str
    class_id: int
    target_class_id: int | None
    user_id: int | None
    detail: dict | None
    undoes_id: int | None
    created_at: datetime


def class_out(cls) -> ClassOut:
    return ClassOut(
        id=cls.id,
        name=cls.name,
        display_name=cls.display_name,
        hotkey=cls.hotkey,
        colour=cls.colour,
        position=cls.position,
        is_wbc=cls.is_wbc,
        retired=cls.is_retired,
        retired_at=cls.retired_at,
    )
