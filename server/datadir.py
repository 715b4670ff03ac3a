"""The layout of a server's data directory (`--data DIR`) and its atomic, private writes.

```
DIR/
  ca/ca.key          the CA's private key (0600)          ca/ca.crt   the CA certificate
  tls/server.key     the TLS server key (0600)            tls/server.crt
  signing/server.key the Ed25519 key that signs the log, grants and bundles (0600)
  signing/server.pub its raw public key
  server.json        names the certificate covers, the log origin (written by `server init`)
  custodes.db        the SQLite store (the default database)
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from protos.errors import CustodesError
from protos.files import write_atomic

DEFAULT_DATA = Path("/var/lib/custodes")


class DataDirError(CustodesError):
    """The data directory is missing, incomplete or unreadable."""


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` atomically with `mode` (0600: keys and secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, mode)


@dataclass(frozen=True, slots=True)
class DataDir:
    """Paths inside one server data directory."""

    root: Path

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "tls" / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "tls" / "server.crt"

    @property
    def signing_key(self) -> Path:
        return self.root / "signing" / "server.key"

    @property
    def signing_pub(self) -> Path:
        return self.root / "signing" / "server.pub"

    @property
    def settings(self) -> Path:
        return self.root / "server.json"

    @property
    def sqlite(self) -> Path:
        return self.root / "custodes.db"

    def default_database_url(self) -> str:
        """The embedded default: SQLite in the data directory."""
        return f"sqlite:///{self.sqlite}"

    def is_initialised(self) -> bool:
        """True when `server init` has completed here (the settings file is written last)."""
        return self.settings.is_file()

    def require_initialised(self) -> None:
        """Raise `DataDirError` unless `server init` has completed in this directory."""
        if not self.is_initialised():
            raise DataDirError(
                f"{self.root} is not an initialised Custodes data directory "
                f"(expected {self.settings.name} there)",
                hint=f"run `custodes server init --data {self.root}` first",
            )

    def read(self, path: Path, limit: int = 1 << 20) -> bytes:
        """Read one file of the data directory, bounded in size."""
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise DataDirError(
                f"cannot read {path} ({exc.strerror})",
                hint=f"check the data directory {self.root} and its permissions",
            ) from exc
        if len(data) > limit:
            raise DataDirError(f"{path} is larger than {limit} bytes, expected a small file")
        return data

    def load_settings(self) -> dict[str, object]:
        """The settings `server init` wrote."""
        self.require_initialised()
        value = json.loads(self.read(self.settings))
        if not isinstance(value, dict):
            raise DataDirError(f"{self.settings} is not a JSON object, expected one")
        return value
