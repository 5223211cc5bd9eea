"""The Supabase-shaped cluster and the shop's deployed database, built from ../shared for the tests.

shared/supabase/build.sh makes a private PostgreSQL cluster whose template1 is shaped like a real
Supabase project (its roles, auth schema and default privileges; postgres not a superuser), so every
database created on it is one. shared/legacy/build.sh applies the shop's deployed SQL and data to one.
Both are found through AIPT_SHARED_DIR, else ../shared beside the repository, else /work/shared.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    candidates = [os.environ.get("AIPT_SHARED_DIR"), REPO.parent / "shared", "/work/shared"]
    for c in candidates:
        if c and (Path(c) / "supabase" / "build.sh").exists() and (Path(c) / "legacy" / "build.sh").exists():
            return Path(c)
    raise RuntimeError(
        "the Supabase-shaped and deployed-database fixtures were not found: set AIPT_SHARED_DIR to the folder "
        f"holding supabase/build.sh and legacy/build.sh (looked in {[str(c) for c in candidates if c]})"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A Supabase-shaped cluster built for this test session (or one already running, TEST_SUPABASE_URL)."""

    def __init__(self) -> None:
        self.top: str | None = None
        if url := os.environ.get("TEST_SUPABASE_URL"):
            self.url = url.rstrip("/")
            return
        port = free_port()
        # As root, the server runs as the postgres OS user, which must be able to enter the folder.
        self.top = tempfile.mkdtemp(prefix="aipt-supa-")
        os.chmod(self.top, 0o755)
        self.datadir = Path(self.top) / "pg"
        build = shared_dir() / "supabase" / "build.sh"
        done = subprocess.run([str(build), str(self.datadir), str(port), "template1"], capture_output=True, text=True)
        if done.returncode != 0 or "BUILD-OK" not in done.stdout:
            raise RuntimeError(f"supabase/build.sh failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        self.url = f"postgresql://postgres@127.0.0.1:{port}"

    def database_url(self, name: str, user: str = "postgres") -> str:
        base = self.url.replace("postgresql://postgres@", f"postgresql://{user}@", 1)
        return f"{base}/{name}"

    def close(self) -> None:
        if self.top is None:
            return
        subprocess.run([str(shared_dir() / "supabase" / "build.sh"), "--stop", str(self.datadir)], capture_output=True)
        shutil.rmtree(self.top, ignore_errors=True)


def build_legacy(url: str, version_23: str = "f066a21") -> None:
    """The shop's deployed chain and data on an empty Supabase-shaped database (LEGACY-OK or raise)."""
    env = {**os.environ}
    if version_23 != "f066a21":
        env["LEGACY_23"] = version_23
    done = subprocess.run([str(shared_dir() / "legacy" / "build.sh"), "--data", url],
                          capture_output=True, text=True, env=env)  # fmt: skip
    if done.returncode != 0 or "LEGACY-OK" not in done.stdout:
        raise RuntimeError(f"legacy/build.sh failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
