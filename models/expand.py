"""Seeded catalog expansion: series -> products (one per volume x edition), plus synthetic products.

The real products are what the store sells and what the retriever indexes; the synthetic ones
(clearly marked `synthetic: true`, ids starting `syn-`) scale the index to 1M+ for benchmarks.
"""
from __future__ import annotations

import random
import re
from typing import Iterator

from pydantic import BaseModel

from .datasets import GENRES, Series

DEMOGRAPHICS = ("shonen", "shojo", "seinen", "josei", "kodomo")


class Product(BaseModel):
    id: str
    series_id: str
    title: str
    series_title: str
    author: str
    volume: int | None  # None for a box set covering the whole run
    edition: str
    edition_name: str
    price: float
    in_stock: bool
    demographic: str
    genres: list[str]
    themes: list[str]
    status: str
    year: int
    synthetic: bool = False

    def document(self) -> str:
        stock = "in stock" if self.in_stock else "out of stock"
        return (f"{self.title} by {self.author}. {self.edition_name}, ${self.price:.2f}, {stock}. "
                f"{self.demographic.capitalize()} manga; genres: {', '.join(self.genres)}; themes: {', '.join(self.themes)}.")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def series_products(series: Series) -> Iterator[Product]:
    """Every book of every edition of one series; price and stock are the edition's (one source of truth)."""
    for ed in series.editions:
        whole_set = ed.edition == "box_set"
        for book in ([None] if whole_set else range(1, ed.books + 1)):
            label = ed.name if book is None else f"Vol. {book} ({ed.name})"
            yield Product(
                id=f"{series.id}:{_slug(ed.name)}:{book or 'set'}", series_id=series.id,
                title=f"{series.title}, {label}", series_title=series.title, author=series.author,
                volume=book, edition=ed.edition, edition_name=ed.name, price=ed.price,
                in_stock=ed.in_stock,
                demographic=series.demographic, genres=series.genres, themes=series.themes,
                status=series.status, year=series.year,
            )


_SYLLABLES = ("ka", "ri", "mo", "to", "shi", "na", "yu", "ro", "ki", "sa", "ha", "mi", "zu", "te", "no", "ra")


def synthetic_products(count: int, seed: int = 0) -> Iterator[Product]:
    """Plausible fake products for scale: random names, metadata drawn from the real vocabularies."""
    rng = random.Random(seed)
    genres = sorted(GENRES)
    for n in range(count):
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()
        volume = rng.randint(1, 40)
        edition = rng.choice(("standard", "standard", "standard", "omnibus", "deluxe"))
        yield Product(
            id=f"syn-{seed}-{n}", series_id=f"syn-{name.lower()}", title=f"{name}, Vol. {volume}",
            series_title=name, author=f"{rng.choice(_SYLLABLES).capitalize()}{rng.choice(_SYLLABLES)} "
                                       f"{rng.choice(_SYLLABLES).capitalize()}{rng.choice(_SYLLABLES)}",
            volume=volume, edition=edition, edition_name=f"{edition.capitalize()} Edition",
            price=round(rng.uniform(7, 60), 2), in_stock=rng.random() < 0.8,
            demographic=rng.choice(DEMOGRAPHICS), genres=rng.sample(genres, 2), themes=["synthetic"],
            status=rng.choice(("ongoing", "completed")), year=rng.randint(1970, 2025), synthetic=True,
        )


def products(catalog: tuple[Series, ...], extra: int = 0, seed: int = 0) -> Iterator[Product]:
    for series in catalog:
        yield from series_products(series)
    yield from synthetic_products(extra, seed)
