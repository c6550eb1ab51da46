"""Logging set-up: JSON lines for machines, plain lines on a terminal, for our loggers and gunicorn's alike.

Loggers keep the names operators filter on (``service.ingest``, ``service.writer_server``, ...): a module that
moves to another package names its logger as it was named before.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as JSON."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({key: value for key, value in record.__dict__.items() if key not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def logging_config(level: str, log_format: str) -> dict[str, Any]:
    """The dictConfig for the whole process ("auto": JSON unless stderr is a terminal).

    gunicorn gets the same dict as ``logconfig_dict``, so its lines and uvicorn's
    (which uvicorn's worker sends through gunicorn's handlers) look like ours.
    """
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    formatter = (
        {"()": f"{__name__}.JsonFormatter"}
        if use_json
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
    quiet = {"level": level, "handlers": ["stderr"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"stderr": handler},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {"gunicorn.error": quiet, "gunicorn.access": {**quiet, "level": "WARNING"}},
    }


def configure_logging(level: str, log_format: str) -> None:
    """Send every log line to stderr in the chosen format."""
    logging.config.dictConfig(logging_config(level, log_format))
