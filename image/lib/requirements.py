"""Print the runtime requirements of a wheel, as pip requirement lines, for the image's Python.

    python requirements.py WHEEL PYTHON_VERSION MACHINE [PROVIDED ...]

Markers are evaluated for the image (Linux, CPython PYTHON_VERSION on MACHINE), not for the build
host; extras are not followed; PROVIDED names distributions that the image gets from Debian instead
(systemd-python: python3-systemd, so nothing is compiled). Needs the ``packaging`` distribution.
"""

from __future__ import annotations

import sys
import zipfile
from email.parser import HeaderParser

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    wheel, python_version, machine, *provided = argv
    skip = {canonicalize_name(p) for p in provided}
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        metadata = HeaderParser().parsestr(zf.read(name).decode())
    environment = {
        "python_version": python_version,
        "python_full_version": python_version + ".0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": machine,
        "extra": "",
    }
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        if canonicalize_name(req.name) in skip:
            continue
        req.marker = None
        print(req)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
