"""Stand-ins for the registry images docker-compose.yml names, for a machine that cannot pull them.

`postgres:15`, `rabbitmq:3.13-management` and `python:3.11-slim` are built from Debian bookworm's
packages (the Dockerfiles beside this file say what each keeps of the official image's contract
and what it does not cover) on a base made with `debootstrap --variant=minbase` and `docker
import`. An image of one of those names that is already there is kept: one from a registry is never
replaced, and one of ours only when its Dockerfile folder changed since it was built (the label
`org.acme-orders.standin` holds a hash of the folder).

Run by hand: `python -m tests.support.standins` (needs a Docker engine; see docker_engine.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "compose" / "standins"
LABEL = "org.acme-orders.standin"
BASE_IMAGE = "acme-orders-standin/debian:bookworm"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SOURCES = f"""deb {MIRROR} {SUITE} main
deb {MIRROR} {SUITE}-updates main
deb http://deb.debian.org/debian-security {SUITE}-security main
"""
# Image name -> the folder of its Dockerfile.
STANDINS = {
    "postgres:15": "postgres",
    "rabbitmq:3.13-management": "rabbitmq",
    "python:3.11-slim": "python",
}
BUILD_TIMEOUT = 900


def label_of(image: str) -> str | None:
    """The stand-in label of a local image: None if there is no such image, "" if it has no
    such label (it came from somewhere else, a registry most likely)."""
    template = f'{{{{index .Config.Labels "{LABEL}"}}}}'
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", template, image],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        return None
    value = result.stdout.strip()
    return "" if value == "<no value>" else value


def image_id(image: str) -> str | None:
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", image],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def folder_hash(folder: Path, extra: bytes = b"") -> str:
    digest = hashlib.sha256(extra)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def pip_ca_bundle() -> bytes:
    """The CA bundle pip trusts on this machine (PIP_CERT), or the system's."""
    path = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    return path.read_bytes()


def build_base() -> None:
    """A Debian bookworm minbase root filesystem, imported as BASE_IMAGE."""
    if shutil.which("debootstrap") is None:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "debootstrap"], capture_output=True, check=True
        )
    with tempfile.TemporaryDirectory(prefix="acme-standin-root-") as work:
        root = Path(work) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR],
            capture_output=True,
            check=True,
            timeout=BUILD_TIMEOUT,
        )
        (root / "etc/apt/sources.list").write_text(SOURCES)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            [
                "docker",
                "import",
                "--change",
                f"LABEL {LABEL}=base",
                "--change",
                'LABEL org.opencontainers.image.description="Debian bookworm '
                "minbase from debootstrap, the base of acme-orders' stand-in images\"",
                "--change",
                'CMD ["/bin/bash"]',
                "-",
                BASE_IMAGE,
            ],
            stdin=tar.stdout,
            capture_output=True,
            check=True,
            timeout=BUILD_TIMEOUT,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait():
            raise RuntimeError("tar of the stand-in root filesystem failed")


def build(image: str, folder: Path, digest: str) -> None:
    with tempfile.TemporaryDirectory(prefix="acme-standin-") as work:
        context = Path(work) / "context"
        shutil.copytree(folder, context)
        if folder.name == "python":
            (context / "pip-ca.crt").write_bytes(pip_ca_bundle())
        result = subprocess.run(
            [
                "docker",
                "build",
                "--quiet",
                "--build-arg",
                f"BASE={BASE_IMAGE}",
                "--label",
                f"{LABEL}={digest}",
                "--tag",
                image,
                str(context),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=BUILD_TIMEOUT,
        )
        if result.returncode:
            raise RuntimeError(f"building the stand-in {image} failed:\n{result.stderr[-4000:]}")


def ensure_standins(log: object = print) -> dict[str, str]:
    """Make sure every image compose needs is there; returns what was done with each."""
    assert callable(log)
    done: dict[str, str] = {}
    for image, name in STANDINS.items():
        folder = HERE / name
        digest = folder_hash(folder, pip_ca_bundle() if name == "python" else b"")
        label = label_of(image)
        if label == "":
            done[image] = "kept (not a stand-in: from a registry)"
            continue
        if label == digest:
            done[image] = "kept (stand-in, up to date)"
            continue
        if label_of(BASE_IMAGE) is None:
            log(f"building {BASE_IMAGE} with debootstrap")
            build_base()
        log(f"building the stand-in {image}")
        outdated = image_id(image)
        build(image, folder, digest)
        if outdated:
            # Our own, replaced: not left behind as a nameless image (a container may still
            # use it, then it stays).
            subprocess.run(["docker", "image", "rm", outdated], capture_output=True, check=False)
        done[image] = "built (stand-in)" if label is None else "rebuilt (stand-in had changed)"
    return done


if __name__ == "__main__":
    for image, what in ensure_standins().items():
        print(f"{image}: {what}")
    sys.exit(0)
