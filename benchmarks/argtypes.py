"""argparse types the benchmark scripts share: a bad value is one argparse error line
and exit status 2, before any work starts."""

from __future__ import annotations

import argparse


def positive(kind):
    """A number of ``kind`` (int or float) > 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n' * (kind is int)} "
                                             f"{kind.__name__}") from None  # fmt: skip
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


positive_int = positive(int)
positive_float = positive(float)


def comma_list(known, what: str):
    """A comma list of names from ``known`` (returned joined again by commas)."""

    def parse(text: str) -> str:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in known]
        if not items or bad:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, bad)) or '(none given)'}; "
                f"choose from {', '.join(known)}"
            )
        return ",".join(items)

    return parse


def cluster_spec(text: str) -> str:
    """A cluster spec tilegraph parses (``sync``, ``local:2`` …)."""
    from tilegraph.cluster.specs import SpecError, parse_spec

    try:
        parse_spec(text)
    except SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
