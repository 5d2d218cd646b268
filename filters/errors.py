"""The one exception tree of schoolgate.

Every error the product raises on purpose derives from :class:`SchoolgateError`, so the CLI
and the appliance can catch one type, print its message and pick an exit code. Errors are
split by origin: bad input that came from outside (a list, a config file, a bundle, a
packet) versus a failure of the environment (a download, a file we could not write).
Foreign exceptions (yaml, numpy, cryptography, dnslib, scapy) are translated once, at the
boundary where they occur, with ``raise ... from``::

    SchoolgateError                  root; .where names file:line:col when known
    ├── InputError                   bad input from outside: exit status 2 in the CLI
    │   ├── ListFormatError          a list source unusable as a whole (missing, unknown format)
    │   ├── ConfigError              a config or SOURCES.yaml file that cannot be used
    │   ├── BundleError              a bundle that is malformed, incomplete or inconsistent
    │   │   └── SignatureError       a bundle or metadata whose signature or hash does not verify
    │   ├── BadNameError             a name or address that cannot be normalised
    │   ├── PacketError              a DNS message that cannot be parsed: answer FORMERR
    │   │   └── RuntPacketError      too short for a header, or not a query: drop it silently
    │   └── CaptureFileError         a file that is not pcap/pcapng, or is damaged beyond reading
    └── EnvironmentFault             our surroundings failed: I/O, downloads, resources
        └── UpdateError              a bundle update could not be fetched (network, HTTP status,
                                     too slow, larger than its cap); the last good bundle stays

The filters package sits at the bottom of the layers, so the tree lives here and the other
packages import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Where",
    "SchoolgateError",
    "InputError",
    "ListFormatError",
    "ConfigError",
    "BundleError",
    "SignatureError",
    "BadNameError",
    "PacketError",
    "RuntPacketError",
    "CaptureFileError",
    "EnvironmentFault",
    "UpdateError",
]


@dataclass(frozen=True)
class Where:
    """A position in an input file; line and col are 1-based, 0 when unknown."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        out = self.file
        if self.line:
            out += f":{self.line}"
            if self.col:
                out += f":{self.col}"
        return out


class SchoolgateError(Exception):
    """Root of every error schoolgate raises on purpose."""

    def __init__(self, message: str, where: Where | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class InputError(SchoolgateError):
    """Bad input from outside the program; the CLI exits with status 2."""


class ListFormatError(InputError):
    """A list source that cannot be read at all (missing file, unknown format)."""


class ConfigError(InputError):
    """A configuration or SOURCES.yaml file that cannot be used."""


class BundleError(InputError):
    """A bundle that is malformed, incomplete or inconsistent."""


class SignatureError(BundleError):
    """A signature, hash or metadata check failed."""


class BadNameError(InputError, ValueError):
    """A domain name or address that cannot be normalised; .reason says why."""

    def __init__(self, reason: str, where: Where | None = None) -> None:
        super().__init__(reason, where)
        self.reason = reason


class PacketError(InputError):
    """A DNS message from the network that cannot be parsed (the DNS server answers FORMERR,
    RFC 1035 §4.1.1, when the header can be read)."""


class RuntPacketError(PacketError):
    """A packet that gets no answer at all: shorter than a DNS header (nothing to answer
    with) or a response sent to us (answering responses invites reflection loops)."""


class CaptureFileError(InputError):
    """A capture given to ``schoolgate inspect`` that is not a pcap or pcapng file. Damage
    inside a readable file (a truncated last record, a corrupt block) is counted and
    reported instead: what could be read is still worth inspecting. Bad packets inside a
    capture never raise; the extractors report them (filters/extraction.py)."""


class EnvironmentFault(SchoolgateError):
    """The environment failed us: a file could not be written, a download broke."""


class UpdateError(EnvironmentFault):
    """A download for an update failed: unreachable, HTTP error, too slow or too large.

    Verification failures are not UpdateErrors: a forged or stale repository raises
    SignatureError, a malformed bundle BundleError (both bad input from outside)."""
