"""TLS to PostgreSQL: libpq-style sslmode values turned into what asyncpg takes."""

from __future__ import annotations

import ssl
from pathlib import Path

from cdc_sink_postgres.config import SslConfig

__all__ = ["build_ssl"]


def build_ssl(cfg: SslConfig, base_dir: Path = Path(".")) -> ssl.SSLContext | str | None:
    """``None``: leave TLS to the DSN's own ``sslmode``. ``verify-ca`` / ``verify-full`` build an
    :class:`ssl.SSLContext` with the configured CA file (or the system store); ``verify-full``
    also checks the host name. Client certificates are loaded when configured."""
    mode = cfg.mode
    if mode is None:
        return None
    if mode in ("disable", "allow", "prefer") and cfg.cert_file is None:
        return mode
    if mode == "disable":
        return mode

    def path(p: str) -> str:
        return str((base_dir / p).resolve()) if not Path(p).is_absolute() else p

    if mode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(cafile=path(cfg.ca_file) if cfg.ca_file else None)
        ctx.check_hostname = mode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:  # require (or allow/prefer with a client certificate): encrypt, do not verify
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file is not None:
        ctx.load_cert_chain(
            path(cfg.cert_file),
            path(cfg.key_file) if cfg.key_file else None,
            password=cfg.key_password.reveal() if cfg.key_password is not None else None,
        )
    return ctx
