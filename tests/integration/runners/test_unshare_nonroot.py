"""The ``unshare`` runner as a non-root worker runs it (the local profile on a person's desk):
``unshare --map-auto --map-root-user``, the build's root being the worker's user and every other
id one of its subordinate ids (/etc/subuid, /etc/subgid through newuidmap/newgidmap).  A farm
started as root never takes that path, so the test takes it as an unprivileged user of this
machine (``bfbuilder``, made with ``useradd`` when the test runs as root and it is missing), in
the machine's real builder environment (linked, read-only, into a directory the user owns), with
the chroot root on tmpfs (/dev/shm) as the local profile has it.

Four steps in one runner: hello-standalone (the .deb is built; its tarball is unpacked once,
owned by the user's root and subordinate ids); a probe package that records the build's id map
(built on the same unpacked tree, not a new one); a package with one Build-Depends the
environment lacks (zlib1g-dev, from Debian's mirror: apt, its ``_apt`` sandbox and dpkg's
directory renames in the overlay, whose writes stay in the step's upper directory); a sleeping
build that is cancelled (killed whole, its directory removed).  What a worker killed mid-step
leaves (an unpacked chroot) is removed as the reaper removes it; then ``remove_trees``
(``buildfarm stop``) leaves nothing.

Skipped, with the reason, only where the machine cannot: no ``runuser``/``useradd``/
``newuidmap``, no subordinate ids for the user, user namespaces refused, or no Python the user
may run with this checkout's packages.  ~26 s at load 4 on 2 cores (two unpacks, three builds and
a cancelled one).
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
from buildfarm.environments import builder_spec, cache_for, spec_for
from buildfarm.model.settings import load_settings

from debpkgs import make_package
from nonrootkit import python_for, run_as, unprivileged_user

pytestmark = pytest.mark.sbuild

EXAMPLES = Path(__file__).parents[3] / "examples"
SERVICES = Path(buildfarm.__file__).resolve().parents[1]
CLIENT = Path(buildfarm_client.__file__).resolve().parents[1]
SCRIPT = """
import contextlib, json, shutil, sys, threading
from pathlib import Path
from buildfarm.environments import EnvironmentCache, LayerCache, LayerPolicy
from buildfarm.environments.spec import EnvironmentSpec
from buildfarm.model.sources import pack_tree
from buildfarm.runners.base import StepJob, chroot_root, remove_mapped_tree
from buildfarm.runners.unshare import UnshareRunner, remove_trees

root, digest = Path(sys.argv[1]), sys.argv[2]
spec = EnvironmentSpec.from_dict(json.loads((root / "environments" / f"{digest}.json").read_text())["spec"])

def refuse(*args, **kwargs):
    raise AssertionError("the test's environment is linked in: nothing is made")

layers = LayerPolicy(LayerCache(root / "layers", 8 << 30), root / "views", 100)  # apt in the overlay
tmpdir = chroot_root(Path("/dev/shm"), root / "state")
runner = UnshareRunner(
    None, spec.distribution, tmpdir, environments=EnvironmentCache(root / "environments", refuse),
    spec=spec, layers=layers,
)

def job(number, name, lines):
    tarball = root / f"{name}.tar.gz"
    tarball.write_bytes(pack_tree(root / "src" / name))
    workdir = root / f"work-{name}"
    workdir.mkdir()
    return StepJob(1, name, number, tarball, workdir, [], lines.append, timeout_seconds=900,
                   environment_id=f"unshare:{spec.distribution}:{digest}")

def tree_state():
    owners = {}
    for path in (runner.trees.root, *runner.trees.trees()):
        for inside in ("", "var/cache/apt/archives/partial"):
            with contextlib.suppress(OSError):
                st = (path / inside).stat()
                owners[str(path / inside)] = [st.st_uid, st.st_gid, st.st_mode & 0o7777]
    trees = runner.trees.trees()
    zlib = ["zlib1g-dev" in (t / "var/lib/dpkg/status").read_text() for t in trees]
    return [[t.name, t.stat().st_ino, z] for t, z in zip(trees, zlib)], owners

def entries():
    return sorted(p.name for p in tmpdir.iterdir()) if tmpdir.exists() else None

answer = {"tmpdir": str(tmpdir), "trees_root": str(runner.trees.root), "steps": []}
for number, name in enumerate(["hello-standalone", "nsprobe", "zneed"], 1):
    lines = []
    result = runner.run(job(number, name, lines))
    answer["steps"].append({
        "ok": result.ok, "error": result.error, "outputs": [str(p) for p in result.outputs],
        "tail": lines[-20:], "apt": [li for li in lines if "zlib1g-dev" in li],
        "trees": tree_state()[0], "owners": tree_state()[1], "entries": entries(),
    })
