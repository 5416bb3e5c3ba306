"""Validation messages a technician can act on: "did you mean", the path that is missing, and
what YAML did to a value that was meant as text.

pydantic says *what* is wrong ("Input should be a valid string", "Path does not point to a
file"); a person fixing a file over SSH also needs *which* value and *what to type instead*.
:func:`explain` rewrites one pydantic error with that, for the config file and the model
manifests alike (both go through :func:`edged.config.yamlsrc.validate`).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable

from pydantic import BaseModel


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest candidate, or nothing."""
    close = difflib.get_close_matches(str(word), sorted(set(candidates)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (``X | None``, ``list[X]``, ``tuple[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, tuple, typing.Annotated):
        for arg in typing.get_args(annotation):
            out.extend(_models_in(arg))
    return out


def keys_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the schema allows in the mapping at ``loc`` (empty when unknown)."""
    models = [model]
    for part in loc:
        if isinstance(part, int):
            continue  # a list item: same model as the list
        nxt: list[type[BaseModel]] = []
        for m in models:
            field = m.model_fields.get(str(part))
            if field is not None:
                nxt.extend(_models_in(field.annotation))
        models = nxt
        if not models:
            return []
    keys: list[str] = []
    for m in models:
        for name, field in m.model_fields.items():
            keys.append(field.alias or name)
    return keys


def explain(model: type[BaseModel], err: dict) -> str:
    """pydantic's message for ``err``, made specific."""
    kind, loc, given = err["type"], tuple(err["loc"]), err.get("input")
    if kind == "extra_forbidden":
        return "unknown key" + did_you_mean(str(loc[-1]), keys_at(model, loc[:-1]))
    if kind in ("path_not_file", "path_not_directory"):
        what = "file" if kind == "path_not_file" else "directory"
        return f"{given}: no such {what} (or not a {what})"
    if kind == "string_type" and isinstance(given, (int, float)) and not isinstance(given, bool):
        return ("expected text, but YAML read this value as a number (it has only digits): put it in quotes, "
                f'e.g. {loc[-1]}: "…"')
    return err["msg"]
