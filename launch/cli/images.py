"""Commands about container images (``launch/images.py``): ``push`` and ``check_image``."""

from __future__ import annotations

import json

from launch.cli.common import CliError, Commands


class ImageCommands(Commands):
    def push(self, to: str, image: str = "qa-expert/train:latest") -> None:
        """Tag the local IMAGE as TO (REGISTRY/NAME:TAG) and push it; prints the reference for --image.

        Credentials: REGISTRY_USERNAME / REGISTRY_PASSWORD, else whatever `docker login` stored."""
        from launch.images import ImageError, push, registry_auth_from_env

        try:
            pushed = push(str(image), str(to), registry_auth_from_env(str(to)))
        except ImageError as e:
            raise CliError(str(e)) from None
        print(f"use it with: --image {pushed.ref}")
        print(json.dumps({"image": pushed.ref, "digest": pushed.digest}))

    def check_image(self, ref: str) -> None:
        """Check that REF exists in its registry (what a cloud submit checks before renting anything)."""
        from launch.images import ImageError, check_image, registry_auth_from_env

        try:
            digest = check_image(str(ref), registry_auth_from_env(str(ref)))
        except ImageError as e:
            raise CliError(str(e)) from None
        print(f"ok: {ref}" + (f" ({digest})" if digest else ""))
