"""Which ratings the assessment leaves out: those of an upheld appeal (误评, 恶意差评, not the hall's
customer). The rating stays stored, signed and visible everywhere; only figures that say "for
assessment" apply this condition. One definition for the figures, the rankings, the assessment and the
通报."""

from __future__ import annotations

__all__ = ["excluded_sql", "included_sql"]


def included_sql(id_col: str = "id") -> str:
    """``" AND ..."`` keeping the ratings no upheld appeal excludes."""
    return f" AND {id_col} NOT IN (SELECT rating FROM appeals WHERE state = 'upheld')"


def excluded_sql(id_col: str = "id") -> str:
    """``" AND ..."`` keeping only the ratings an upheld appeal excludes."""
    return f" AND {id_col} IN (SELECT rating FROM appeals WHERE state = 'upheld')"
