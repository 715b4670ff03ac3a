"""Checkpoints as C2SP signed notes (c2sp.org/signed-note, c2sp.org/tlog-checkpoint), Ed25519.

A checkpoint body is `origin\\nsize\\nbase64(root)\\n` plus optional extension lines; the
note is the body, a blank line, and one line per signature: `— name base64(keyid || sig)`.
Parsing is strict and bounded, because notes arrive from the network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protos.evidence.errors import BadSignatureError, MalformedError, UnknownKeyError
from protos.evidence.keys import fingerprint, public_key_bytes

MAX_NOTE_SIZE = 16 * 1024
MAX_SIGNATURES = 100  # the spec asks verifiers to accept at least 16
ROOT_SIZE = 32
ED25519_TYPE = b"\x01"
_SIG_PREFIX = "\u2014 "  # em dash, space
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX_ID_RE = re.compile(r"[0-9a-f]{8}")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that the log `origin` had `size` entries with head/root `root`.

    For an agent `root` is its chain head after `size` events; for the server, its RFC 6962
    Merkle root. Raises MalformedError when built with values the note format cannot carry.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or not _is_line(self.origin):
            raise MalformedError(
                f"checkpoint origin {self.origin!r} is not one non-empty line without "
                "control characters"
            )
        if isinstance(self.size, bool) or not 0 <= self.size < 10**20:
            raise MalformedError(f"checkpoint size {self.size!r} is not a count of entries")
        if len(self.root) != ROOT_SIZE:
            raise MalformedError(f"checkpoint root is {len(self.root)} bytes; expected {ROOT_SIZE}")
        for ext in self.extensions:
            if not ext or not _is_line(ext):
                raise MalformedError(
                    f"checkpoint extension {ext!r} is not one non-empty line without "
                    "control characters"
                )

    def body(self) -> bytes:
        """The note text that is signed, ending in a newline."""
        root = base64.b64encode(self.root).decode("ascii")
        text = f"{self.origin}\n{self.size}\n{root}\n" + "".join(e + "\n" for e in self.extensions)
        return text.encode("utf-8")


def key_id(name: str, public: bytes) -> bytes:
    """The C2SP key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + ED25519_TYPE + public).digest()[:4]


class NoteSigner:
    """Signs checkpoints as `name` with an Ed25519 key."""

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        _check_name(name)
        self.name = name
        self._key = key
        self._public = public_key_bytes(key)
        self.key_id = key_id(name, self._public)

    def vkey(self) -> str:
        """The verifier key, `name+hexkeyid+base64(0x01 || public key)`, safe to publish."""
        return self.verifier().vkey()

    def verifier(self) -> NoteVerifier:
        """The matching verifier."""
        return NoteVerifier(self.name, self._key.public_key())

    def sign(self, cp: Checkpoint) -> bytes:
        """The complete signed note for `cp`."""
        return self.sign_text(cp.body())

    def sign_text(self, text: bytes) -> bytes:
        """A signed note over any note text; MalformedError if the text cannot be one."""
        if not text.endswith(b"\n"):
            raise MalformedError("note text does not end with a newline")
        _check_text(text)
        signature = base64.b64encode(self.key_id + self._key.sign(text)).decode("ascii")
        return text + f"\n{_SIG_PREFIX}{self.name} {signature}\n".encode()


