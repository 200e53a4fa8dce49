from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.params import RequestBody
from app.security import password_problem

USERNAME_MAX = 64


def _acceptable_password(password: str) -> str:
    problem = password_problem(password)
    if problem:
        raise ValueError(problem)
    return password


class UserCreate(RequestBody):
    username: str = Field(min_length=2, max_length=USERNAME_MAX, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str = Field(min_length=8, max_length=256)
    role: Literal["cytologist", "admin"] = "cytologist"

    _password_ok = field_validator("password")(_acceptable_password)


class PasswordChange(RequestBody):
    current_password: str = Field(max_length=256)
    new_password: str = Field(min_length=8, max_length=256)

    _password_ok = field_validator("new_password")(_acceptable_password)


class PasswordReset(RequestBody):
    new_password: str = Field(min_length=8, max_length=256, description="a temporary password to hand over")

    _password_ok = field_validator("new_password")(_acceptable_password)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    role: str
    is_active: bool
    created_at: datetime
    must_change_password: bool = False


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
