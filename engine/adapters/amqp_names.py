"""Every RabbitMQ name the engine uses, each carrying the deployment's namespace.

Two deployments (or two test runs) share one broker safely because nothing here is global:
``<ns>.commands`` (durable direct exchange, routing key = service name), ``<ns>.<service>.commands``
(a service's durable command queue), ``<ns>.dlx`` / ``<ns>.<service>.dead`` (dead letters), and
``<ns>.replies.<instance>`` (one client's exclusive reply queue).
"""

from __future__ import annotations

__all__ = [
    "BATCH_HEADER",
    "DELIVERIES_HEADER",
    "IDEMPOTENCY_KEY_HEADER",
    "METHOD_HEADER",
    "command_queue",
    "commands_exchange",
    "dead_letter_exchange",
    "dead_letter_queue",
    "reply_queue",
]

# Message headers. ``DELIVERIES_HEADER`` counts the failed deliveries of a command (classic
# queues keep no delivery count of their own; see services._kit.command_server).
IDEMPOTENCY_KEY_HEADER = "idempotency_key"
METHOD_HEADER = "method"
DELIVERIES_HEADER = "x-cloudmart-deliveries"
# On a message that carries several commands, or several replies: how many (see
# engine.adapters.rabbitmq).
BATCH_HEADER = "x-cloudmart-batch"


def commands_exchange(namespace: str) -> str:
    return f"{namespace}.commands"


def command_queue(namespace: str, service: str) -> str:
    return f"{namespace}.{service}.commands"


def dead_letter_exchange(namespace: str) -> str:
    return f"{namespace}.dlx"


def dead_letter_queue(namespace: str, service: str) -> str:
    return f"{namespace}.{service}.dead"


def reply_queue(namespace: str, instance: str) -> str:
    return f"{namespace}.replies.{instance}"
