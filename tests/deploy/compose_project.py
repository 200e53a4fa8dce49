"""Just enough of Docker Compose to test docker-compose.yml without a Docker engine.

Reads the compose files with PyYAML (anchors and merge keys included), understands the ``!reset`` and
``!override`` tags, interpolates ``${VAR}`` the way Compose does (defaults, required values, nesting)
and merges override files by the Compose merge rules. It is a test aid, not a Compose replacement:
what it does not know (e.g. ``extends``, ``include``) the files here do not use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
CPU_OVERRIDE_FILE = REPO / "docker-compose.cpu.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_LINE = re.compile(r"^\s*(#\s*)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
# Attributes an override file replaces rather than appends to (Compose merge rules).
_REPLACED_SEQUENCES = {"command", "entrypoint", "test"}


@dataclass(frozen=True)
class Reset:
    """``!reset``: remove the attribute set by an earlier file."""


@dataclass(frozen=True)
class Override:
    """``!override``: replace the attribute set by an earlier file."""

    value: Any


class MissingVariable(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


class _ComposeLoader(yaml.SafeLoader):
    pass


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    return Reset()


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    return Override(loader.construct_scalar(node))


_ComposeLoader.add_constructor("!reset", _reset)
_ComposeLoader.add_constructor("!override", _override)


def load_yaml(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader subclass


# --- .env files ---------------------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """The active ``NAME=value`` lines of a .env file (commented ``# NAME=`` lines are not active)."""
    values = {}
    for line in path.read_text().splitlines():
        match = _ENV_LINE.match(line)
        if match and not match.group(1):
            values[match.group(2)] = match.group(3).strip()
    return values


def documented_names(path: Path) -> set[str]:
    """Every name a .env file mentions as ``NAME=`` or as a commented ``# NAME=`` default."""
    return {m.group(2) for line in path.read_text().splitlines() if (m := _ENV_LINE.match(line))}


# --- interpolation --------------------------------------------------------------------------------------


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` that closes the ``${`` whose ``{`` is at ``start``."""
    depth = 0
    i = start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unclosed ${{ in {text!r}")


def _expand(expression: str, env: Mapping[str, str]) -> str:
    match = _NAME.match(expression)
    if not match:
        raise ValueError(f"bad variable expression ${{{expression}}}")
    name, rest = match.group(), expression[match.end() :]
    value = env.get(name)
    if not rest:
        return value or ""
    for operator in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(operator):
            argument = rest[len(operator) :]
            break
    else:
        raise ValueError(f"unsupported variable expression ${{{expression}}}")
    present = bool(value) if operator.startswith(":") else value is not None
    kind = operator[-1]
    if kind == "-":
        return value if present else interpolate(argument, env)
    if kind == "?":
        if present:
            return value
        raise MissingVariable(name, interpolate(argument, env))
    return interpolate(argument, env) if present else ""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``${VAR:+alt}``, ``$VAR`` and ``$$``."""
    out = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 1)
            out.append(_expand(text[i + 2 : end], env))
            i = end + 1
        elif match := _NAME.match(text, i + 1):
            out.append(env.get(match.group(), ""))
            i = match.end()
        else:
            out.append("$")
            i += 1
    return "".join(out)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    if isinstance(node, Override):
        return Override(interpolate_tree(node.value, env))
    return node


def variables_used(path: Path) -> set[str]:
    """Every variable a compose file interpolates, nested defaults included (``$$`` escapes excluded)."""
    text = path.read_text().replace("$$", "")
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text))


# --- merging --------------------------------------------------------------------------------------------


def merge(base: Any, override: Any, key: str = "") -> Any:
    if isinstance(override, Override):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for name, value in override.items():
            if isinstance(value, Reset):
                merged.pop(name, None)
            elif name in merged:
                merged[name] = merge(merged[name], value, name)
            else:
                merged[name] = value.value if isinstance(value, Override) else value
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in _REPLACED_SEQUENCES:
        return base + [item for item in override if item not in base]
    return override


def _strip_tags(node: Any) -> Any:
    """A single file may carry tags too; outside a merge they mean their plain value."""
    if isinstance(node, Override):
        return _strip_tags(node.value)
    if isinstance(node, dict):
        return {k: _strip_tags(v) for k, v in node.items() if not isinstance(v, Reset)}
    if isinstance(node, list):
        return [_strip_tags(v) for v in node]
    return node


def load_project(*files: Path, env: Mapping[str, str]) -> dict:
    """The compose model of ``files`` (in order), interpolated with ``env`` per file, then merged."""
    model: dict = {}
    for path in files:
        model = merge(model, interpolate_tree(load_yaml(path), env))
    model = _strip_tags(model)
    return {key: value for key, value in model.items() if not key.startswith("x-")}


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a dict, whichever of the two syntaxes it uses."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in environment)
        return {name: value for name, value in pairs}
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def as_argv(command: Any) -> list[str]:
    """A service ``command`` as an argument list; the files here use the exec (list) form."""
    if isinstance(command, str):
        import shlex

        return shlex.split(command)
    return [str(part) for part in command]


def example_env(**overrides: str) -> dict[str, str]:
    """The values of .env.example, with ``overrides`` (e.g. the secrets it leaves empty)."""
    return {**read_env_file(ENV_EXAMPLE), **overrides}
