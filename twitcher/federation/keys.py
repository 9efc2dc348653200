"""The signing key file: written once by ``twitcherctl keygen``, read once at start-up."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..exceptions import ConfigurationError
from .biscuit import SigningKey, generate_private_key_pem, load_signing_key


def write_signing_key(path: str) -> SigningKey:
    """Write a new private key to ``path`` (mode 0600, never over an existing file); return it.

    The file is created with ``O_EXCL`` and its mode set at creation, so the key is never
    readable by others, not even for an instant, and an existing key is never lost.
    """
    pem = generate_private_key_pem()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(pem)
    return load_signing_key(pem)


def read_signing_key(path: str) -> SigningKey:
    """The key of ``twitcher.signing_key``; ConfigurationError naming the key when unusable."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"twitcher.signing_key: cannot read {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(f"twitcher.signing_key: {path} is readable by other users; chmod 600 it")
    try:
        return load_signing_key(text)
    except ValueError as exc:
        raise ConfigurationError(f"twitcher.signing_key: {path}: {exc}") from None
