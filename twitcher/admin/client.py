"""twitcherctl: the admin command line, a thin XML-RPC client of ``/RPC2``.

Parsing (:func:`build_parser`) is kept apart from the calls (:class:`Admin`) and from printing,
so every piece can be tested alone. Exit status 0 on success, 1 with one line on stderr on
any error: a fault, wrong credentials, an unreachable server, a bad argument.
"""
from __future__ import annotations

import argparse
import base64
import configparser
import getpass
import json
import os
import socket
import ssl
import sys
import xmlrpc.client
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Sequence, TextIO
from urllib.parse import urlsplit, urlunsplit

from .. import __version__
from ..services import SERVICE_TYPES
from .auth import hash_password

DEFAULT_SERVER = "http://localhost:8000"
DEFAULT_USER = "admin"
PASSWORD_ENV = "TWITCHER_PASSWORD"  # noqa: S105 - the name of a variable, not a secret
#: Seconds to wait for the server to connect and to answer; an admin call is never long.
TIMEOUT = 30.0


class CommandError(Exception):
    """Anything that ends the command with exit status 1; the message is the one line shown."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument raises instead of printing usage and exiting with 2."""

    def error(self, message: str):
        raise CommandError(f"{self.prog}: {message} (see {self.prog.split()[0]} -h)")


# -- talking to the server ---------------------------------------------------------------


class _TimeoutMixin:
    """xmlrpc.client has no timeout of its own: set one on every connection it makes."""

    timeout = TIMEOUT

    def make_connection(self, host):
        connection = super().make_connection(host)
        connection.timeout = self.timeout
        return connection


class _Transport(_TimeoutMixin, xmlrpc.client.Transport):
    pass


class _SafeTransport(_TimeoutMixin, xmlrpc.client.SafeTransport):
    pass