lines = []
sleeper = job(3, "nssleeps", lines)
results = []
thread = threading.Thread(target=lambda: results.append(runner.run(sleeper)))
thread.start()
while thread.is_alive() and "nssleeps-started" not in lines:
    thread.join(0.2)
answer["while_running"] = entries()
sleeper.cancel.set()
thread.join(900)
answer["cancelled"] = {
    "ok": results[0].ok, "error": results[0].error, "entries": entries(), "tail": lines[-20:],
}
leftover = tmpdir / "9-killed-1"  # what a worker killed mid-step leaves (an unpacked chroot)
leftover.mkdir()
runner.trees.unpack(runner.environments.get(digest).path, leftover / "root")
shutil.rmtree(leftover, ignore_errors=True)
answer["rmtree_leaves"] = leftover.exists()
remove_mapped_tree(leftover)  # what the reaper does with it
answer["reaped"] = not leftover.exists()
remove_trees(tmpdir)
answer["after_stop"] = tmpdir.exists()
print(json.dumps(answer))
"""


@pytest.fixture(scope="module")
def environment() -> tuple[Path, str]:
    settings = load_settings(state_dir=Path("/nonexistent"))
    env = cache_for(settings).ensure(builder_spec(spec_for(settings)))  # shared with the root tests
    return env.path, env.digest


def _field(deb: Path, name: str) -> str:
    done = subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_non_root_worker_builds_in_its_subordinate_ids(environment: tuple[Path, str]) -> None:
    user = unprivileged_user()
    probe = run_as(user, "unshare", "--map-auto", "--map-root-user", "--mount", "--pid", "--fork", "true")
    if probe.returncode != 0:
        pytest.skip(f"{user} cannot make a user namespace with its subordinate ids: {probe.stderr.strip()}")
    python = python_for(user)
    uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
    subid = next(li for li in Path("/etc/subuid").read_text().splitlines() if li.startswith(f"{user}:"))
    first, count = int(subid.split(":")[1]), int(subid.split(":")[2])
    base, digest = environment
    root = Path(tempfile.mkdtemp(prefix="buildfarm-nonroot-"))  # pytest's own are private to root
    root.chmod(0o755)
    answer: dict[str, object] = {}
    try:
        envs = root / "environments"
        envs.mkdir()
        try:  # the root's cache is only read: the user may remove its link, never write the file
            (envs / base.name).hardlink_to(base)
        except OSError:  # another file system
            shutil.copyfile(base, envs / base.name)
        shutil.copyfile(base.with_suffix(".json"), envs / f"{digest}.json")
        shutil.copytree(EXAMPLES / "hello-standalone", root / "src" / "hello-standalone")
        zneed = root / "src" / "zneed"  # one Build-Depends the environment lacks: apt installs it
        shutil.copytree(EXAMPLES / "hello-standalone", zneed)
        for path in (zneed / "debian" / "control", zneed / "debian" / "changelog"):
            path.write_text(path.read_text().replace("hello-standalone", "zneed"))
        control = zneed / "debian" / "control"
        control.write_text(
            control.read_text().replace("debhelper-compat (= 13)", "debhelper-compat (= 13), zlib1g-dev")
        )
        make_package(root / "src", "nsprobe", build="cat /proc/self/uid_map /proc/self/gid_map > payload.txt")
        make_package(root / "src", "nssleeps", build="echo nssleeps-started; sleep 617.75")
        for path in (root, *root.rglob("*")):
            if path != envs / base.name:  # the linked tarball stays root's
                os.chown(path, uid, -1, follow_symlinks=False)
        env = {
            "PYTHONPATH": os.pathsep.join([str(SERVICES), str(CLIENT), *site.getsitepackages()]),
            "PATH": os.environ["PATH"],
        }
        done = run_as(
            user, "env", "-i", *(f"{k}={v}" for k, v in env.items()), python, "-c", SCRIPT, str(root), digest
        )
        assert done.returncode == 0, done.stderr[-3000:]
        answer = json.loads(done.stdout.splitlines()[-1])
        hello, nsprobe, zneed_step = answer["steps"]  # type: ignore[misc]
        tmpdir = Path(answer["tmpdir"])  # type: ignore[arg-type]

        assert hello["ok"], (hello["error"], hello["tail"])
        (deb,) = [Path(p) for p in hello["outputs"] if p.endswith(".deb") and "-dbgsym_" not in p]
        assert _field(deb, "Package") == "hello-standalone"
        contents = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True)
        assert "./usr/bin/hello-standalone" in contents.stdout
        # the attempt's directory went; the unpacked tree stays, kept for the next step
        assert hello["entries"] == ["trees"]
        ((name, inode, _),) = hello["trees"]
        trees = answer["trees_root"]
        owners = hello["owners"]
        assert owners[trees] == [uid, gid, 0o755]  # the worker's own directory
        assert owners[f"{trees}/{name}"] == [uid, gid, 0o755]  # the build's root is the user...
        partial = owners[f"{trees}/{name}/var/cache/apt/archives/partial"]
        assert partial[:2] == [first + 41, gid]  # ..._apt (42) one of its subordinate ids

        assert nsprobe["ok"], (nsprobe["error"], nsprobe["tail"])
        assert nsprobe["trees"] == [[name, inode, False]]  # the same unpacked tree, not a new one
        (probe_deb,) = [Path(p) for p in nsprobe["outputs"] if p.endswith(".deb")]
        subprocess.run(["dpkg-deb", "-x", str(probe_deb), str(root / "x")], check=True)
        uid_map = (root / "x/usr/share/doc/nsprobe/payload.txt").read_text().splitlines()[:2]
        assert [li.split() for li in uid_map] == [["0", str(uid), "1"], ["1", str(first), str(count - 1)]]

        # apt (its _apt sandbox a subordinate id) and dpkg work in the non-root overlay on tmpfs
        assert zneed_step["ok"], (zneed_step["error"], zneed_step["tail"])
        assert any(line.startswith("Unpacking zlib1g-dev") for line in zneed_step["apt"]), zneed_step["apt"]
        # its tarball is the environment itself (the others': its lean layer), unpacked beside;
        # what apt installed went into the step's upper directory, not into a tree
        assert [name, inode, False] in zneed_step["trees"] and len(zneed_step["trees"]) == 2
        assert not any(zlib for _, _, zlib in zneed_step["trees"])

        cancelled = answer["cancelled"]
        assert answer["while_running"] is not None and len(answer["while_running"]) == 2  # type: ignore[arg-type]
        assert cancelled == {  # type: ignore[comparison-overlap]
            "ok": False,
            "error": "buildfarm-step stopped: cancelled or lease lost",
            "entries": ["trees"],
            "tail": cancelled["tail"],  # type: ignore[index]
        }
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        assert "sleep 617.75" not in ps
        # a killed attempt's chroot: its subordinate ids' private directories stop shutil.rmtree,
        # the reaper's remove_mapped_tree removes it
        assert answer["rmtree_leaves"] is True and answer["reaped"] is True
        assert answer["after_stop"] is False and not tmpdir.exists()  # buildfarm stop removed the trees
    finally:
        tmpdirs = [answer["tmpdir"]] if "tmpdir" in answer else []
        subprocess.run(["rm", "-rf", "--one-file-system", str(root), *map(str, tmpdirs)], check=False)


NO_IDS_SCRIPT = """
import sys
from pathlib import Path
from buildfarm.model.errors import PermanentError
from buildfarm.runners.base import StepJob
from buildfarm.runners.unshare import UnshareRunner

