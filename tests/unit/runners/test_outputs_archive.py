"""The worker trusts nothing in a builder pod's outputs archive until unpack_outputs checked it.

The archives here are crafted by hand, byte by byte, the way a hostile or broken build could
make them; one test also runs the entrypoint's own archive writer, so both sides agree on the format.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType

import pytest

from buildfarm.model.errors import PermanentError
from buildfarm.runners.outputs import OutputsResult, unpack_outputs

ENTRYPOINT = Path(__file__).parents[3] / "buildtools" / "builder" / "buildfarm-step"
DEB = b"!<arch>\nnot really a deb, but bytes with a hash\n"


def _entry(name: str, data: bytes) -> dict[str, object]:
    return {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _result(files: list[dict[str, object]], ok: bool = True, error: str | None = None) -> bytes:
    return json.dumps({"version": 1, "ok": ok, "error": error, "files": files}).encode()


def _archive(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(raw.getvalue()))
    return path


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_good_archive_gives_identical_files(tmp_path: Path) -> None:
    buildinfo = b"Format: 1.0\n"
    archive = _archive(
        tmp_path / "a.tar.gz",
        [
            (
                "result.json",
                _result([_entry("hello_1.0_amd64.deb", DEB), _entry("hello_1.0.buildinfo", buildinfo)]),
            ),
            ("outputs/hello_1.0_amd64.deb", DEB),
            ("outputs/hello_1.0.buildinfo", buildinfo),
        ],
    )
    result = unpack_outputs(archive, tmp_path / "out")
    assert result == OutputsResult(
        True, None, [tmp_path / "out" / "hello_1.0.buildinfo", tmp_path / "out" / "hello_1.0_amd64.deb"]
    )
    assert (tmp_path / "out" / "hello_1.0_amd64.deb").read_bytes() == DEB


def test_failed_build_reports_its_error(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path / "a.tar.gz", [("result.json", _result([], ok=False, error="make: *** boom"))]
    )
    assert unpack_outputs(archive, tmp_path / "out") == OutputsResult(False, "make: *** boom", [])


@pytest.mark.parametrize(
    ("members", "message"),
    [
        pytest.param(
            [("result.json", _result([_entry("x.deb", DEB)])), ("outputs/../x.deb", DEB)],
            "output name '../x.deb' is not a plain file name",
            id="path-traversal",
        ),
        pytest.param(
            [("result.json", _result([_entry("x.deb", DEB)])), ("/etc/x.deb", DEB)],
            "unexpected member '/etc/x.deb'",
            id="absolute-path",
        ),
        pytest.param(
            [("result.json", _result([_entry("x.deb", DEB)])), _link("outputs/x.deb", "/etc/passwd")],
            "member 'outputs/x.deb' is a link",
            id="symlink",
        ),
        pytest.param(
            [
                ("result.json", _result([_entry("x.deb", DEB)])),
                _link("outputs/x.deb", "result.json", tarfile.LNKTYPE),
            ],
            "member 'outputs/x.deb' is a link",
            id="hardlink",
        ),
        pytest.param(
            [("result.json", _result([_entry("x.deb", DEB)])), ("outputs/x.deb", DEB + b"tampered")],
            "x.deb is 56 bytes, result.json says 48",
            id="wrong-size",
        ),
        pytest.param(
            [("result.json", _result([_entry("x.deb", DEB)])), ("outputs/x.deb", DEB.upper())],
            "x.deb has sha256 ",
            id="wrong-hash",
        ),
        pytest.param(
            [
                ("result.json", _result([_entry("x.deb", DEB)])),
                ("outputs/x.deb", DEB),
                ("outputs/y.deb", DEB),
            ],
            "outputs/y.deb is not listed in result.json",
            id="extra-file",
        ),
        pytest.param(
            [("result.json", _result([_entry("x.deb", DEB), _entry("y.deb", DEB)])), ("outputs/x.deb", DEB)],
            "result.json lists y.deb, which is not in the archive",
            id="missing-file",
        ),
        pytest.param(
            [("result.json", _result([_entry("x.sh", DEB)])), ("outputs/x.sh", DEB)],
            "output name 'x.sh' is not a plain file name ending in .deb, .udeb, .buildinfo",
            id="unknown-suffix",
        ),
        pytest.param(
            [("result.json", _result([_entry("x.deb", DEB)])), ("outputs/x.deb", DEB), ("evil.sh", b"")],
            "unexpected member 'evil.sh'",
            id="stray-member",
        ),
        pytest.param([("outputs/x.deb", DEB)], "it has no result.json", id="no-result"),
        pytest.param(
            [("result.json", b'{"version": 2, "ok": true, "error": null, "files": []}')],
            "is not a version 1 result object",
            id="future-version",
        ),
        pytest.param(
            [
                ("result.json", _result([_entry("x.deb", DEB)], ok=False, error="boom")),
                ("outputs/x.deb", DEB),
            ],
            "says the build failed but gives no error or still lists files",
            id="failed-with-files",
        ),
        pytest.param(
            [("result.json", _result([_entry("x.buildinfo", DEB)])), ("outputs/x.buildinfo", DEB)],
            "says ok but lists no .deb",
            id="no-deb",
        ),
    ],
)
def test_bad_archive_is_rejected_and_leaves_nothing(
    tmp_path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], message: str
) -> None:
    archive = _archive(tmp_path / "bad.tar.gz", members)
    dest = tmp_path / "out"
    with pytest.raises(PermanentError, match=r"^outputs archive bad\.tar\.gz rejected: ") as caught:
        unpack_outputs(archive, dest)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "x.deb").exists() and not Path("/etc/x.deb").exists()


def test_not_a_tarball(tmp_path: Path) -> None:
    archive = tmp_path / "junk.tar.gz"
    archive.write_bytes(b"<Error>AccessDenied</Error>")
    with pytest.raises(PermanentError, match=r"junk\.tar\.gz rejected: not a readable \.tar\.gz"):
        unpack_outputs(archive, tmp_path / "out")


def test_existing_file_is_not_overwritten(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "x.deb").write_bytes(b"mine")
    archive = _archive(
        tmp_path / "a.tar.gz", [("result.json", _result([_entry("x.deb", DEB)])), ("outputs/x.deb", DEB)]
    )
    with pytest.raises(PermanentError, match=r"x\.deb already exists in"):
        unpack_outputs(archive, dest)
    assert (dest / "x.deb").read_bytes() == b"mine"


def _entrypoint() -> ModuleType:
    loader = SourceFileLoader("buildfarm_step", str(ENTRYPOINT))
    spec = spec_from_loader("buildfarm_step", loader)
    assert spec is not None
    module = module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_entrypoints_archives_are_accepted(tmp_path: Path) -> None:
    step = _entrypoint()
    (tmp_path / "hello_1.0_amd64.deb").write_bytes(DEB)
    step.write_archive(tmp_path / "ok.tar.gz", [tmp_path / "hello_1.0_amd64.deb"], None)
    step.write_archive(tmp_path / "failed.tar.gz", [], "dpkg-buildpackage exited with status 2")
    ok = unpack_outputs(tmp_path / "ok.tar.gz", tmp_path / "out")
    assert ok.ok and [p.read_bytes() for p in ok.files] == [DEB]
    failed = unpack_outputs(tmp_path / "failed.tar.gz", tmp_path / "out2")
    assert failed == OutputsResult(False, "dpkg-buildpackage exited with status 2", [])