def rpc_url(server: str) -> str:
    """The ``/RPC2`` endpoint for a server URL given with or without it."""
    parts = urlsplit(server.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandError(f"server URL must be http(s)://host[:port], got {server!r}")
    if parts.username or parts.password:
        raise CommandError("put the user name in -u and the password in -p or TWITCHER_PASSWORD, not in the URL")
    path = parts.path.rstrip("/")
    if not path.endswith("/RPC2"):
        path += "/RPC2"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def server_proxy(url: str, username: str, password: str, insecure: bool = False,
                 timeout: float = TIMEOUT) -> xmlrpc.client.ServerProxy:
    """A proxy for ``url`` that sends Basic credentials in a header (never in the URL, which
    xmlrpc.client would echo in its error messages)."""
    credentials = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    headers = [("Authorization", f"Basic {credentials}")]
    if url.startswith("https:"):
        context = ssl._create_unverified_context() if insecure else ssl.create_default_context()  # noqa: S323
        transport: xmlrpc.client.Transport = _SafeTransport(headers=headers, context=context)
    else:
        transport = _Transport(headers=headers)
    transport.timeout = timeout
    return xmlrpc.client.ServerProxy(url, transport=transport)


class Admin:
    """The admin API as typed calls; every failure becomes a :class:`CommandError`."""

    def __init__(self, proxy: xmlrpc.client.ServerProxy, url: str):
        self.proxy = proxy
        self.url = url

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.proxy, method)(*args)
        except xmlrpc.client.Fault as fault:
            raise CommandError(f"{fault.faultString} (fault {fault.faultCode})") from None
        except xmlrpc.client.ProtocolError as exc:
            if exc.errcode == 401:
                raise CommandError(f"authentication failed at {self.url}: wrong user name or password") from None
            raise CommandError(f"{self.url} answered HTTP {exc.errcode} {exc.errmsg}") from None
        except ssl.SSLError as exc:
            raise CommandError(f"TLS error with {self.url}: {exc.reason or exc} (-k skips verification)") from None
        except (socket.timeout, TimeoutError):
            raise CommandError(f"{self.url} did not answer within {TIMEOUT:g} s") from None
        except OSError as exc:
            raise CommandError(f"cannot reach {self.url}: {exc.strerror or exc}") from None
        except xmlrpc.client.Error as exc:  # a body that is not XML-RPC: wrong URL?
            raise CommandError(f"{self.url} did not answer XML-RPC: {exc}") from None
        except ValueError as exc:  # xmlrpc.client's parser on a non-XML answer
            raise CommandError(f"{self.url} did not answer XML-RPC: {exc}") from None

    def generate_token(self, hours: float, environ: Dict[str, str], subject: Optional[str] = None,
                       options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        if options is None and subject is None:
            return self._call("generate_token", hours, environ)  # the 0.3 call, for older servers
        # XML-RPC has no nil by default: an empty subject means none.
        return self._call("generate_token", hours, environ, subject or "", options or {})

    def revoke_token(self, token: str) -> bool:
        return self._call("revoke_token", token)

    def revoke_all_tokens(self) -> bool:
        return self._call("revoke_all_tokens")

    def register_service(self, url: str, data: Dict[str, Any], overwrite: bool = True) -> Dict[str, Any]:
        return self._call("register_service", url, data, overwrite)

    def unregister_service(self, name: str) -> bool:
        return self._call("unregister_service", name)

    def get_service_by_name(self, name: str) -> Dict[str, Any]:
        return self._call("get_service_by_name", name)

    def list_services(self) -> List[Dict[str, Any]]:
        return self._call("list_services")

    def clear_services(self) -> bool:
        return self._call("clear_services")


# -- the command line --------------------------------------------------------------------


def _key_value(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="twitcherctl", description="Administer a Twitcher security proxy over its XML-RPC API.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-s", "--server", default=DEFAULT_SERVER,
                        help=f"Twitcher base URL; /RPC2 is appended when absent (default {DEFAULT_SERVER})")
    parser.add_argument("-u", "--username", default=DEFAULT_USER, help=f"admin user (default {DEFAULT_USER})")
    parser.add_argument("-p", "--password",
                        help=f"admin password (default: ${PASSWORD_ENV}, else a prompt on a terminal)")
    parser.add_argument("-k", "--insecure", action="store_true", help="do not verify the server's TLS certificate")
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON, for scripts")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    sub = commands.add_parser("gentoken", help="make an access token")
    sub.add_argument("-H", "--valid-in-hours", type=float, default=1.0, metavar="HOURS",
                     help="lifetime in hours (default 1)")
    sub.add_argument("-e", "--env", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                     help="environ data for the internal WPS (repeatable)")
    sub.add_argument("--signed", action="store_true",
                     help="a signed token that trusting sites verify from our public key (needs "
                          "twitcher.signing_key on the server)")
    sub.add_argument("--subject", metavar="NAME",
                     help="who the token is for; all tokens of one subject own the same jobs")
    _scope_arguments(sub, "allow only")

    sub = commands.add_parser("revoke", help="revoke one token, or all with --all")
    group = sub.add_mutually_exclusive_group(required=True)
    group.add_argument("token", nargs="?", help='the token to revoke (one starting with "-" goes after --)')
    group.add_argument("-A", "--all", action="store_true", help="revoke every token")

    sub = commands.add_parser("register", help="register (or replace) an OWS service")
    sub.add_argument("url", help="the service URL, http(s)")
    sub.add_argument("--name", help="service name (default: derived from the URL)")
    sub.add_argument("--type", choices=SERVICE_TYPES, help="service type (default wps)")
    sub.add_argument("--public", action="store_true", help="no token needed for this service")
    sub.add_argument("--auth", choices=("token", "cert"), help="how clients authenticate (default token)")
    sub.add_argument("--purl", help="public URL used in rewritten documents")
    sub.add_argument("--no-overwrite", action="store_true", help="fail when the name is taken")
    verify = sub.add_mutually_exclusive_group()
    verify.add_argument("--verify", dest="verify", action="store_const", const=True,
                        help="verify the service's TLS certificate (default)")
    verify.add_argument("--no-verify", dest="verify", action="store_const", const=False,
                        help="do not verify the service's TLS certificate")
    verify.add_argument("--ca", dest="verify", metavar="PATH", help="verify against this CA bundle (absolute path)")

    sub = commands.add_parser("unregister", help="remove a service")
    sub.add_argument("name")
    sub = commands.add_parser("get", help="show one service")
    sub.add_argument("name")
    commands.add_parser("list", help="list the services")
    commands.add_parser("clear", help="remove every service")
    sub = commands.add_parser("keygen", help="write a new signing key (mode 0600) and print its public key; "
                                             "needs no server")
    sub.add_argument("path", help="the key file to create (an existing file is never overwritten)")

    sub = commands.add_parser("attenuate", help="print a narrower copy of a signed token; needs no server and no key")
    sub.add_argument("token", help="the signed token to narrow")
    _scope_arguments(sub, "keep only")
    sub.add_argument("-H", "--hours", type=float, metavar="HOURS",
                     help="expire this many hours from now at the latest")

    sub = commands.add_parser("nginx-config", help="print the nginx configuration of the data plane "
                                                   "(twitcher.data_plane = nginx) for the registered services")
    sub.add_argument("--listen", required=True, metavar="HOST:PORT", help="where nginx listens")
    sub.add_argument("--app", required=True, metavar="HOST:PORT", help="where Twitcher listens, for nginx")
    sub.add_argument("--ini", metavar="FILE",
                     help="Twitcher's ini file, for twitcher.url, protected_path, front_secret, timeouts and "
                          "body limit (TWITCHER_* variables override it, as for Twitcher)")
    sub.add_argument("--tls-cert", metavar="PATH", help="nginx's certificate: listen with TLS")
    sub.add_argument("--tls-key", metavar="PATH", help="its private key")
    sub.add_argument("--client-ca", metavar="PATH",
                     help="verify client certificates against this CA (for services with auth cert)")

    commands.add_parser("hash-password",
                        help="read a password (prompt or stdin) and print its hash for twitcher.password; "
                             "needs no server")
    return parser


def _scope_arguments(sub: argparse.ArgumentParser, verb: str) -> None:
    sub.add_argument("--service", action="append", default=[], metavar="NAME",
                     help=f"{verb} this service (repeatable; twitcher:wps is the internal WPS)")
    sub.add_argument("--operation", action="append", default=[], metavar="REQUEST",
                     help=f"{verb} this OWS operation, e.g. execute (repeatable)")


def keygen(path: str) -> tuple:
    """Write a signing key; return the result for ``--json`` and the text for a person."""
    from ..federation.biscuit import public_key_text
    from ..federation.keys import write_signing_key

    try:
        key = write_signing_key(path)
    except FileExistsError:
        raise CommandError(f"{path} exists already; a signing key is never overwritten") from None
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    public = public_key_text(key.public_key)
    result = {"path": path, "public_key": public, "key_id": key.key_id}
    return result, (f"private key written to {path} (mode 0600)\n{public}\n"
                    f"key id {key.key_id}: give the public key to the sites that should trust this one")


def attenuate(args: argparse.Namespace) -> tuple:
    """Narrow a signed token offline; return the result for ``--json`` and the token."""
    from datetime import timedelta

    from ..exceptions import InvalidArgument
    from ..federation import biscuit, scope

    try:
        services = scope.services(args.service)
        operations = scope.operations(args.operation)
    except InvalidArgument as exc:
        raise CommandError(str(exc)) from None
    expires_at = None
    if args.hours is not None:
        if not args.hours > 0:
            raise CommandError(f"--hours must be greater than 0, got {args.hours:g}")
        expires_at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=args.hours)
    try:
        token = biscuit.attenuate(args.token.strip(), services, operations, expires_at)
    except ValueError as exc:
        raise CommandError(f"cannot attenuate: {exc}") from None
    result = {"access_token": token}
    if expires_at is not None:
        result["expires_at"] = int(expires_at.timestamp())
    return result, token


