"""What ``cloudmart check`` answers: each violation, the report, and the baseline a check
compares the conservation totals with."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

__all__ = ["SHOWN_PER_RULE", "Baseline", "CheckReport", "Violation"]

SHOWN_PER_RULE = 50


@dataclass(frozen=True)
class Violation:
    rule: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.subject}: {self.detail}"


@dataclass
class Baseline:
    """Per book ``available + reserved + shipped``, per customer ``balance + captured``."""

    stock: dict[int, int] = field(default_factory=dict)
    money: dict[int, Decimal] = field(default_factory=dict)
    taken_at: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "taken_at": self.taken_at,
                "stock": {str(k): v for k, v in sorted(self.stock.items())},
                "money": {str(k): str(v) for k, v in sorted(self.money.items())},
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> Baseline:
        data = json.loads(text)
        return cls(
            stock={int(k): int(v) for k, v in data.get("stock", {}).items()},
            money={int(k): Decimal(v) for k, v in data.get("money", {}).items()},
            taken_at=str(data.get("taken_at", "")),
        )


@dataclass
class CheckReport:
    violations: list[Violation]
    sagas: dict[str, int]
    orders: dict[str, int]
    checked_at: str
    rules_run: list[str] = field(default_factory=list)
    """The rules this check ran (``stock``, ``money`` and ``ledger`` only over the whole
    database or with a baseline)."""

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_rule(self) -> dict[str, int]:
        return dict(Counter(v.rule for v in self.violations))

    def render(self, limit: int = SHOWN_PER_RULE) -> str:
        lines = [
            f"sagas: {_counts(self.sagas)}",
            f"orders: {_counts(self.orders)}",
        ]
        if self.ok:
            lines.append("every invariant holds")
            return "\n".join(lines)
        lines.append(f"{len(self.violations)} violation(s): {_counts(self.by_rule())}")
        shown: Counter[str] = Counter()
        for violation in self.violations:
            shown[violation.rule] += 1
            if shown[violation.rule] <= limit:
                lines.append(f"  {violation}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked_at": self.checked_at,
            "sagas": self.sagas,
            "orders": self.orders,
            "violations_by_rule": self.by_rule(),
            "violations": [asdict(v) for v in self.violations],
        }


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
