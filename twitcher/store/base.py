"""The small interface every store backend implements.

Both backends pass the same contract suite (``tests/test_store.py``). Every method raises
:class:`~twitcher.exceptions.StoreUnavailable` when the database does not answer, so callers
can fail closed without knowing which backend they talk to.
"""
from __future__ import annotations

import abc
from datetime import datetime
from typing import Dict, List, Optional, Sequence

from ..jobs import JobRecord
from ..services import Service
from ..tokens import AccessToken

#: Expired token records are kept this long (by every backend) so that a client is told
#: "expired" rather than "unknown"; validity is judged at read time, never by this cleanup.
EXPIRED_GRACE_SECONDS = 24 * 3600


class TokenStore(abc.ABC):
    """Token records, keyed by the SHA-256 digest of the token."""

    @abc.abstractmethod
    def save_token(self, token: AccessToken) -> None:
        """Store a new token record; a digest stored already raises
        :class:`~twitcher.exceptions.InvalidArgument` (never silently replaced)."""

    @abc.abstractmethod
    def fetch_token(self, digest: str) -> Optional[AccessToken]:
        """The record for ``digest``, revoked or expired ones included, or None when unknown.

        Validity is decided by :func:`twitcher.tokens.check_token`, not here, so that a client
        can be told whether its token is unknown, revoked or expired.
        """

    @abc.abstractmethod
    def revoke_token(self, digest: str) -> bool:
        """Mark one token revoked; True when a usable token was revoked."""

    @abc.abstractmethod
    def revoke_all_tokens(self) -> int:
        """Mark every token revoked; return how many were usable before."""

    @abc.abstractmethod
    def purge_expired_tokens(self) -> int:
        """Delete records whose expiry has passed; housekeeping only, never needed for correctness."""


class RevocationStore(abc.ABC):
    """Revocation ids of signed tokens (:mod:`twitcher.federation`): those minted here, and those revoked.

    Signed tokens are verified without the store; it only keeps what this site publishes at
    ``<protected_path>/revoked``, and the first id of each token minted here so that
    ``revoke_all_tokens`` can revoke those too. ``expires_at`` bounds how long an id is kept.
    """

    @abc.abstractmethod
    def record_signed_token(self, revocation_id: str, expires_at: datetime) -> None:
        """Note a signed token minted here (not revoked); recording an id twice changes nothing."""

    @abc.abstractmethod
    def revoke_ids(self, revocation_ids: Sequence[str], expires_at: datetime) -> int:
        """Mark ids revoked (recorded or not), kept until ``expires_at`` at least; return how many
        were not revoked before."""

    @abc.abstractmethod
    def revoke_all_signed_tokens(self) -> int:
        """Revoke every recorded, unexpired signed token; return how many were not revoked before."""

    @abc.abstractmethod
    def revoked_ids(self) -> List[str]:
        """The revoked ids whose token may still be alive (``expires_at`` in the future), sorted."""


class ServiceStore(abc.ABC):
    """Registered services, unique by name."""

    @abc.abstractmethod
    def save_service(self, service: Service, overwrite: bool = True) -> Service:
        """Store ``service``; raise :class:`~twitcher.exceptions.ServiceExists` when its name
        is taken and ``overwrite`` is false."""

    @abc.abstractmethod
    def fetch_by_name(self, name: str) -> Optional[Service]:
        """The service registered under ``name``, or None."""

    @abc.abstractmethod
    def fetch_by_url(self, url: str) -> Optional[Service]:
        """The first service (by name) registered with exactly ``url``, or None."""

    @abc.abstractmethod
    def list_services(self) -> List[Service]:
        """All services, sorted by name."""

    @abc.abstractmethod
    def delete_service(self, name: str) -> bool:
        """Remove one service; True when it existed."""

    @abc.abstractmethod
    def clear_services(self) -> int:
        """Remove every service; return how many there were."""


class JobStore(abc.ABC):
    """Owners of jobs relayed by Twitcher (:mod:`twitcher.jobs`), unique by service and job id."""

    @abc.abstractmethod
    def save_job(self, job: JobRecord) -> bool:
        """Store a job record; False (and nothing changed) when the service's job id is recorded
        already and has not expired: a job never changes owner."""

    @abc.abstractmethod
    def fetch_jobs(self, service: str, job_ids: Sequence[str]) -> Dict[str, JobRecord]:
        """The unexpired records among ``job_ids`` of ``service``, by job id; expiry is judged
        at read time, as for tokens."""

    @abc.abstractmethod
    def purge_expired_jobs(self) -> int:
        """Delete expired job records; housekeeping only."""


class Store(TokenStore, RevocationStore, ServiceStore, JobStore):
    """One backend holds tokens, services and job owners, over one connection per process."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Return when the database answers; raise StoreUnavailable otherwise."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections (tests, shutdown)."""
