"""Who may see what: the province sees every hall, a city (or county) office its halls, a hall manager
their own hall. One type, used by every page, export and query, so a URL edited by hand meets the same
rule as a link: the rule is in the SQL, not in which links a page shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .db import Conn

__all__ = ["ROLES", "Role", "Scope", "User"]

Role = Literal["province", "city", "hall"]
ROLES: tuple[Role, ...] = ("province", "city", "hall")
ROLE_NAMES = {"province": "省级分析/管理 Province", "city": "市县公司 City office",
              "hall": "营业厅 Hall manager"}


@dataclass(frozen=True)
class Scope:
    role: Role
    value: str | None = None        # city: the city's name (halls.city); hall: the hall id; province: None

    def __post_init__(self) -> None:
        if (self.role == "province") != (self.value is None):
            need = "takes no" if self.role == "province" else "needs a"
            raise ValueError(f"scope {self.role!r} {need} value")

    def sql(self, hall_col: str = "hall") -> tuple[str, list[Any]]:
        """A condition (``" AND ..."``, or "") that keeps only this scope's halls, and its parameters."""
        if self.role == "province":
            return "", []
        if self.role == "city":
            return f" AND {hall_col} IN (SELECT hall FROM halls WHERE city = ?)", [self.value]
        return f" AND {hall_col} = ?", [self.value]

    def allows_hall(self, conn: Conn, hall: str) -> bool:
        if self.role == "province":
            return True
        if self.role == "hall":
            return hall == self.value
        return conn.scalar("SELECT 1 FROM halls WHERE hall = ? AND city = ?", (hall, self.value)) is not None

    def allows_city(self, city: str) -> bool:
        return self.role == "province" or (self.role == "city" and city == self.value)


@dataclass(frozen=True)
class User:
    id: int
    username: str
    name: str
    role: Role
    scope_value: str | None

    @property
    def scope(self) -> Scope:
        return Scope(self.role, self.scope_value)

    @property
    def is_admin(self) -> bool:
        """Province users administer: enrollments, users, API clients."""
        return self.role == "province"
