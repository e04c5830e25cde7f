"""``bridge serve``: the webhook on Flask's own server, for trying it locally."""

from __future__ import annotations

import click

from .common import settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Run the webhook locally (production runs gunicorn from the Procfile)."""
    from ..service.wiring import require_api_key, require_signing
    from ..web.app import create_app

    config = settings()
    require_api_key(config)
    require_signing(config)
    app = create_app(config)
    app.run(host=host, port=port, threaded=True)


COMMANDS = [serve]
