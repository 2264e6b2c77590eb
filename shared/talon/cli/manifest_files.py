"""Read manifests from files and folders for `talon apply -f`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from talon.cli.client import CliError

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Document:
    source: str  # "manifests/30-agent.yaml#2": file and 1-based document number
    body: Any


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not found:
            raise CliError(f"{path}: no .yaml, .yml or .json files")
        return found
    if path.is_file():
        return [path]
    raise CliError(f"{path}: no such file or directory")


def read_documents(paths: list[str]) -> list[Document]:
    documents: list[Document] = []
    for raw in paths:
        for file in _files(Path(raw)):
            try:
                text = file.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise CliError(f"{file}: cannot read: {exc}") from exc
            try:
                if file.suffix == ".json":
                    loaded = json.loads(text)
                    bodies = loaded if isinstance(loaded, list) else [loaded]
                else:
                    bodies = list(yaml.safe_load_all(text))
            except (yaml.YAMLError, json.JSONDecodeError) as exc:
                flat = " ".join(str(exc).split())
                raise CliError(f"{file}: not valid {file.suffix[1:].upper()}: {flat}") from exc
            number = 0
            for body in bodies:
                number += 1
                if body is None:  # an empty document between `---` separators
                    continue
                documents.append(Document(f"{file}#{number}", body))
    if not documents:
        raise CliError("no manifests found in " + ", ".join(paths))
    return documents
