"""The project's authored datasets: catalog, policies, intents — typed loaders and validation."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import INTENT_LABELS
from .paths import DATA_DIR

GENRES = frozenset({
    "action", "adventure", "comedy", "drama", "fantasy", "dark fantasy", "horror", "mystery",
    "psychological", "romance", "sci-fi", "slice of life", "sports", "supernatural", "thriller",
    "historical", "mecha", "cooking", "music", "school", "martial arts", "isekai",
    "post-apocalyptic", "crime", "gag",
})
Demographic = Literal["shonen", "shojo", "seinen", "josei", "kodomo"]
EditionKind = Literal["standard", "deluxe", "omnibus", "box_set", "collector"]
PolicyCategory = Literal["shipping", "returns_refunds", "orders", "payment", "preorders", "account", "privacy", "store"]
SPLITS = ("train", "validation", "test")


class Edition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    edition: EditionKind
    name: str
    price: float = Field(gt=0)
    in_stock: bool
    books: int = Field(ge=1)


class Series(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    title: str
    author: str
    year: int = Field(ge=1940, le=2026)
    demographic: Demographic
    genres: list[str] = Field(min_length=1)
    themes: list[str] = Field(min_length=1)
    status: Literal["ongoing", "completed"]
    volumes: int = Field(ge=1)
    synopsis: str
    editions: list[Edition] = Field(min_length=1)

    @field_validator("genres")
    @classmethod
    def _known_genres(cls, genres: list[str]) -> list[str]:
        unknown = set(genres) - GENRES
        if unknown:
            raise ValueError(f"unknown genres {sorted(unknown)}")
        return genres

    def document(self) -> str:
        """The text a retriever embeds and a reranker reads for this series."""
        return (
            f"{self.title} by {self.author} ({self.year}). {self.demographic.capitalize()} manga; "
            f"genres: {', '.join(self.genres)}; themes: {', '.join(self.themes)}. "
            f"{self.status.capitalize()}, {self.volumes} volumes. {self.synopsis}"
        )


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    title: str
    category: PolicyCategory
    body: str

    def document(self) -> str:
        return f"{self.title}. {self.body}"

    def passages(self, target_words: int = 90) -> list[str]:
        """Paragraph-aligned chunks of about `target_words`, each retrievable and citable on its own
        (markdown emphasis removed: passages are quoted verbatim in answers)."""
        paragraphs = [p.strip().replace("**", "") for p in re.split(r"\n\s*\n", self.body) if p.strip()]
        chunks: list[list[str]] = []
        current: list[str] = []
        for para in paragraphs:
            if current and sum(len(p.split()) for p in current) + len(para.split()) > target_words:
                chunks.append(current)
                current = []
            current.append(para)
        if current:
            chunks.append(current)
        return [f"{self.title}. " + "\n".join(chunk) for chunk in chunks]


class IntentExample(BaseModel):
    text: str = Field(min_length=1)
    label: str

    @field_validator("label")
    @classmethod
    def _known_label(cls, label: str) -> str:
        if label not in INTENT_LABELS:
            raise ValueError(f"unknown intent label {label!r}")
        return label


def read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: {exc}") from exc


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


@lru_cache(maxsize=4)
def load_catalog(path: Path = DATA_DIR / "catalog.jsonl") -> tuple[Series, ...]:
    return tuple(Series.model_validate(row) for row in read_jsonl(path))


_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n(.*)\Z", re.S)


def parse_policy(text: str) -> Policy:
    match = _FRONT_MATTER.match(text)
    if not match:
        raise ValueError("policy document must start with a --- front matter block")
    meta = dict(line.split(":", 1) for line in match.group(1).splitlines() if ":" in line)
    return Policy(**{k.strip(): v.strip() for k, v in meta.items()}, body=match.group(2).strip())


@lru_cache(maxsize=4)
def load_policies(directory: Path = DATA_DIR / "policies") -> tuple[Policy, ...]:
    policies = []
    for path in sorted(directory.glob("*.md")):
        policy = parse_policy(path.read_text(encoding="utf-8"))
        if policy.id != path.stem:
            raise ValueError(f"{path}: id {policy.id!r} does not match the file name")
        policies.append(policy)
    return tuple(policies)


def load_intents(split: str, directory: Path = DATA_DIR / "intents") -> list[IntentExample]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    return [IntentExample.model_validate(row) for row in read_jsonl(directory / f"{split}.jsonl")]
