"""Telling a file torch.save wrote from any other by its first bytes, before torch.load reads it.

torch.load of a file that is not torch's reports whatever its zip or pickle reader hit first; with
`weights_only=True` that is a 665-character message advising `weights_only=False`, unsafe advice
for a file of unknown origin. Readers check here first and say "not a torch file" instead.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import zipfile

# torch.save writes a zip archive (torch >= 1.6) ...
_ZIP_MAGIC = b"PK\x03\x04"
# ... or, in its legacy format (`_use_new_zipfile_serialization=False`, and every file older
# torch wrote, such as the SparseConvNet-era ScanNet dumps), a pickle stream that opens with this
# magic number, pickled at whichever protocol the writer chose (2 unless told otherwise).
# Protocols 2 and later write it as binary after a PROTO opcode; 0 and 1 write it as text,
# b"L119547037146038801333356L\n", with no PROTO opcode before it.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PREFIXES = tuple(
    pickle.dumps(_LEGACY_MAGIC_NUMBER, protocol=protocol) for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1)
)
_PROTO = pickle.PROTO[0]
NOT_A_TORCH_FILE = "not a torch file (torch.save writes a zip archive or a pickle that opens with its magic number)"


def is_torch_file(path: str | os.PathLike) -> bool:
    """Whether `path` starts as a file torch.save wrote does. Raises OSError when it cannot be read."""
    with open(os.fspath(path), "rb") as file:
        head = file.read(max(len(_ZIP_MAGIC), *(len(p) for p in _LEGACY_PREFIXES)))
    # The legacy pickle ends with a STOP opcode after the number; later pickles follow it.
    return head.startswith(_ZIP_MAGIC) or any(head.startswith(p[:-1]) for p in _LEGACY_PREFIXES)


def pickle_protocol(path: str | os.PathLike) -> int | None:
    """The pickle protocol a torch file was written with (torch.save's `pickle_protocol`): the
    PROTO opcode's argument, 0 for the protocols (0 and 1) that write none; None when `path` is
    not a torch file or cannot be read."""
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                # torch's archives hold one folder, named as the file was, with the pickle in it.
                name = next((n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")), None)
                if name is None:
                    return None
                with archive.open(name) as data:
                    head = data.read(2)
        elif is_torch_file(path):
            with open(path, "rb") as file:
                head = file.read(2)
        else:
            return None
    except (OSError, zipfile.BadZipFile):
        return None
    return head[1] if len(head) == 2 and head[0] == _PROTO else 0


# torch's safe loader (`weights_only=True`) reads the instructions protocol 2 writes and a few of
# protocol 3, and refuses any other with "Unsupported operand <opcode>": every file torch.save
# wrote at pickle_protocol 4 or 5 (whose first instruction is FRAME), or 0 or 1 (text LONG).
_UNSUPPORTED_OPERAND = re.compile(r"Unsupported operand (\d+)")


def unsupported_pickle_reason(path: str | os.PathLike, message: str) -> str | None:
    """Why torch's safe loader refused `path`, when `message` (its error) says it met a pickle
    instruction it does not read: the protocol the file was written with and what to do; None
    for any other refusal."""
    found = _UNSUPPORTED_OPERAND.search(message)
    if found is None:
        return None
    code = int(found.group(1))
    opcode = pickletools.code2op.get(chr(code)) if code < 256 else None
    instruction = f"the {opcode.name} instruction" if opcode else f"opcode {code}"
    protocol = pickle_protocol(path)
    written = "" if protocol in (2, 3, None) else f"saved with pickle protocol {'0 or 1' if protocol == 0 else protocol}: "
    return (
        f"{written}torch's safe loader does not read {instruction} (and no other loader is used: unpickling"
        " can run code); re-save it with torch.save's default pickle_protocol (2)"
    )
