"""The ``listen=`` and ``health=`` addresses, parsed: ``tcp://HOST:PORT`` or ``unix:/path``.

Pure text to a record, with no socket made: the decorator checks each entry
when the service is declared (``_config``), ``systemd-unit`` writes them
(``_unit``), and only ``_listeners`` binds them.
"""

from __future__ import annotations

import os

__all__ = ["Address", "parse_address"]


class Address:
    """One ``listen=`` entry, parsed: ``tcp://HOST:PORT`` or ``unix:/path``."""

    __slots__ = ("host", "path", "port", "text")

    def __init__(self, text: str, *, host: str = "", port: int = 0, path: str = "") -> None:
        self.text = text
        self.host = host
        self.port = port
        self.path = path

    @property
    def is_unix(self) -> bool:
        """Whether it is a Unix-domain socket."""
        return bool(self.path)

    def __repr__(self) -> str:
        return f"Address({self.text!r})"


def parse_address(text: object, keyword: str = "listen") -> Address:
    """Parse one ``listen=`` (or ``health=``) entry; ValueError naming what is wrong."""
    if not isinstance(text, str):
        raise TypeError(f"{keyword}= takes addresses as text, not {type(text).__name__}")
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path or "\0" in path:
            raise ValueError(f"{keyword} {text!r}: unix: needs a path, as unix:/run/app.sock")
        return Address(text, path=os.path.abspath(os.path.expanduser(path)))
    if not text.startswith("tcp://"):
        raise ValueError(f"{keyword} {text!r}: expected tcp://HOST:PORT or unix:/path")
    host, colon, port_text = text[len("tcp://") :].rpartition(":")
    if not colon or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{keyword} {text!r}: expected a port number after the last ':'")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{keyword} {text!r}: an IPv6 address is written [::1]")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{keyword} {text!r}: write an IPv6 address in brackets, as [::1]")
    return Address(text, host=host, port=int(port_text))
