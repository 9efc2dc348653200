"""Debian's nginx as the benchmark and the tests run it: a private prefix, no daemon, no root paths.

Everything nginx writes (pid, error log, temp files) goes to a directory of its own, and the
configuration is a stock-like ``nginx.conf`` that includes the file to try in its ``http`` block,
as ``/etc/nginx/nginx.conf`` includes ``conf.d/*.conf``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional

#: Where Debian puts the binary; the ``PATH`` of a non-root user often lacks /usr/sbin.
CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
INSTALL_HINT = "nginx is not installed: `sudo apt-get install -y nginx` (Debian/Ubuntu)"


def nginx_binary() -> Optional[str]:
    """The nginx binary, or None when nginx is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)


def main_conf(prefix: Path, include: Path, workers: str = "1", access_log: bool = True) -> str:
    """A stock-like nginx.conf that includes ``include`` in its ``http`` block."""
    temp = "\n".join(f"    {kind}_temp_path {prefix / (kind + '_temp')};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # Run as root (CI containers), nginx would switch its workers to "nobody", who cannot enter a
    # private temporary directory: keep them as the user that started it.
    user = "user root;\n" if os.geteuid() == 0 else ""
    log = f"access_log {prefix / 'access.log'};" if access_log else "access_log off;"
    return (f"{user}worker_processes {workers};\nerror_log {prefix / 'error.log'} warn;\n"
            f"pid {prefix / 'nginx.pid'};\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"    {log}\n"
            "    default_type application/octet-stream;\n"
            "    sendfile on;\n"
            f"{temp}\n"
            f"    include {include};\n"
            "}\n")


def write_config(prefix: Path, included: str, **options) -> Path:
    """Write ``included`` and an nginx.conf including it into ``prefix``; the nginx.conf path."""
    prefix.mkdir(parents=True, exist_ok=True)
    include = prefix / "twitcher.conf"
    include.write_text(included, encoding="utf-8")
    conf = prefix / "nginx.conf"
    conf.write_text(main_conf(prefix, include, **options), encoding="utf-8")
    return conf


def check_config(binary: str, prefix: Path) -> subprocess.CompletedProcess:
    """``nginx -t`` on the configuration in ``prefix``."""
    return subprocess.run(nginx_command(binary, prefix, "-t"), capture_output=True, text=True, timeout=30,
                          check=False)


def nginx_command(binary: str, prefix: Path, *extra: str) -> List[str]:
    """The command that runs nginx on ``prefix`` in the foreground (or with ``extra``, e.g. ``-t``)."""
    return [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), *(extra or ("-g", "daemon off;"))]
