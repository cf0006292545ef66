"""Signed checkpoints: the chain's head (sequence number and hash) signed with Ed25519 (RFC 8032).

Whoever can write the database can rewrite every record after a change and recompute every hash after it;
they cannot sign. A checkpoint pins the chain up to its sequence number: verification recomputes the chain
and checks that each checkpoint's hash is the hash of the record at its sequence number. After a retention
purge, the checkpoint at the last purged record anchors the first kept one (its ``prev_hash``).

The signed payload is the canonical JSON (:mod:`emage_audit.domain.canonical`) of ``{"chain", "seq",
"hash", "recorded_at", "signed_at", "key_id"}``, ``chain`` being :data:`CHAIN_ID` (so no signature made for
something else can pass for a checkpoint), ``key_id`` the first 16 hex digits of the SHA-256 of the raw
public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from emage_audit.domain.canonical import canonical_json
from emage_common.events import format_rfc3339

CHAIN_ID: Final = "fr.emage.audit.chain.v1"


class InvalidKeyError(ValueError):
    """A configured key is not a base64 32-byte Ed25519 key."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The chain up to ``seq`` (whose record has ``hash``), signed by the key ``key_id``."""

    seq: int
    hash: str
    recorded_at: str
    """When the record at ``seq`` was appended (RFC 3339): retention counts from it."""
    signed_at: str
    key_id: str
    signature: str
    """Base64 Ed25519 signature of :meth:`payload`."""

    def payload(self) -> bytes:
        return signed_payload(self.seq, self.hash, self.recorded_at, self.signed_at, self.key_id)


def signed_payload(seq: int, hash_: str, recorded_at: str, signed_at: str, key_id: str) -> bytes:
    return canonical_json(
        {
            "chain": CHAIN_ID,
            "seq": seq,
            "hash": hash_,
            "recorded_at": recorded_at,
            "signed_at": signed_at,
            "key_id": key_id,
        }
    )


def _raw_key(encoded: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error as error:
        raise InvalidKeyError(f"{what} is not base64: {error}") from None
    if len(raw) != 32:
        raise InvalidKeyError(f"{what} is {len(raw)} bytes, an Ed25519 key is 32")
    return raw


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw public key."""
    return hashlib.sha256(public_key_bytes(key)).hexdigest()[:16]


class CheckpointSigner:
    """Signs checkpoints with the service's private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def from_base64_seed(cls, seed: str) -> CheckpointSigner:
        """A signer from the base64 of a 32-byte Ed25519 private key (RFC 8032 §5.1.5 seed)."""
        return cls(Ed25519PrivateKey.from_private_bytes(_raw_key(seed, "the checkpoint signing key")))

    def sign(self, seq: int, hash_: str, recorded_at: str, signed_at: datetime) -> Checkpoint:
        signed = format_rfc3339(signed_at)
        signature = self._private_key.sign(signed_payload(seq, hash_, recorded_at, signed, self.key_id))
        return Checkpoint(
            seq=seq,
            hash=hash_,
            recorded_at=recorded_at,
            signed_at=signed,
            key_id=self.key_id,
            signature=base64.b64encode(signature).decode("ascii"),
        )


class TrustedKeys:
    """The public keys whose checkpoints verification accepts: the current one and earlier ones."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys: Mapping[str, Ed25519PublicKey] = MappingProxyType({key_id(k): k for k in keys})

    @classmethod
    def of(cls, signer: CheckpointSigner, previous_public_keys: Iterable[str] = ()) -> TrustedKeys:
        previous = [
            Ed25519PublicKey.from_public_bytes(_raw_key(encoded, "a previous checkpoint public key"))
            for encoded in previous_public_keys
        ]
        return cls([signer.public_key, *previous])

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def verify(self, checkpoint: Checkpoint) -> bool:
        """Whether ``checkpoint`` carries a valid signature by one of the trusted keys."""
        key = self._keys.get(checkpoint.key_id)
        if key is None:
            return False
        try:
            key.verify(base64.b64decode(checkpoint.signature, validate=True), checkpoint.payload())
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True