class NoteVerifier:
    """Verifies note signatures made by one named Ed25519 key."""

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        _check_name(name)
        self.name = name
        self._public_key = public_key
        self.public = public_key_bytes(public_key)
        self.key_id = key_id(name, self.public)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse `name+hexkeyid+base64(0x01 || key)`; MalformedError if it is not one."""
        parts = vkey.split("+", 2)  # the base64 key itself may hold a plus sign
        if len(parts) != 3:
            raise MalformedError(
                f"verifier key {vkey[:80]!r} is not of the form name+keyid+base64key"
            )
        name, hex_id, encoded = parts
        if not _HEX_ID_RE.fullmatch(hex_id):
            raise MalformedError(f"verifier key id {hex_id[:16]!r} is not 8 lowercase hex digits")
        raw = _b64(encoded, what="verifier key")
        if len(raw) != 33 or raw[:1] != ED25519_TYPE:
            raise MalformedError(
                f"verifier key for {name!r} is not an Ed25519 key (type 0x01 and 32 bytes)"
            )
        verifier = cls(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
        if verifier.key_id.hex() != hex_id:
            raise MalformedError(
                f"verifier key for {name!r} states key id {hex_id}; the key's id is "
                f"{verifier.key_id.hex()}"
            )
        return verifier

    def vkey(self) -> str:
        """The verifier key, `name+hexkeyid+base64(0x01 || public key)`."""
        encoded = base64.b64encode(ED25519_TYPE + self.public).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        """True when `signature` (without the key id) signs `text`."""
        try:
            self._public_key.verify(signature, text)
        except InvalidSignature:
            return False
        return True


def verifiers_for(
    note: bytes, public: bytes, default_name: str = "custodes-agent"
) -> list[NoteVerifier]:
    """Verifiers of `public` under every key name whose key id matches a signature on `note`.

    A signer's name is not known in advance (an agent signs as its origin, a server as its
    key name): the key id binds name and key, so only names that fit the key are tried.
    With no matching signature (or an unparsable note) the verifier is named `default_name`
    so that verification then fails with UnknownKeyError naming the expected key.
    """
    key = Ed25519PublicKey.from_public_bytes(public)
    try:
        _, signatures = parse_note(note)
    except MalformedError:
        return [NoteVerifier(default_name, key)]
    names = sorted({name for name, kid, _ in signatures if key_id(name, public) == kid})
    return [NoteVerifier(name, key) for name in names] or [NoteVerifier(default_name, key)]


def parse_note(note: bytes) -> tuple[bytes, list[tuple[str, bytes, bytes]]]:
    """Split a signed note into its text and its (name, key id, signature) lines, unverified.

    Raises MalformedError for anything the signed-note spec does not allow.
    """
    if not isinstance(note, bytes | bytearray | memoryview):
        raise MalformedError(f"note is a {type(note).__name__}; expected bytes")
    note = bytes(note)
    if len(note) > MAX_NOTE_SIZE:
        raise MalformedError(f"note is {len(note)} bytes; at most {MAX_NOTE_SIZE} are accepted")
    decoded = _check_text(note)
    if not decoded.endswith("\n"):
        raise MalformedError("note does not end with a newline")
    split = decoded.rfind("\n\n")
    if split < 0:
        raise MalformedError("note has no blank line between its text and its signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    lines = block.split("\n")[:-1]
    if not lines:
        raise MalformedError("note has no signature lines")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedError(
            f"note has {len(lines)} signature lines; at most {MAX_SIGNATURES} are accepted"
        )
    signatures: list[tuple[str, bytes, bytes]] = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith(_SIG_PREFIX):
            raise MalformedError(f"signature line {number} does not start with an em dash")
        name, sep, encoded = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep:
            raise MalformedError(f"signature line {number} has no space after the key name")
        _check_name(name)
        raw = _b64(encoded, what=f"signature line {number}")
        if len(raw) < 5:
            raise MalformedError(
                f"signature line {number} holds {len(raw)} bytes; expected a key id and a signature"
            )
        signatures.append((name, raw[:4], raw[4:]))
    return text.encode("utf-8"), signatures


def parse_checkpoint(note: bytes) -> tuple[Checkpoint, list[tuple[str, bytes, bytes]]]:
    """Parse a checkpoint note without verifying it; MalformedError on anything off-format."""
    cp, signatures, _ = _parse_checkpoint(note)
    return cp, signatures


def _parse_checkpoint(
    note: bytes,
) -> tuple[Checkpoint, list[tuple[str, bytes, bytes]], bytes]:
    text, signatures = parse_note(note)
    lines = text.decode("utf-8").split("\n")[:-1]
    if len(lines) < 3:
        raise MalformedError(
            f"checkpoint has {len(lines)} lines; expected origin, size and root hash"
        )
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise MalformedError("checkpoint origin line is empty")
    if not _SIZE_RE.fullmatch(size_text):
        raise MalformedError(
            f"checkpoint size {size_text[:30]!r} is not a decimal count without leading zeros"
        )
    root = _b64(root_text, what="checkpoint root hash")
    if len(root) != ROOT_SIZE:
        raise MalformedError(f"checkpoint root hash is {len(root)} bytes; expected {ROOT_SIZE}")
    if any(not ext for ext in extensions):
        raise MalformedError("checkpoint has an empty extension line")
    return Checkpoint(origin, int(size_text), root, tuple(extensions)), signatures, text


def verify_note(note: bytes, verifiers: Sequence[NoteVerifier]) -> bytes:
    """Return the text of `note` once a trusted key's signature on it verifies.

    Signatures by unknown keys are ignored, as the spec says. Raises UnknownKeyError when no
    signature is by a key in `verifiers` (and always when `verifiers` is empty),
    BadSignatureError when a trusted key's signature fails, MalformedError when unparsable.
    """
    if not verifiers:
        raise UnknownKeyError("no verifier keys were given; refusing to accept any note")
    text, signatures = parse_note(note)
    _verify_signatures(text, signatures, verifiers, "note", None)
    return text


def verify_checkpoint(
    note: bytes, verifiers: Sequence[NoteVerifier], *, origin: str | None = None
) -> Checkpoint:
    """Return the checkpoint in `note` once a trusted key's signature on it verifies.

    Raises UnknownKeyError when no signature is by a key in `verifiers` (and always when
    `verifiers` is empty), BadSignatureError when a trusted key's signature fails or the
    origin is not `origin`, MalformedError when the note cannot be parsed.
    """
    if not verifiers:
        raise UnknownKeyError("no verifier keys were given; refusing to accept any checkpoint")
    cp, signatures, text = _parse_checkpoint(note)
    if origin is not None and cp.origin != origin:
        raise BadSignatureError(
            f"checkpoint origin is {cp.origin[:80]!r}; expected {origin!r}", seq=cp.size
        )
    what = f"checkpoint for {cp.origin[:80]!r} at size {cp.size}"
    _verify_signatures(text, signatures, verifiers, what, cp.size)
    return cp


def _verify_signatures(
    text: bytes,
    signatures: list[tuple[str, bytes, bytes]],
    verifiers: Sequence[NoteVerifier],
    what: str,
    seq: int | None,
) -> None:
    by_id = {(v.name, v.key_id): v for v in verifiers}
    verified = 0
    for name, kid, signature in signatures:
        verifier = by_id.get((name, kid))
        if verifier is None:
            continue  # the spec: ignore signatures by unknown keys (witnesses, rotation)
        if not verifier.verify(text, signature):
            raise BadSignatureError(
                f"signature by {name!r} does not verify on the {what} "
                f"(key fingerprint {fingerprint(verifier.public)})",
                seq=seq,
            )
        verified += 1
    if not verified:
        seen = ", ".join(f"{n}+{k.hex()}" for n, k, _ in signatures[:5])
        known = ", ".join(f"{v.name}+{v.key_id.hex()}" for v in verifiers[:5])
        raise UnknownKeyError(
            f"the {what} is signed by {seen}; expected a signature by {known}", seq=seq
        )


def _check_text(data: bytes) -> str:
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError(f"note is not valid UTF-8 (byte {exc.start})") from exc
    bad = next((c for c in decoded if c < " " and c != "\n"), None)
    if bad is not None:
        raise MalformedError(f"note contains control character {bad!r}; only newline is allowed")
    return decoded


def _is_line(value: str) -> bool:
    return all(c >= " " for c in value)


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name) or not _is_line(name):
        raise MalformedError(
            f"key name {name[:80]!r} is empty or holds a space, a plus sign or a control character"
        )


def _b64(text: str, *, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedError(f"{what} is not canonical base64")
    return raw
