"""The completion service as one deployment graph: Ingress -> Generator (or, with
`colocate: true`, one Ingress deployment whose replicas hold the engine).

    serve run serve_apps/serve_config.yaml
    serve run serve_apps.app:build_app checkpoint=runs/tiny_cpu/final

`build_app` is the application builder that serve_config.yaml names; its args are
ServeSettings (checked before anything deploys, so a typo fails the deploy, not a replica).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from raygpt.checkpoint import checkpoint_format
from raygpt.errors import ConfigError
from serve_apps.generator import Generator
from serve_apps.ingress import Ingress
from serve_apps.settings import ServeSettings

INGRESS_ONGOING = 1024


def build_app(args: dict[str, Any]) -> Application:
    try:
        settings = ServeSettings.model_validate(args)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"serve app args: {problems}") from None
    checkpoint_format(settings.checkpoint)  # a wrong path fails here, before any replica starts
    scaling = settings.autoscaling
    backpressure = BackpressureConfig(status_code=429, retry_after_s=settings.retry_after_s)
    engine_replicas = dict(
        ray_actor_options={"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
        # The engine batches whatever a replica holds: let it hold its slots and a queue of
        # as many again, then Serve routes elsewhere, queues at the caller up to
        # max_queued_requests, and past that refuses (429).
        max_ongoing_requests=2 * settings.max_slots,
        max_queued_requests=settings.max_queued_requests,
        backpressure_config=backpressure,
        autoscaling_config={
            "min_replicas": scaling.min_replicas,
            "initial_replicas": max(1, scaling.min_replicas),
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
            "upscale_delay_s": scaling.upscale_delay_s,
            "downscale_delay_s": scaling.downscale_delay_s,
        },
    )
    settings_dict = settings.model_dump()
    if settings.colocate:
        # One deployment: each ingress replica holds an engine. Its own queue (max_queue) is
        # the limit, answered with the ingress's JSON 429; Serve's would be a plain-text one.
        colocated = {**engine_replicas, "max_ongoing_requests": INGRESS_ONGOING}
        colocated["max_queued_requests"] = INGRESS_ONGOING
        return Ingress.options(**colocated).bind(None, settings_dict)
    generator = Generator.options(**engine_replicas)
    ingress = Ingress.options(
        ray_actor_options={"num_cpus": 0.1},
        # The ingress only waits on generators: it holds many requests, and its own queue at
        # each proxy is a last guard (Serve's 429 there); the generators' is the real limit.
        max_ongoing_requests=INGRESS_ONGOING,
        max_queued_requests=INGRESS_ONGOING,
        backpressure_config=backpressure,
    )
    return ingress.bind(generator.bind(settings_dict), settings_dict)
