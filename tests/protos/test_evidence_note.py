"""C2SP signed notes and checkpoints: known answers, round trips, strict parsing."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protos.evidence import (
    BadSignatureError,
    Checkpoint,
    MalformedError,
    NoteSigner,
    NoteVerifier,
    UnknownKeyError,
    generate_key,
    parse_checkpoint,
    parse_note,
    verify_checkpoint,
    verify_note,
)
from protos.evidence.note import MAX_NOTE_SIZE

# The example key and note of golang.org/x/mod/sumdb/note (the reference implementation):
# Ed25519 is deterministic, so signing the same text must give the same bytes.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + b"\n\xe2\x80\x94 PeterNeumann "
    b"x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ORIGIN = "custodes.example/agent/clinic-01"
ROOT = bytes(range(32))


def _go_signer() -> NoteSigner:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])[1:]
    return NoteSigner("PeterNeumann", Ed25519PrivateKey.from_private_bytes(seed))


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, generate_key())


def _note(signer: NoteSigner, size: int = 42, **kw: object) -> bytes:
    return signer.sign(Checkpoint(ORIGIN, size, ROOT, **kw))  # type: ignore[arg-type]


def test_signer_reproduces_the_go_reference_vkey_and_note() -> None:
    go = _go_signer()
    assert go.vkey() == GO_VKEY
    assert go.key_id.hex() == "c74f20a3"
    assert go.sign_text(GO_TEXT) == GO_NOTE


def test_go_reference_note_verifies_with_its_vkey() -> None:
    assert verify_note(GO_NOTE, [NoteVerifier.from_vkey(GO_VKEY)]) == GO_TEXT


def test_go_reference_note_with_changed_text_is_refused() -> None:
    forged = GO_NOTE.replace(b"cryptography", b"cryptographY")
    with pytest.raises(BadSignatureError):
        verify_note(forged, [NoteVerifier.from_vkey(GO_VKEY)])


def test_checkpoint_body_follows_tlog_checkpoint() -> None:
    cp = Checkpoint("example.com/log", 20852163, ROOT, ("ext one",))
    root64 = base64.b64encode(ROOT).decode()
    assert cp.body() == f"example.com/log\n20852163\n{root64}\next one\n".encode()


def test_round_trip(signer: NoteSigner) -> None:
    note = _note(signer, extensions=("boot 7",))
    cp = verify_checkpoint(note, [NoteVerifier.from_vkey(signer.vkey())], origin=ORIGIN)
    assert cp == Checkpoint(ORIGIN, 42, ROOT, ("boot 7",))
    parsed, sigs = parse_checkpoint(note)
    assert parsed == cp
    assert [(name, kid) for name, kid, _ in sigs] == [(ORIGIN, signer.key_id)]


def test_empty_tree_checkpoint_round_trips(signer: NoteSigner) -> None:
    note = _note(signer, size=0)
    assert verify_checkpoint(note, [signer.verifier()]).size == 0


def test_every_single_byte_change_of_a_note_is_refused(signer: NoteSigner) -> None:
    note = _note(signer)
    verifiers = [signer.verifier()]
    for i in range(len(note)):
        for delta in (1, 0x80):
            changed = bytearray(note)
            changed[i] ^= delta
            with pytest.raises((MalformedError, BadSignatureError, UnknownKeyError)):
                verify_checkpoint(bytes(changed), verifiers)


def test_no_verifiers_refuses(signer: NoteSigner) -> None:
    with pytest.raises(UnknownKeyError, match="refusing"):
        verify_checkpoint(_note(signer), [])


def test_unknown_key_is_refused_with_names(signer: NoteSigner) -> None:
    other = NoteSigner("someone-else", generate_key())
    with pytest.raises(UnknownKeyError, match="someone-else") as caught:
        verify_checkpoint(_note(signer), [other.verifier()])
    assert caught.value.kind == "unknown_key"


def test_same_name_different_key_counts_as_unknown(signer: NoteSigner) -> None:
    impostor = NoteSigner(ORIGIN, generate_key())
    with pytest.raises(UnknownKeyError):
        verify_checkpoint(_note(impostor), [signer.verifier()])


def test_known_key_id_with_a_bad_signature_is_a_bad_signature(signer: NoteSigner) -> None:
    note = _note(signer)
    body, _, sigline = note.partition(b"\n\n")
    name, _, encoded = sigline.rstrip(b"\n").rpartition(b" ")
    raw = bytearray(base64.b64decode(encoded))
    raw[10] ^= 1  # inside the Ed25519 signature, after the key id
    forged = body + b"\n\n" + name + b" " + base64.b64encode(bytes(raw)) + b"\n"
    with pytest.raises(BadSignatureError, match="does not verify") as caught:
        verify_checkpoint(forged, [signer.verifier()])
    assert caught.value.kind == "bad_signature"
    assert caught.value.seq == 42


def test_extra_unknown_signature_is_ignored(signer: NoteSigner) -> None:
    witness = NoteSigner("witness.example", generate_key())
    note = _note(signer)
    cosigned = witness.sign(Checkpoint(ORIGIN, 42, ROOT))
    both = note + cosigned.partition(b"\n\n")[2]
    assert verify_checkpoint(both, [signer.verifier()]).size == 42
    assert verify_checkpoint(both, [witness.verifier()]).size == 42


def test_wrong_origin_is_refused(signer: NoteSigner) -> None:
    with pytest.raises(BadSignatureError, match=r"expected 'custodes\.example/agent/other'"):
        verify_checkpoint(_note(signer), [signer.verifier()], origin="custodes.example/agent/other")


def test_vkey_round_trip(signer: NoteSigner) -> None:
    verifier = NoteVerifier.from_vkey(signer.vkey())
    assert verifier.name == ORIGIN
    assert verifier.key_id == signer.key_id


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "name",
        "name+c74f20a3",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong id
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # upper-case id
        "PeterNeumann+c74f20a3+Arpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # other key
        "PeterNeumann+c74f20a3+Apc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # bad base64
        "PeterNeumann+c74f20a3+Ahpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # type 0x02
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_malformed_vkeys_are_refused(vkey: str) -> None:
    with pytest.raises(MalformedError):
        NoteVerifier.from_vkey(vkey)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\tb", "a\u00a0b", "a\nb"])
def test_bad_key_names_are_refused(name: str) -> None:
    with pytest.raises(MalformedError):
        NoteSigner(name, generate_key())


@pytest.mark.parametrize(
    ("origin", "size", "root", "extensions"),
    [
        ("", 1, ROOT, ()),
        ("a\nb", 1, ROOT, ()),
        ("o", -1, ROOT, ()),
        ("o", 1, ROOT[:31], ()),
        ("o", 1, ROOT, ("",)),
        ("o", 1, ROOT, ("x\ny",)),
        ("o\x00", 1, ROOT, ()),
    ],
)
def test_checkpoint_rejects_values_a_note_cannot_carry(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    with pytest.raises(MalformedError):
        Checkpoint(origin, size, root, extensions)


GO_SIG = GO_NOTE.decode().rstrip("\n").rpartition(" ")[2]
SIG = f"— PeterNeumann {GO_SIG}"
R64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    ("note", "reason"),
    [
        (b"", "newline"),
        (f"o\n1\n{R64}\n".encode(), "no blank line"),
        (f"o\n1\n{R64}\n\n".encode(), "no signature lines"),
        (f"o\n1\n{R64}\n\n{SIG}".encode(), "does not end with a newline"),
        (f"o\n1\n{R64}\n\n- PeterNeumann abcd\n".encode(), "em dash"),
        (f"o\n1\n{R64}\n\n— PeterNeumann\n".encode(), "no space"),
        (f"o\n1\n{R64}\n\n— PeterNeumann !!!!\n".encode(), "base64"),
        (f"o\n1\n{R64}\n\n— PeterNeumann AAAA\n".encode(), "holds 3 bytes"),
        (f"o\n1\n{R64}\n\n— Peter+Neumann AAAAAAAA\n".encode(), "key name"),
        (f"o\n1\n{R64}\n\n— PeterNeumann AAAAAAB=\n".encode(), "canonical"),
        (f"o\n1\n{R64}\n\n— PeterNeumann  AAAAAAAA\n".encode(), "key name|base64"),
        (f"o\n1\n{R64}\r\n\n{SIG}\n".encode(), "control character"),
        (f"o\n1\n{R64}\n\n{SIG}\n".encode().replace(b"o", b"\xff", 1), "UTF-8"),
        (f"o\n1\n{R64}\n\n{SIG}\n\n{SIG}\n".encode(), "lines|empty"),
        (f"o\n{R64}\n\n{SIG}\n".encode(), "lines"),
        (f"\n1\n{R64}\n\n{SIG}\n".encode(), "lines|empty"),
        (f"o\n01\n{R64}\n\n{SIG}\n".encode(), "leading zeros"),
        (f"o\n+1\n{R64}\n\n{SIG}\n".encode(), "decimal"),
        (f"o\n1_0\n{R64}\n\n{SIG}\n".encode(), "decimal"),
        (f"o\n\u0661\n{R64}\n\n{SIG}\n".encode(), "decimal"),  # an Arabic-Indic digit
        (f"o\n 1\n{R64}\n\n{SIG}\n".encode(), "decimal"),
        (f"o\n1\n{R64[:-4]}\n\n{SIG}\n".encode(), "root hash"),
        (f"o\n1\nAAAA\n\n{SIG}\n".encode(), "root hash is 3 bytes"),
        (f"o\n1\n{R64}\n\n\n{SIG}\n".encode(), "empty"),
        (f"o\n1\n{R64}\n\n".encode() + (SIG + "\n").encode() * 101, "at most 100"),
        (b"o\n1\n" + b"A" * MAX_NOTE_SIZE + b"\n\n" + SIG.encode() + b"\n", "at most 16384"),
    ],
)
def test_malformed_notes_are_refused(note: bytes, reason: str) -> None:
    with pytest.raises(MalformedError, match=reason):
        parse_checkpoint(note)
    with pytest.raises(MalformedError):
        verify_checkpoint(note, [NoteVerifier.from_vkey(GO_VKEY)])


def test_note_of_the_wrong_type_is_malformed() -> None:
    with pytest.raises(MalformedError, match="expected bytes"):
        parse_note("text\n\n— a AAAAAAAA\n")  # type: ignore[arg-type]


def test_note_text_may_hold_blank_lines() -> None:
    go = _go_signer()
    text = b"first\n\nthird\n"
    assert verify_note(go.sign_text(text), [go.verifier()]) == text


def test_sixteen_signatures_are_accepted(signer: NoteSigner) -> None:
    note = _note(signer)
    witnesses = [NoteSigner(f"w{i}.example", generate_key()) for i in range(15)]
    for w in witnesses:
        note += w.sign(Checkpoint(ORIGIN, 42, ROOT)).partition(b"\n\n")[2]
    assert len(parse_note(note)[1]) == 16
    assert verify_checkpoint(note, [witnesses[-1].verifier()]).size == 42


def test_vkey_whose_base64_holds_a_plus_sign_parses() -> None:
    # From transparency-dev/formats' note tests: the key material contains '+'.
    verifier = NoteVerifier.from_vkey("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6")
    assert verifier.name == "TEST"
    assert verifier.key_id.hex() == "7997405c"
