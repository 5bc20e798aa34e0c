"""Who may talk to the node: DICOM TLS (PS3.15 B.1, BCP 195) contexts for the listener and
the destinations, and the listener's host allow list (``listen.allowed_hosts``).

Both sides speak TLS 1.2 or later and always verify the peer's certificate chain when it is
required. The policy for the certificate of a destination:

- ``ca_certificates`` set (the usual DICOM deployment: a private CA that issues the
  certificates of the PACS and modalities): the chain must lead to that CA, and the host name
  is not checked. The CA is the trust boundary, certificates of DICOM nodes often name a host
  other than the address configured here, and DCMTK and most PACS do not check names either.
- ``ca_certificates`` empty: the system's trust store, and then the host name (or IP address)
  must match the certificate, since a public CA vouches for names, not for DICOM peers.

A certificate problem is a configuration problem: ``sender`` fails such deliveries for good
(``calcnode retry`` queues them again once fixed). No module here touches pynetdicom.
"""

from __future__ import annotations

import ipaddress
import ssl

from node.config import TLSConfig
from node.errors import ConfigError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class _ServerContext(ssl.SSLContext):
    """Wraps accepted sockets without a handshake. pynetdicom wraps each accepted socket in its
    accept loop (``AssociationServer.get_request``), where a handshake would keep every other
    caller waiting while one stalls; the receiver shakes hands in the association's own thread
    (``receiver._tune_socket``), under the network timeout."""

    def wrap_socket(self, sock, *args, **kwargs):
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


class ClientContext(ssl.SSLContext):
    """A destination's context. ``tls_error`` keeps the TLS failure of its last connection:
    pynetdicom only logs it and reports that no association was made."""

    tls_error: ssl.SSLError | None = None


class _WatchedSocket(ssl.SSLSocket):
    """Records TLS errors on its ClientContext: in the handshake (a certificate we do not trust)
    and in the first reads (TLS 1.3 servers refuse our certificate after the handshake)."""

    def do_handshake(self, *args, **kwargs):
        try:
            return super().do_handshake(*args, **kwargs)
        except ssl.SSLError as exc:
            self.context.tls_error = exc
            raise

    def recv(self, *args, **kwargs):
        try:
            return super().recv(*args, **kwargs)
        except ssl.SSLError as exc:
            self.context.tls_error = exc
            raise


def server_context(tls: TLSConfig, key: str = "listen.tls") -> ssl.SSLContext:
    """The listener's context: our certificate; client certificates verified against
    ``ca_certificates`` when given (required with ``require_client_certificate``)."""
    problems = []
    if not tls.certificate or not tls.private_key:
        problems.append(f"{key}: certificate and private_key are required when enabled")
    if tls.require_client_certificate and not tls.ca_certificates:
        problems.append(f"{key}.ca_certificates: required with require_client_certificate")
    if problems:
        raise ConfigError(problems)
    context = _ServerContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load(context, tls, key)
    if tls.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_certificates:
        context.verify_mode = ssl.CERT_OPTIONAL  # a certificate, if shown, must be the CA's
    return context


def client_context(tls: TLSConfig, key: str = "tls") -> ClientContext:
    """A destination's context (see the module docstring for what is verified); our own
    certificate is offered when ``certificate`` is set."""
    context = ClientContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and host names checked
    context.minimum_version = MINIMUM_VERSION
    context.sslsocket_class = _WatchedSocket
    if tls.ca_certificates:
        context.check_hostname = False
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    _load(context, tls, key)
    return context


def _load(context: ssl.SSLContext, tls: TLSConfig, key: str) -> None:
    try:
        if tls.certificate:
            context.load_cert_chain(tls.certificate, tls.private_key or None)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise ConfigError([f"{key}.certificate: cannot load {tls.certificate!r} with private key "
                           f"{tls.private_key!r}: {describe(exc)}"]) from None
    try:
        if tls.ca_certificates:
            context.load_verify_locations(tls.ca_certificates)
    except OSError as exc:
        raise ConfigError([f"{key}.ca_certificates: cannot load {tls.ca_certificates!r}: "
                           f"{describe(exc)}"]) from None


def describe(exc: BaseException) -> str:
    """A TLS or socket error in a few words, e.g. "certificate verify failed: self-signed
    certificate" or "peer did not return a certificate" (OpenSSL's reason code, spelt out)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def is_configuration_problem(exc: ssl.SSLError) -> bool:
    """True unless the connection merely dropped mid-handshake: an untrusted certificate, a
    refused certificate of ours, no common protocol, a peer that does not speak TLS."""
    return not isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError))


def allowed_networks(entries) -> tuple:
    """``listen.allowed_hosts`` as ip_network objects; ConfigError names a bad entry."""
    networks = []
    for number, entry in enumerate(entries):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError([f"listen.allowed_hosts[{number}]: expected an IP address or "
                               f"network such as 10.1.2.0/24, got {entry!r}"]) from None
    return tuple(networks)


def host_allowed(host: str, networks) -> bool:
    """Whether a caller's address is in one of ``networks`` (none configured: any caller).
    An IPv4 caller of a dual-stack listener shows as ::ffff:a.b.c.d and counts as a.b.c.d."""
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
