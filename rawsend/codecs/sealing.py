"""The sealing rules a reader checks with or without the key (spec "Which records are sealed").

Apart from rawsend/codecs/crypto.py so that reading an unencrypted stream does not import
the cipher library.
"""

from __future__ import annotations

from rawsend.errors import MalformedRecord
from rawsend.stream.records import AEAD_TAG_LEN, CLEAR_TYPES, FLAG_SEALED, Cipher, Extent, Header, RecordType

# records whose body is sealed in an encrypted stream: all but those the registry marks clear
_CLEAR_TYPES = CLEAR_TYPES
_EXTENT = RecordType.EXTENT  # as a global: cheaper per record than the enum's attribute


def check_sealing(header: Header, raw, extent: Extent | None = None) -> None:
    """The rules a reader checks with or without the key (spec "Which records are sealed").

    ``raw`` is a record other than HEADER and END; ``extent`` its clear body
    when it is an EXTENT.
    """
    sealed = bool(raw.flags & FLAG_SEALED)
    if not header.encrypted:
        if sealed:
            raise MalformedRecord("sealed record in a stream that is not encrypted", **_where(raw))
        if extent is not None and extent.encryption:
            raise MalformedRecord("encrypted extent in a stream that is not encrypted", **_where(raw))
        return
    if raw.type == _EXTENT:
        if sealed:
            raise MalformedRecord("extent record with a sealed body (extent bodies stay in the clear)", **_where(raw))
        if extent is not None:
            if extent.encryption != header.cipher:
                raise MalformedRecord(f"extent encryption {Cipher.NAMES[extent.encryption]}, the stream uses"
                                      f" {Cipher.NAMES[header.cipher]}", **_where(raw))
            if extent.disk_num_bytes <= AEAD_TAG_LEN:
                raise MalformedRecord(f"encrypted extent of {extent.disk_num_bytes} payload bytes, not more"
                                      f" than its {AEAD_TAG_LEN}-byte tag", **_where(raw))
            if extent.key_id != header.key_id:
                raise MalformedRecord(f"extent names key id {extent.key_id.hex()}, the stream's key id is"
                                      f" {header.key_id.hex()}", **_where(raw))
    elif raw.type not in _CLEAR_TYPES and not sealed:
        raise MalformedRecord(f"{RecordType.name_of(raw.type)} record in the clear in an encrypted stream",
                              **_where(raw),
                              hint="an encrypted stream seals every metadata record; this one was altered")


def _where(raw) -> dict:
    return dict(record=raw.index, offset=raw.offset)
