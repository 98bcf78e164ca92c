"""CurveZMQ for tcp:// control endpoints: key files in, socket options and a ZAP allow-list out.

Owns the rule that supd never listens on tcp without CURVE, the loading of the key
files `zmq.auth.create_certificates` writes (`*.key` public, `*.key_secret` secret),
and the ZAP authenticator that lets in only the client keys listed in
`[security] client_public_keys_dir`. ipc sockets need none of this: they are
protected by their 0600 file mode. Imports zmq and the config structs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.auth.asyncio

from supervisord.config import SecurityConfig

#: The ZAP domain of supd's CURVE sockets; the authenticator checks keys for it alone.
ZAP_DOMAIN = "supd"


class CurveError(Exception):
    """Keys missing or unreadable; the message names the `[security]` key."""


@dataclass(frozen=True, slots=True)
class ServerKeys:
    public: bytes
    secret: bytes
    clients_dir: Path
    clients: int  # how many client public keys were found


@dataclass(frozen=True, slots=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server_public: bytes


def _load(path: str, key: str, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise CurveError(f"security.{key}: cannot load {path}: {e}") from None
    if secret and secret_key is None:
        raise CurveError(f"security.{key}: {path} holds no secret key (use the .key_secret file)")
    return public, secret_key


def server_keys(sec: SecurityConfig) -> ServerKeys | None:
    """The keys for a tcp control endpoint; None when there is none. Raises `CurveError`."""
    endpoint = sec.control_endpoint
    if not endpoint:
        return None
    if not endpoint.startswith("tcp://"):
        raise CurveError(f"security.control_endpoint: must be tcp://HOST:PORT, got {endpoint!r} "
                         "(the ipc control socket always exists)")
    if not zmq.has("curve"):
        raise CurveError("security.control_endpoint: this libzmq has no CURVE support; refusing tcp")
    if not sec.server_secret_key or not sec.client_public_keys_dir:
        raise CurveError(f"security.control_endpoint: {endpoint} is tcp and needs CurveZMQ: set "
                         "security.server_secret_key and security.client_public_keys_dir")
    public, secret = _load(sec.server_secret_key, "server_secret_key", secret=True)
    clients_dir = Path(sec.client_public_keys_dir)
    if not clients_dir.is_dir():
        raise CurveError(f"security.client_public_keys_dir: {clients_dir} is not a directory")
    try:
        clients = len(zmq.auth.load_certificates(str(clients_dir)))
    except (OSError, ValueError) as e:
        raise CurveError(f"security.client_public_keys_dir: cannot load {clients_dir}: {e}") from None
    assert secret is not None
    return ServerKeys(public, secret, clients_dir, clients)


def client_keys(sec: SecurityConfig) -> ClientKeys:
    """supctl's side: its own key pair and the server's public key. Raises `CurveError`."""
    if not sec.client_secret_key or not sec.server_public_key:
        raise CurveError("a tcp endpoint needs CurveZMQ: set security.client_secret_key and "
                         "security.server_public_key in the --config file")
    public, secret = _load(sec.client_secret_key, "client_secret_key", secret=True)
    server_public, _ = _load(sec.server_public_key, "server_public_key", secret=False)
    assert secret is not None
    return ClientKeys(public, secret, server_public)


def make_server(sock: zmq.Socket, keys: ServerKeys) -> None:  # type: ignore[type-arg]
    """Make `sock` (before bind) a CURVE server in the ZAP domain the authenticator serves."""
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


def make_client(sock: zmq.Socket, keys: ClientKeys) -> None:  # type: ignore[type-arg]
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server_public


def start_authenticator(ctx: zmq.Context, keys: ServerKeys) -> zmq.auth.asyncio.AsyncioAuthenticator:  # type: ignore[type-arg]
    """The ZAP handler on the hub's loop: only keys found in `clients_dir` get in.
    (Keys added later need a restart; the directory is read once here.)"""
    auth = zmq.auth.asyncio.AsyncioAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain=ZAP_DOMAIN, location=str(keys.clients_dir))
    return auth
