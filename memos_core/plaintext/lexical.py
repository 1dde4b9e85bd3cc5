"""Query building for the lexical (BM25, SQLite FTS5) retriever."""

from __future__ import annotations

import re

__all__ = ["fts_query", "STOPWORDS", "terms"]

# A compact English stopword list (function words only: content words such as names, dates, numbers and
# nouns are what lexical retrieval is good at).
STOPWORDS = frozenset("""
a about above after again against all am an and any are aren as at be because been before being below between
both but by can could did didn do does doesn doing don down during each few for from further had hadn has hasn
have haven having he her here hers herself him himself his how i if in into is isn it its itself just ll me
might more most must my myself no nor not now of off on once only or other our ours ourselves out over own re
s same she should so some such t than that the their theirs them themselves then there these they this those
through to too under until up very was wasn we were weren what when where which while who whom why will with
won would you your yours yourself yourselves yes yeah oh ok okay hey hi hello really just also like get got
going go know think well much many thing things one lot
now then still ever anymore currently nowadays lately
""".split())

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def terms(text: str, max_terms: int = 48) -> list[str]:
    """Distinct lowercase content terms of ``text`` in order of first appearance."""
    seen: dict[str, None] = {}
    all_tokens: dict[str, None] = {}
    for tok in _TOKEN.findall(text.lower()):
        all_tokens.setdefault(tok, None)
        if tok not in STOPWORDS and (len(tok) > 1 or tok.isdigit()):
            seen.setdefault(tok, None)
    out = list(seen) or list(all_tokens)
    return out[:max_terms]


def fts_query(text: str, max_terms: int = 48) -> str:
    """An FTS5 MATCH expression: the content terms of ``text`` OR-ed, each quoted (no FTS syntax injection)."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms(text, max_terms))
