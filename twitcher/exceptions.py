"""The one error vocabulary of Twitcher.

Every module raises these; exactly two places translate them for the outside world:
:mod:`twitcher.ows.exceptions` renders OWS ``ExceptionReport`` documents for OWS clients and
:mod:`twitcher.admin.rpcinterface` turns them into XML-RPC ``Fault`` answers for admin clients.
"""
from __future__ import annotations

from typing import Optional


class TwitcherError(Exception):
    """Base class of every error Twitcher raises on purpose."""


class ConfigurationError(TwitcherError):
    """A setting is missing or invalid; raised at start-up, naming the key."""


class StoreUnavailable(TwitcherError):
    """The token/service store did not answer; callers must fail closed."""


class InvalidArgument(TwitcherError):
    """An admin API argument is invalid; the message says which and why."""


class ServiceExists(InvalidArgument):
    """A service with this name is registered already and overwrite was not allowed."""


class OWSException(TwitcherError):
    """An error that an OWS client receives as an ``ExceptionReport`` document.

    ``code`` is the OWS ``exceptionCode``, ``status`` the HTTP status of the answer and
    ``locator`` names the offending parameter or request, as OGC 06-121r3 asks.
    """

    code = "NoApplicableCode"
    status = 500

    def __init__(self, text: str, locator: Optional[str] = None, status: Optional[int] = None):
        super().__init__(text)
        self.text = text
        self.locator = locator
        if status is not None:
            self.status = status


class MissingParameterValue(OWSException):
    code = "MissingParameterValue"
    status = 400


class InvalidParameterValue(OWSException):
    code = "InvalidParameterValue"
    status = 400


class OperationNotSupported(OWSException):
    """Unsupported request type (400) or HTTP method (pass ``status=405``)."""

    code = "OperationNotSupported"
    status = 400


class MalformedRequest(OWSException):
    """The body is not well-formed XML, or carries something no OWS request needs."""

    status = 400


class RequestTooLarge(OWSException):
    status = 413


class AccessDenied(OWSException):
    """No usable token: missing, unknown, revoked or expired (the text says which)."""

    status = 401

    def __init__(self, text: str, locator: Optional[str] = "access_token"):
        super().__init__(text, locator=locator)


class TokenOutOfScope(AccessDenied):
    """An authentic, live signed token used for a service or operation it does not allow.

    403, not 401: the client has a valid credential, and sending it again would not help.
    """

    status = 403


class Forbidden(OWSException):
    """A valid token, but not for this: someone else's job (403; nothing is forwarded)."""

    status = 403


class UnknownService(InvalidParameterValue):
    status = 404

    def __init__(self, name: str):
        super().__init__(f"No service is registered under the name {name!r}.", locator="service_name")


class BadGateway(OWSException):
    status = 502


class GatewayTimeout(OWSException):
    status = 504


class ServiceBusy(OWSException):
    """The service has as many exchanges in flight as Twitcher allows; ``retry_after`` seconds."""

    status = 503

    def __init__(self, text: str, retry_after: int):
        super().__init__(text)
        self.retry_after = retry_after


class StoreDown(OWSException):
    """What an OWS client sees when :class:`StoreUnavailable` was raised."""

    status = 503