runner = UnshareRunner(Path("/nonexistent.tar"), "bookworm", overlay=False)
job = StepJob(1, "x", 1, Path("/nonexistent.tar.gz"), Path("/nonexistent"), [], print)
try:
    runner.run(job)
except PermanentError as exc:
    print(exc)
"""


def test_a_user_without_subordinate_ids_gets_one_line_saying_how_to_add_them() -> None:
    """``nobody`` (every Debian system has it) has no /etc/subuid line: the step fails before
    anything runs, with the command that gives the user a range."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("runs a step as nobody: needs root and runuser")
    if any(line.startswith("nobody:") for line in Path("/etc/subuid").read_text().splitlines()):
        pytest.skip("nobody has subordinate ids on this machine")
    python = python_for("nobody")
    pythonpath = os.pathsep.join([str(SERVICES), str(CLIENT), *site.getsitepackages()])
    done = run_as(
        "nobody",
        "env",
        "-i",
        f"PYTHONPATH={pythonpath}",
        f"PATH={os.environ['PATH']}",
        python,
        "-c",
        NO_IDS_SCRIPT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == (
        "/etc/subuid gives nobody no subordinate ids: the unshare runner maps the build's users onto "
        "them (usermod --add-subuids 100000-165535 --add-subgids 100000-165535 nobody)"
    )
