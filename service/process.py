"""The process model: gunicorn's master with exactly one uvicorn worker running the ASGI app and gRPC."""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker

from service.config import Settings
from service.logs import logging_config

_LOGGER = logging.getLogger(__name__)


class Worker(UvicornWorker):  # type: ignore[misc]
    """uvicorn's gunicorn worker on uvloop and httptools, without proxy-header rewriting.

    The allowlist decides itself which X-Forwarded-For to believe (``--trusted-proxy``);
    uvicorn must not rewrite the client address before it.
    """

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
    }


class ServiceApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn configured from Settings only; its own config files and variables are ignored."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        """Set gunicorn's configuration: one worker, always (the broker lives in it)."""
        config = {
            "bind": [str(self._settings.http_bind)],
            "workers": 1,
            "worker_class": f"{Worker.__module__}.{Worker.__qualname__}",
            "graceful_timeout": math.ceil(self._settings.shutdown_grace) + 5,
            "timeout": 30,
            "keepalive": 75,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": self._settings.log_level.lower(),
            "logconfig_dict": logging_config(self._settings.log_level, self._settings.log_format),
            "proc_name": "routee-callbacks",
            "preload_app": False,
            "reuse_port": False,
            "control_socket_disable": True,  # two instances on one host must not fight over it
        }
        for key, value in config.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Build the app in the worker, after the fork: SQLite and gRPC must not cross a fork."""
        from service.runtime import build_app

        return build_app(self._settings)
