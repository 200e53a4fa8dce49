from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.params import BoundedId


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


class ClassCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64, description="the display name; its slug becomes the key")
    hotkey: str = Field(min_length=1, max_length=1, description="one digit or letter a-z")
    colour: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")
    is_wbc: bool = True


class ClassUpdate(BaseModel):
    display_name: str | None = Field(default=None, min_length=1, max_length=64)
    hotkey: str | None = Field(default=None, min_length=1, max_length=1)
    colour: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")
    is_wbc: bool | None = None
    position: int | None = Field(default=None, ge=0, le=10_000)


class MergeIn(BaseModel):
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
