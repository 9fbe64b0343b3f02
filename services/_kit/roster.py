"""The CloudMart processes, once: each one's name, port and the saga styles that run it.

Everything that lists services reads this: the settings (ports), the command line (``serve``,
``up``, ``bench``), the event consumers, the failure points and the app registry.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BASE_PORT",
    "DOMAIN_SERVICES",
    "SERVICES",
    "SERVICE_NAMES",
    "SERVICE_PORTS",
    "ServiceSpec",
    "ports_from",
    "services_of",
    "spec_of",
]

BASE_PORT = 8000
ORCHESTRATION = "orchestration"
CHOREOGRAPHY = "choreography"


@dataclass(frozen=True)
class ServiceSpec:
    """One process: ``name``, its port (``base + offset``), the patterns it runs in, and the
    module whose ``build_app(settings, *, database=None)`` builds it (``None``: the kit builds
    it from ``services.<name>.api.router`` with the service's command or event consumer)."""

    name: str
    offset: int
    patterns: frozenset[str]
    factory: str | None = None

    @property
    def port(self) -> int:
        return BASE_PORT + self.offset


_BOTH = frozenset({ORCHESTRATION, CHOREOGRAPHY})

SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("order", 1, _BOTH),
    ServiceSpec("inventory", 2, _BOTH),
    ServiceSpec("payment", 3, _BOTH),
    ServiceSpec("shipping", 4, _BOTH),
    ServiceSpec(
        "orchestrator", 5, frozenset({ORCHESTRATION}), factory="services.orchestrator.main"
    ),
)
SERVICE_NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)
SERVICE_PORTS: dict[str, int] = {s.name: s.port for s in SERVICES}
# The services that hold the business operations: every pattern runs them.
DOMAIN_SERVICES: tuple[str, ...] = tuple(s.name for s in SERVICES if s.patterns == _BOTH)


def services_of(pattern: str) -> list[str]:
    """The processes ``pattern`` runs, in port order."""
    return [s.name for s in SERVICES if pattern in s.patterns]


def ports_from(base_port: int | None) -> dict[str, int]:
    """Each service's port: ``base_port`` + its offset (order + 1 ... orchestrator + 5), else the
    standard ones."""
    base = BASE_PORT if base_port is None else base_port
    return {s.name: base + s.offset for s in SERVICES}


def spec_of(name: str) -> ServiceSpec:
    """The service named ``name``; ValueError naming the known ones otherwise."""
    for spec in SERVICES:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}")
