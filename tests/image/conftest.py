"""Fixtures of the image tests: one amd64 build per session, shared by its tests.

The base root filesystem is cached (image/build.sh keys a tarball on the package lists in
CACHE_DIR, ~/.cache/edge-gateway-image by default), so only the first build on a machine runs
mmdebstrap; the rest of a build takes about a minute.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest
from image_helpers import BUILD_TOOLS, INSPECT_TOOLS, Build, build_image, remove_tree, require


@pytest.fixture(scope="session")
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a line on the terminal even while output is captured (build stage timings)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(text: str) -> None:
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line("")
            for line in text.splitlines():
                reporter.write_line(f"[image] {line}")

    return write


@pytest.fixture(scope="session")
def amd64_build(tmp_path_factory: pytest.TempPathFactory, report: Callable[[str], None]) -> Iterator[Build]:
    require(*BUILD_TOOLS, *INSPECT_TOOLS)
    out = tmp_path_factory.mktemp("image-amd64")
    try:
        yield build_image(
            out,
            "amd64",
            report,
            timeout=float(os.environ.get("EDGE_GATEWAY_IMAGE_BUILD_TIMEOUT", "900")),
            KEEP_ROOTFS="1",
            COMPRESS="zst",
            COMPRESS_LEVEL="3",
        )
    finally:
        remove_tree(out / "rootfs")
        remove_tree(out / ".work")
        for pattern in ("*.img*", "*.vmlinuz"):  # the initrd is *.initrd.img
            for f in out.glob(pattern):
                f.unlink()
