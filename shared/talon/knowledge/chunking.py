"""Split a knowledge document into retrieval chunks: markdown sections (by heading), then
paragraphs packed up to a size, each chunk labelled with the headings it sits under so it
still makes sense on its own."""

from __future__ import annotations

import re
from dataclasses import dataclass

CHUNK_CHARS = 1200
_HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")


@dataclass(frozen=True)
class Chunk:
    index: int
    heading: str  # e.g. "Renewal playbook > Enterprise"
    content: str


def chunk_document(title: str, content: str, content_type: str = "text/markdown") -> list[Chunk]:
    sections = _sections(content) if content_type == "text/markdown" else [([], content)]
    chunks: list[Chunk] = []
    for headings, text in sections:
        label = " > ".join([h for h in [title, *headings] if h])
        for piece in _pack(_paragraphs(text)):
            chunks.append(Chunk(len(chunks), label, piece))
    return chunks


def _sections(content: str) -> list[tuple[list[str], str]]:
    sections: list[tuple[list[str], str]] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    in_code = False

    def flush() -> None:
        text = "\n".join(lines).strip()
        if text:
            sections.append(([h for _, h in path], text))
        lines.clear()

    for line in content.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        match = None if in_code else _HEADING.match(line)
        if match is None:
            lines.append(line)
            continue
        flush()
        level = len(match.group(1))
        path = [(lvl, h) for lvl, h in path if lvl < level] + [(level, match.group(2))]
    flush()
    return sections


def _paragraphs(text: str) -> list[str]:
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        while len(block) > CHUNK_CHARS:  # an oversized paragraph: cut at a sentence or space
            cut = max(block.rfind(". ", 0, CHUNK_CHARS), block.rfind(" ", 0, CHUNK_CHARS))
            cut = cut + 1 if cut > CHUNK_CHARS // 2 else CHUNK_CHARS
            paragraphs.append(block[:cut].strip())
            block = block[cut:].strip()
        if block:
            paragraphs.append(block)
    return paragraphs


def _pack(paragraphs: list[str]) -> list[str]:
    packed: list[str] = []
    current = ""
    for paragraph in paragraphs:
        if current and len(current) + 2 + len(paragraph) > CHUNK_CHARS:
            packed.append(current)
            current = paragraph
        else:
            current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        packed.append(current)
    return packed
