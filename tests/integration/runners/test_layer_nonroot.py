"""The dependency layer maker as a non-root worker runs it: ``unshare --map-auto`` with the user's
subordinate ids (issue 15).  A farm started as root never takes that path, so the test takes it
as an unprivileged user of this machine (``bfbuilder``, made with ``useradd`` when the test runs
as root and it is missing), on the machine's real build environment and Debian's real zlib1g-dev:
the layer is made with the chroot's files owned as in the environment, then found again.

Skipped, with the reason, only where the machine cannot: no ``runuser``/``useradd``/
``newuidmap``, no subordinate ids for the user, user namespaces refused, or no Python the user
may run with this checkout's packages.  ~15 s (unpacking and packing the ~550 MB environment).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import site
import subprocess
import tempfile
from pathlib import Path

import pytest

import buildfarm
import buildfarm_client
from buildfarm.environments import cache_for, spec_for
from buildfarm.model.settings import load_settings

from nonrootkit import python_for, run_as, unprivileged_user

pytestmark = pytest.mark.sbuild

EXAMPLES = Path(__file__).parents[3] / "examples"
SERVICES = Path(buildfarm.__file__).resolve().parents[1]
CLIENT = Path(buildfarm_client.__file__).resolve().parents[1]  # the wire models the backends use
SCRIPT = """
import json, sys
from pathlib import Path
from buildfarm.environments import LayerCache, LayerPolicy, step_tarball
from buildfarm.environments.cache import Environment
from buildfarm.environments.spec import EnvironmentSpec

root, digest = Path(sys.argv[1]), sys.argv[2]
meta = json.loads((root / "env.json").read_text())
env = Environment(digest, root / "env.tar", EnvironmentSpec.from_dict(meta["spec"]), "", 0, "")
policy = LayerPolicy(LayerCache(root / "layers", 1 << 34), root / "views", min_packages=1)
work = root / sys.argv[3]
work.mkdir()
lines = []
dsc = next((root / "src").glob("*.dsc"))
chosen = step_tarball(env, dsc, [], policy, work=work, log=lines.append, scratch=root / "scratch")
chosen.release()
print(json.dumps({"label": chosen.label, "path": str(chosen.path), "log": lines}))
"""


@pytest.fixture(scope="module")
def environment() -> tuple[Path, str]:
    settings = load_settings(state_dir=Path("/nonexistent"), runner="sbuild")
    env = cache_for(settings).ensure(spec_for(settings))  # made once per machine, as the sbuild farm's
    return env.path, env.digest


def test_non_root_worker_makes_a_faithful_layer_with_its_subordinate_ids(
    environment: tuple[Path, str],
) -> None:
    user = unprivileged_user()
    probe = run_as(user, "unshare", "--map-auto", "--map-root-user", "--mount", "--pid", "--fork", "true")
    if probe.returncode != 0:
        pytest.skip(f"{user} cannot make a user namespace with its subordinate ids: {probe.stderr.strip()}")
    python = python_for(user)
    base, digest = environment
    root = Path(tempfile.mkdtemp(prefix="buildfarm-nonroot-"))  # pytest's own are private to root
    root.chmod(0o755)
    try:
        try:
            (root / "env.tar").hardlink_to(base)
        except OSError:  # another file system
            shutil.copyfile(base, root / "env.tar")
        (root / "env.tar").chmod(0o644)
        shutil.copyfile(base.with_suffix(".json"), root / "env.json")
        tree = root / "src" / "zneed"
        shutil.copytree(EXAMPLES / "hello-standalone", tree)
        for path in (tree / "debian" / "control", tree / "debian" / "changelog"):
            path.write_text(path.read_text().replace("hello-standalone", "zneed"))
        control = tree / "debian" / "control"
        control.write_text(
            control.read_text().replace("debhelper-compat (= 13)", "debhelper-compat (= 13), zlib1g-dev")
        )
        subprocess.run(["dpkg-source", "-b", "zneed"], cwd=root / "src", check=True, capture_output=True)
        (root / "scratch").mkdir()
        shutil.chown(root, user)
        for path in (root / "scratch", root / "src", *root.joinpath("src").rglob("*")):
            shutil.chown(path, user)
        env = {
            "PYTHONPATH": os.pathsep.join([str(SERVICES), str(CLIENT), *site.getsitepackages()]),
            "PATH": os.environ["PATH"],
        }

        def make(work: str) -> dict[str, object]:
            done = run_as(
                user,
                "env",
                "-i",
                *(f"{k}={v}" for k, v in env.items()),
                python,
                "-c",
                SCRIPT,
                str(root),
                digest,
                work,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            answer: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
            return answer

        first = make("work1")
        assert str(first["label"]).startswith("miss:"), first
        layer = Path(str(first["path"]))
        assert layer.stat().st_uid == pwd.getpwnam(user).pw_uid  # made by the user, not by root
        listing = subprocess.run(
            ["tar", "-tvf", str(layer)], capture_output=True, text=True, check=True
        ).stdout
        owners = {line.split()[1] for line in listing.splitlines()}
        zlib = [line for line in listing.splitlines() if line.endswith("./usr/include/zlib.h")]
        assert zlib and zlib[0].split()[1] == "0/0"  # installed as the chroot's root
        assert "42/0" in owners  # _apt's directories keep their owner: the ids were mapped, not squashed
        assert list((root / "scratch").iterdir()) == []  # the unpacked tree was removed
        second = make("work2")
        assert second["label"] == first["label"].replace("miss:", "hit:")  # type: ignore[union-attr]
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
