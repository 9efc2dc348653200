"""Demo processes of the internal WPS, served by ``development.ini`` (``make start``).

``hello`` greets; ``inspect_environ`` reports which of :data:`DEMO_ENVIRON_KEYS` the token
carried to it, with a fingerprint of each value instead of the value, so the demo never echoes a
credential. Both run synchronously or asynchronously (``status=true``), and ``inspect_environ``
can wait a few seconds so that an async job is visibly running while it is polled.
"""
from __future__ import annotations

import json
import logging
import time
from typing import List

from pywps import ComplexOutput, Format, LiteralInput, LiteralOutput, Process
from pywps.app.exceptions import ProcessError
from pywps.inout.literaltypes import AllowedValue
from pywps.validator.allowed_value import ALLOWEDVALUETYPE

from .tokens import fingerprint
from .wps import token_environ

log = logging.getLogger(__name__)

#: The token-environ keys ``inspect_environ`` looks for; generate a token with any of them
#: (``twitcherctl gentoken -e DATA_TOKEN=abc``) to see them arrive.
DEMO_ENVIRON_KEYS = ("DATA_TOKEN", "DATA_USER", "DATA_URL")
#: Longest wait ``inspect_environ`` accepts, so a demo job cannot hold a worker for long.
MAX_DELAY_SECONDS = 10


def _hello(request, response):
    name = request.inputs["name"][0].data
    response.outputs["output"].data = f"Hello {name}"
    return response


def hello() -> Process:
    """Say hello: the smallest process, to check that the internal WPS answers."""
    return Process(
        _hello,
        identifier="hello",
        title="Say Hello",
        abstract="Returns a greeting for the given name.",
        version="1.0",
        inputs=[LiteralInput("name", "Your name", data_type="string", default="World", min_occurs=0)],
        outputs=[LiteralOutput("output", "Greeting", data_type="string")],
        store_supported=True,
        status_supported=True,
    )


def _inspect_environ(request, response):
    delay = request.inputs["delay"][0].data if "delay" in request.inputs else 0
    if not 0 <= delay <= MAX_DELAY_SECONDS:
        raise ProcessError(f"delay must be between 0 and {MAX_DELAY_SECONDS} seconds")
    steps = int(delay)
    for step in range(steps):
        response.update_status(f"waiting {step + 1} of {steps} s", int(100 * step / max(steps, 1)))
        time.sleep(1)
    received = token_environ(request, DEMO_ENVIRON_KEYS)
    report = {
        "received": {key: "sha256:" + fingerprint(value) for key, value in received.items()},
        "missing": [key for key in DEMO_ENVIRON_KEYS if key not in received],
    }
    response.outputs["report"].data = json.dumps(report, sort_keys=True)
    return response


def inspect_environ() -> Process:
    """Report which documented token-environ keys reached the handler, without their values."""
    return Process(
        _inspect_environ,
        identifier="inspect_environ",
        title="Inspect the token environ",
        abstract=("Reports which of the keys " + ", ".join(DEMO_ENVIRON_KEYS) + " the access token carried "
                  "to this process, each with a SHA-256 fingerprint of its value. Optionally waits "
                  f"up to {MAX_DELAY_SECONDS} seconds first, to demonstrate asynchronous execution."),
        version="1.0",
        inputs=[LiteralInput("delay", "Seconds to wait before reporting", data_type="integer", default=0,
                             min_occurs=0,
                             allowed_values=[AllowedValue(ALLOWEDVALUETYPE.RANGE, minval=0,
                                                          maxval=MAX_DELAY_SECONDS)])],
        outputs=[ComplexOutput("report", "Keys received, with value fingerprints",
                               supported_formats=[Format("application/json")])],
        store_supported=True,
        status_supported=True,
    )


def demo_processes() -> List[Process]:
    """The processes ``development.ini`` names in ``twitcher.wps_processes``."""
    return [hello(), inspect_environ()]
