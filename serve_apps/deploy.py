"""Deploy the completion service from a program (a pipeline job, the demo) and call it."""

from __future__ import annotations

import logging as pylogging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from raygpt.inference.http_client import ServiceClient

SERVE_CONFIG = Path(__file__).with_name("serve_config.yaml")


def app_args(config_path: str | Path = SERVE_CONFIG, app: str = "raygpt") -> dict[str, Any]:
    """The `args` of one application in a serve config YAML."""
    config = yaml.safe_load(Path(config_path).read_text())
    for application in config.get("applications", []):
        if application.get("name") == app:
            return dict(application.get("args") or {})
    raise KeyError(f"{config_path} has no application named {app!r}")


def deploy(
    args: dict[str, Any],
    host: str = "127.0.0.1",
    port: int = 8000,
    proxy_location: str = "EveryNode",
    name: str = "raygpt",
    quiet: bool = True,
) -> str:
    """Run the app on the connected Ray (replacing one of the same name); its URL when it
    answers /health. `quiet` keeps the replicas' access logs out of the job's output."""
    from ray import serve

    from serve_apps.app import build_app

    warning = exposure_warning(host, args)
    if warning:
        print(warning, flush=True)
    if quiet:  # Serve set its driver-side logger to INFO on import: "Started Serve", "ready"
        pylogging.getLogger("ray.serve").setLevel(pylogging.WARNING)
    serve.start(proxy_location=proxy_location, http_options={"host": host, "port": port})
    logging = {"log_level": "WARNING", "enable_access_log": False} if quiet else None
    serve.run(build_app(args), name=name, route_prefix="/", blocking=False, logging_config=logging)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
                if response.status == 200:
                    return url
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
        time.sleep(1)


def exposure_warning(host: str, args: dict[str, Any]) -> str | None:
    """A warning when the service listens beyond this machine with no API key to ask for."""
    local = host in ("127.0.0.1", "localhost", "::1")
    key_env = args.get("api_key_env", "RAYGPT_API_KEY")
    if local or args.get("api_key_file") or os.environ.get(key_env):
        return None
    return (
        f"warning: serving on {host} with no API key: anyone who reaches this port can use "
        f"the model. Set ${key_env} on the nodes or api_key_file in the serve config "
        "(README: Security and limits)."
    )


def client(url: str, api_key_env: str = "RAYGPT_API_KEY") -> ServiceClient:
    """A client of the service at `url`, with the API key when one is set here."""
    return ServiceClient(url, os.environ.get(api_key_env), timeout_s=300)


def complete(url: str, prompt: str, api_key_env: str = "RAYGPT_API_KEY", **fields) -> dict:
    """POST /v1/completions."""
    return client(url, api_key_env).post("/v1/completions", {"prompt": prompt, **fields})


def chat(url: str, messages: list[dict], api_key_env: str = "RAYGPT_API_KEY", **fields) -> dict:
    """POST /v1/chat/completions."""
    return client(url, api_key_env).post("/v1/chat/completions", {"messages": messages, **fields})


def describe(url: str, api_key_env: str = "RAYGPT_API_KEY") -> dict:
    """GET /: the model, its limits, whether it chats."""
    return client(url, api_key_env).get("/")
