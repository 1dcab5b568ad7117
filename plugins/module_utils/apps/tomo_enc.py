# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tomo's own encrypted backup file (``.enc``), read as hostile input and turned into the guide's document.

Tomo's ``BackupService`` (backend/src/services/backup_service.py at 99f7a7f)
writes ``salt (16 bytes) + Fernet token``; the Fernet key is
``base64url(PBKDF2-HMAC-SHA256(password, salt, 480000 iterations, 32 bytes))``;
the token holds the JSON ``{version "1.0", timestamp, users, servers, settings,
app_configs}``: users without their password hashes (``id, username, email,
role, is_active, created_at``), servers as their rows (credentials are not in
it), settings as ``{key: value}`` and ``app_configs`` always empty.

This is a migration path into the guide's document: users, servers and
``system_settings`` rows, everything else listed in ``absent_tables`` and left
as it is by an import. A user that is new to the target cannot be added (Tomo
needs a password hash) and is reported; matched users are updated.

Decrypting needs the ``cryptography`` package (``python3-cryptography`` on
Debian), imported only here and only for this path. The password is used
to derive the key and nowhere else: never logged, never in an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from .tomo_document import check_document, parse, read_capped
from .tomo_schema import (
    FORMAT_VERSION,
    MAX_DOCUMENT_SIZE,
    NewerError,
    TomoError,
    _a_json,
    _json_type,
    _size_text,
    parse_format_version,
)

SALT_SIZE = 16
ITERATIONS = 480000

# The largest .enc read: a Fernet token is the base64 of 57 bytes plus the JSON padded to 16 bytes,
# so a document of MAX_DOCUMENT_SIZE takes 4/3 of it, plus the salt.
MAX_ENC_SIZE = (MAX_DOCUMENT_SIZE + 16 + 57) * 4 // 3 + 4 + SALT_SIZE

# Tomo's format version this reads.
ENC_VERSION = "1.0"

# Tables an .enc file never holds: an import leaves them as they are.
NOT_IN_ENC = ["agents", "retention_settings", "server_credentials", "system_info"]


def is_enc(path: str) -> bool:
    return path.endswith(".enc")


def _fernet_token(token: bytes, path: str) -> None:
    """Refuse what cannot be a Fernet token, before the (slow) key derivation."""
    try:
        raw = base64.urlsafe_b64decode(token.strip())
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) < 1 + 8 + 16 + 16 + 32 or raw[0] != 0x80 or (len(raw) - 57) % 16:
        raise TomoError(f"{path} is not one of Tomo's encrypted backups: its token is malformed")


def decrypt(path: str, password: str | None) -> bytes:
    """The JSON inside the ``.enc`` file at ``path``; TomoError with one sentence when it cannot be had."""
    if not password:
        raise TomoError(f"{path} is one of Tomo's encrypted backups: its password is needed to read it")
    raw = read_capped(path, MAX_ENC_SIZE)
    if len(raw) <= SALT_SIZE:
        raise TomoError(f"{path} is not one of Tomo's encrypted backups: it is too short")
    salt, token = raw[:SALT_SIZE], raw[SALT_SIZE:]
    _fernet_token(token, path)
    try:
        from cryptography.fernet import Fernet, InvalidToken
    except ImportError:
        raise TomoError(
            f"reading {path}, one of Tomo's encrypted backups, needs the Python package cryptography on this host "
            "(Debian: apt install python3-cryptography)"
        ) from None
    key = base64.urlsafe_b64encode(hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, ITERATIONS, 32))
    try:
        plain = Fernet(key).decrypt(token.strip())
    except InvalidToken:
        raise TomoError(f"{path} cannot be decrypted: the password is wrong, or the file was changed") from None
    if len(plain) > MAX_DOCUMENT_SIZE:
        raise TomoError(
            f"{path} holds {len(plain)} bytes of data, more than the {_size_text(MAX_DOCUMENT_SIZE)} a document may be"
        )
    return bytes(plain)


def to_document(content: Any) -> dict[str, Any]:
    """Tomo's ``{version, timestamp, users, servers, settings, app_configs}`` → the guide's document (unchecked)."""
    if not isinstance(content, dict):
        raise TomoError(f"it holds a JSON {_json_type(content)}, not an object")
    missing = [k for k in ("version", "timestamp", "users", "servers", "settings") if k not in content]
    if missing:
        raise TomoError(f"it has no {missing[0]}")
    version = parse_format_version(content["version"])
    if version > parse_format_version(ENC_VERSION):
        raise NewerError(
            f"its format {content['version']} is newer than the {ENC_VERSION} this selfhost.dr reads: "
            "upgrade selfhost.dr"
        )
    settings = content["settings"]
    if not isinstance(settings, dict):
        raise TomoError(f"settings must be an object, not {_a_json(settings)}")
    configs = content.get("app_configs", [])
    if not isinstance(configs, list):
        raise TomoError(f"app_configs must be a list, not {_a_json(configs)}")
    rows = [
        {"setting_key": key, "setting_value": value if isinstance(value, str) else json.dumps(value)}
        for key, value in settings.items()
    ]
    return {
        "version": FORMAT_VERSION,
        "created_at": content["timestamp"],
        "application_version": None,
        "generator": "tomo (encrypted backup)",
        "absent_tables": NOT_IN_ENC,
        "data": {"users": content["users"], "servers": content["servers"], "settings": {"system_settings": rows}},
        "_app_configs": len(configs),
    }


def load_enc(path: str, password: str | None) -> dict[str, Any]:
    """Read, decrypt and check Tomo's encrypted backup at ``path``; return the guide's document it amounts to."""
    content = parse(decrypt(path, password), path)
    try:
        doc = to_document(content)
        configs = doc.pop("_app_configs")
        doc = check_document(doc)
    except NewerError as exc:
        raise NewerError(f"{path}: {exc}") from None
    except TomoError as exc:
        raise TomoError(f"{path} is not a valid Tomo backup: {exc}") from None
    doc["_source_format"] = "tomo-enc"
    doc["_app_configs"] = configs
    return doc