def read_password(args: argparse.Namespace, stdin: TextIO) -> str:
    """The admin password from ``-p``, ``$TWITCHER_PASSWORD``, or a prompt when we have a terminal."""
    if args.password:
        return args.password
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if stdin.isatty():
        return getpass.getpass(f"Password for {args.username}: ")
    raise CommandError(f"no password: use -p, set {PASSWORD_ENV}, or run in a terminal to be prompted")


def new_password_hash(stdin: TextIO) -> str:
    """Prompt twice on a terminal, else read one line from stdin; return its hash."""
    if stdin.isatty():
        password = getpass.getpass("New admin password: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the passwords differ")
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("the password must not be empty")
    return hash_password(password)


def _registration(args: argparse.Namespace) -> Dict[str, Any]:
    data: Dict[str, Any] = {"public": args.public}
    for key in ("name", "type", "auth", "purl", "verify"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    return data


def ini_settings(path: Optional[str]) -> Dict[str, str]:
    """The ``twitcher.*`` keys of an ini file's ``[app:main]`` section (none without a file)."""
    if not path:
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as ini:
            parser.read_file(ini)
    except (OSError, configparser.Error) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    if not parser.has_section("app:main"):
        raise CommandError(f"{path} has no [app:main] section")
    return {k: v for k, v in parser.items("app:main") if k.startswith("twitcher.")}


def nginx_config_text(args: argparse.Namespace, admin: Admin) -> str:
    """``twitcherctl nginx-config``: the settings from ``--ini`` and the environment, the services
    from the server."""
    from ..dataplane.nginxconf import Front, nginx_config
    from ..exceptions import ConfigurationError
    from ..services import service_from_record
    from ..settings import parse_settings

    raw = {**ini_settings(args.ini), "twitcher.rpcinterface": "false"}
    try:
        settings = parse_settings(raw)
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    services = [service_from_record(record) for record in admin.list_services()]
    front = Front(args.listen, args.app, args.tls_cert, args.tls_key, args.client_ca)
    try:
        return nginx_config(services, settings, front)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


#: Printed after a change of the services: nginx's configuration names them.
NGINX_HINT = "(if nginx carries the data: twitcherctl nginx-config ... > twitcher.conf, then nginx -s reload)"


def run(args: argparse.Namespace, admin: Admin) -> tuple:
    """Carry out one command; return ``(result for --json, text for a person)``."""
    command = args.command
    if command == "gentoken":
        if (args.service or args.operation) and not args.signed:
            raise CommandError("--service and --operation restrict signed tokens only: add --signed")
        options = {"signed": True, "services": args.service, "operations": args.operation} if args.signed else None
        result = admin.generate_token(args.valid_in_hours, dict(args.env), args.subject, options)
        expires = datetime.fromtimestamp(result["expires_at"], timezone.utc).isoformat()
        return result, f"{result['access_token']}\nexpires at {expires}"
    if command == "revoke":
        if args.all:
            return admin.revoke_all_tokens(), "all tokens revoked"
        if not admin.revoke_token(args.token):
            raise CommandError("no active token matched: unknown, expired or revoked already")
        return True, "token revoked"
    if command == "register":
        service = admin.register_service(args.url, _registration(args), not args.no_overwrite)
        return service, _service_text(service) + "\n" + NGINX_HINT
    if command == "unregister":
        if not admin.unregister_service(args.name):
            raise CommandError(f"no service named {args.name!r}")
        return True, f"service {args.name!r} removed\n{NGINX_HINT}"
    if command == "get":
        service = admin.get_service_by_name(args.name)
        if not service:
            raise CommandError(f"no service named {args.name!r}")
        return service, _service_text(service)
    if command == "list":
        found = admin.list_services()
        return found, _services_table(found)
    if command == "nginx-config":
        text = nginx_config_text(args, admin)
        return text, text
    if command == "clear":
        return admin.clear_services(), f"all services removed\n{NGINX_HINT}"
    raise CommandError(f"unknown command {command!r}")  # argparse stops this earlier


def _service_text(service: Dict[str, Any]) -> str:
    return "\n".join(f"{key:7} {value}" for key, value in service.items())


def _services_table(found: List[Dict[str, Any]]) -> str:
    if not found:
        return "no services registered"
    rows = [("NAME", "TYPE", "ACCESS", "URL")]
    rows += [(s["name"], s["type"], "public" if s["public"] else s["auth"], s["url"]) for s in found]
    width = [max(len(str(row[i])) for row in rows) for i in range(3)]
    return "\n".join(f"{r[0]:{width[0]}}  {r[1]:{width[1]}}  {r[2]:{width[2]}}  {r[3]}" for r in rows)


def main(argv: Optional[Sequence[str]] = None, stdin: Optional[TextIO] = None) -> int:
    """Entry point of ``twitcherctl``; returns the exit status."""
    stdin = stdin or sys.stdin
    try:
        args = build_parser().parse_args(argv)
        if args.command == "hash-password":
            print(new_password_hash(stdin))
            return 0
        if args.command in ("keygen", "attenuate"):  # offline: no server, no password
            result, text = keygen(args.path) if args.command == "keygen" else attenuate(args)
            print(json.dumps(result, indent=2) if args.json else text)
            return 0
        url = rpc_url(args.server)
        admin = Admin(server_proxy(url, args.username, read_password(args, stdin), args.insecure), url)
        result, text = run(args, admin)
    except CommandError as exc:
        print(f"twitcherctl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("twitcherctl: interrupted", file=sys.stderr)
        return 1
    except SystemExit as exc:  # -h and --version: argparse printed them already
        return exc.code if isinstance(exc.code, int) else 0
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
