"""Errors the business operations raise.

::

    DomainError                  code, http_status, non_retryable, details
    ├── NotFound (404)           CustomerNotFound, BookNotFound, OrderNotFound
    ├── BusinessRefusal          a rule said no; retrying cannot help
    │   ├── StockUnavailable (409)
    │   ├── PaymentFailed (402)
    │   ├── FraudSuspected (402)   the screening before payment refused the order
    │   └── ShippingFailed (422)
    ├── SagaBacklogFull (503)    too many sagas already wait to run: a start refused, nothing
    │                            written; ``retry_after`` says when to send it again
    ├── InvalidCommand (422)     a message whose payload is not the operation's input
    ├── IdempotencyKeyReused (422) an Idempotency-Key sent again with another order
    ├── AlreadyCompensated (409) the operation's compensation ran first (a tombstone)
    ├── InvalidOrderState (409)  e.g. completing a cancelled order
    └── ReservationShipped (409) releasing stock still held by a live shipment; retryable:
                                 it succeeds once the shipment is cancelled

Every ``DomainError`` is final for the operation it came from (``non_retryable``): the same
command would get the same answer. Errors cross a wire as :meth:`DomainError.to_wire` and come
back with :func:`from_wire`; an HTTP layer maps ``http_status`` and ``code`` to a JSON body.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    """Root of the business errors; ``code`` is the class name, the wire ``type``."""

    http_status: ClassVar[int] = 409
    non_retryable: ClassVar[bool] = True
    #: Seconds to wait before sending the same request again (an HTTP layer answers it as
    #: ``Retry-After``), for the few errors that pass with time.
    retry_after: int | None = None

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def code(self) -> str:
        return type(self).__name__

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.code,
            "message": self.message,
            "non_retryable": self.non_retryable,
            "details": self.details,
        }


class NotFound(DomainError):
    http_status = 404


class CustomerNotFound(NotFound):
    pass


class BookNotFound(NotFound):
    pass


class OrderNotFound(NotFound):
    pass


class BusinessRefusal(DomainError):
    pass


class StockUnavailable(BusinessRefusal):
    http_status = 409


class PaymentFailed(BusinessRefusal):
    http_status = 402


class FraudSuspected(BusinessRefusal):
    http_status = 402


class SagaBacklogFull(DomainError):
    """Too many sagas already wait to run (``CLOUDMART_MAX_QUEUED_SAGAS``); nothing was
    written. Sent again after ``retry_after`` seconds, the same start is accepted."""

    http_status = 503

    def __init__(self, message: str, *, retry_after: int, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class ShippingFailed(BusinessRefusal):
    http_status = 422


class InvalidCommand(DomainError):
    http_status = 422


class IdempotencyKeyReused(DomainError):
    """The Idempotency-Key was used before with another order body."""

    http_status = 422


class AlreadyCompensated(DomainError):
    http_status = 409


class InvalidOrderState(DomainError):
    http_status = 409


class ReservationShipped(DomainError):
    http_status = 409
    non_retryable = False


_BY_CODE: dict[str, type[DomainError]] = {
    cls.__name__: cls
    for cls in (
        CustomerNotFound,
        BookNotFound,
        OrderNotFound,
        StockUnavailable,
        PaymentFailed,
        FraudSuspected,
        ShippingFailed,
        AlreadyCompensated,
        InvalidCommand,
        IdempotencyKeyReused,
        InvalidOrderState,
        ReservationShipped,
    )
}


def from_wire(error: dict[str, Any]) -> DomainError:
    """Rebuild a domain error from its wire form (``type``, ``message``, ``details``)."""
    cls = _BY_CODE.get(str(error.get("type")), DomainError)
    return cls(str(error.get("message", "")), **dict(error.get("details") or {}))
