"""Server-side TLS material for gRPC and HTTP, read once and checked up front."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import grpc

from dl_inference.kernel.config.schema import TlsConfig
from dl_inference.spi.errors import ConfigError


@dataclass(frozen=True)
class ServerTls:
    """Certificate, key and (for mutual TLS) the CA that client certificates must chain to."""

    config: TlsConfig
    cert: bytes
    key: bytes
    client_ca: bytes | None

    @classmethod
    def load(cls, config: TlsConfig) -> ServerTls:
        def read(key: str) -> bytes | None:
            path = getattr(config, key)
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"server.tls.{key}: cannot read {path} ({exc.strerror})"
                ) from None

        tls = cls(config, read("cert_file") or b"", read("key_file") or b"", read("client_ca_file"))
        tls.ssl_context()  # a bad certificate or key fails here, before anything listens
        return tls

    def grpc_credentials(self, engine: str = "grpcio") -> grpc.ServerCredentials | ssl.SSLContext:
        """What the gRPC listener of ``engine`` takes for TLS (the asyncio engine: a context
        it adds ALPN "h2" to)."""
        if engine == "asyncio":
            return self.ssl_context()
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(self.config.cert_file), str(self.config.key_file))
            if self.config.client_ca_file is not None:
                context.load_verify_locations(str(self.config.client_ca_file))
                context.verify_mode = ssl.CERT_REQUIRED
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"server.tls: the certificate or key cannot be used ({exc})"
            ) from None
        return context
