"""``dpkg-source`` runs forked from a Perl that compiled its modules once.

``dpkg-source -b`` of a small tree spends most of its ~0.12 CPU s compiling the ~100 Perl
modules it loads, and a submit runs it for every tree it packs: it was most of a 40-package
submit.  :class:`DpkgSourceForks` keeps Perl processes (one per packing thread) that have loaded
those modules and compiled the ``dpkg-source`` script itself (as a sub's body); each run is a
``fork`` of one that runs that script once with the run's arguments and directory: the same
code on the same input, so the same source package (the tests compare the bytes), for about a
fifth of the CPU.  What a run of a trivial tree still spent (~0.034 CPU s) went to: modules and
tables it loaded itself (OpenPGP backends, Dpkg::Arch's tables: now loaded by the Perl),
compiling the script (~2.5 ms: now once), Perl's global destruction at its exit (skipped: the
child ends with ``_exit`` after the END blocks); what is left (~0.022 CPU s) is the fork, the
copy-on-write faults of the child, running the script, and tar and xz.

What it cannot run that way is run as a command, as before: ``dpkg-source`` that is not a Perl
script, an argument or directory holding a tab or a newline (the request line's separators), a
Perl that died.  A run past its timeout is killed with its Perl (its own process group) and is
the same :class:`TimeoutError` as a command's.

A Perl's start costs 0.09-0.14 CPU s, and the first pack of a submit that started its own waited
for one (~0.1 s before its first step could be released).  So the Perls are the process's
(:func:`shared_forks`), kept idle between submits (at most :data:`PACK_THREADS`) and started
when the API starts (:func:`buildfarm.engine.srcpkg.warm_up`), not per submit.  A Perl ends
when its input closes, as it does when the process exits however it exits (the pipe's other end
is the process's alone, or a forked child's until it ends), and the process closes them at its
exit too (``atexit``); a child it forks starts its own.  The Perls of another environment (a
test process that changes it) are stopped, not kept beside the new ones.

An upgrade of dpkg-dev replaces the ``dpkg-source`` file (:func:`script_signature` changes;
libdpkg-perl, the modules, is upgraded with it).  A long-lived API then sees it at its next
pack: the idle Perls started from the old file are stopped and a new one is started from the
new one (a run already going ends on the old Perl, which is stopped at the next take), and
:func:`buildfarm.engine.srccache.dpkg_source_version` (asked once per process and signature)
is asked again, so the tree keys from then on name the new version, as a restarted API's do.
A submit examined before the upgrade and packed after it keys its trees with the old version.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

SERVER = r"""
sub compile_script { eval $_[0] }  # as in a file of its own: no pragma, no variable of this one
use strict;
use warnings;
use IO::Handle ();
use POSIX ();
my $server = $$;
# Compiled before everything else, this END block runs after every other one (File::Temp's
# removal of its temporary files, Dpkg's exit handlers): a run's child ends there, its output
# flushed, without the global destruction of everything loaded (which only frees memory).
END {
    if ($$ != $server) {
        STDOUT->flush;
        STDERR->flush;
        POSIX::_exit($?);
    }
}
my ($script, $compiled);
BEGIN {
    $script = shift @ARGV;
    $0 = $script;  # Dpkg's program name, in every message: dpkg-source
    open my $fh, '<', $script or die "cannot read $script: $!\n";
    my $source = do { local $/; <$fh> };
    close $fh;
    my @modules = $source =~ /^use\s+([A-Z][\w:]*)/mg;
    for my $module (@modules, @ARGV) {
        eval "require $module; 1";  # one it cannot load is loaded by the run that needs it
    }
    @ARGV = ();
    # The architecture tables Dpkg::Arch reads once per process: read here, once.
    eval { Dpkg::Arch::debarch_to_gnutriplet('amd64'); Dpkg::Arch::debarch_to_abiattrs('amd64'); 1 };
    # The script compiled once, as the body of a sub each child calls once (so its subs share
    # its variables as in a file: "will not stay shared" holds only for a second call); the
    # same lines in its messages.  One with an __END__ or __DATA__ (that a sub's body cannot
    # hold), or that does not compile so, is run as a file (do).
    local $SIG{__WARN__} = sub { };
    $compiled = $source !~ /^__(?:END|DATA)__\b/m
        && compile_script("package main; sub run_script {\n#line 1 \"$script\"\n$source\n;}\n1");
}
$| = 1;
while (my $line = <STDIN>) {
    chomp $line;
    my ($cwd, $output, @args) = split /\t/, $line, -1;
    my $pid = fork;
    if (!defined $pid) {
        print "-1\n";
        next;
    }
    if ($pid == 0) {
        open STDIN, '<', '/dev/null' or exit 126;
        open STDOUT, '>', $output or exit 126;
        open STDERR, '>&', \*STDOUT or exit 126;
        chdir $cwd or exit 126;
        @ARGV = @args;
        if ($compiled) {
            eval { run_script(); 1 };
        } else {
            do $script;
        }
        if ($@) {
            print STDERR $@;
            exit 255;
        }
        exit 0;
    }
    waitpid $pid, 0;
    print "$?\n";
}
"""
"""The Perl: loads the modules the script ``use``s and those named after it, compiles the script,
then forks a child per request line (directory, output file, arguments; tab-separated) that runs
it, and answers its wait status."""

LOADED_AT_RUN = (
    "Dpkg::Source::Package::V1",
    "Dpkg::Source::Package::V2",
    "Dpkg::Source::Package::V3::Native",
    "Dpkg::Source::Package::V3::Quilt",
    "Dpkg::Source::Archive",
    "Dpkg::Changelog::Debian",
    "Dpkg::Control::Changelog",
    "Dpkg::Vendor::Debian",
    "Dpkg::Vendor::Default",
    "Dpkg::OpenPGP",
    "Dpkg::OpenPGP::Backend::GnuPG",
    "Dpkg::OpenPGP::Backend::SOP",
    "Dpkg::OpenPGP::Backend::Sequoia",
    "MIME::Base64",
    "Dpkg::Compression::Process",
    "Digest::SHA",
    "Digest::MD5",
    "File::Temp",
    "Time::Piece",
)
"""Modules dpkg-source loads while it runs (by source format, changelog format, vendor)."""
STOP_SECONDS = 10.0
PACK_THREADS = min(8, os.cpu_count() or 1)
"""Trees packed at once at submit (:mod:`buildfarm.engine.packing`'s threads: a ``dpkg-source``
run each), and so the idle Perls a process keeps and starts at its start."""

Signature = tuple[int, int, int, int]
"""A file's device, inode, size and mtime (ns): an upgrade replaces the file (a new inode)."""


def perl_script() -> Path | None:
    """The Perl script ``dpkg-source`` is, or None (not found, not Perl)."""
    found = dpkg_source_path()
    if found is None or shutil.which("perl") is None:
        return None
    try:
        with open(found, "rb") as handle:
            first = handle.readline(200)
    except OSError:
        return None
    return found if first.startswith(b"#!") and b"perl" in first else None


@functools.cache
def dpkg_source_path() -> Path | None:
    """Where ``dpkg-source`` is (looked up once per process), or None."""
    found = shutil.which("dpkg-source")
    return None if found is None else Path(found)


def script_signature(script: Path | None) -> Signature | None:
    """``script``'s :data:`Signature`, or None (none, or gone)."""
    if script is None:
        return None
    try:
        stat = script.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class _Perl(NamedTuple):
    process: subprocess.Popen[bytes]
    signature: Signature
    """That of the script the Perl compiled."""


class DpkgSourceForks:
    """dpkg-source runs from preloaded Perls, with ``env`` (taken by each Perl as it starts); at
    most ``keep`` of them kept idle between runs.  A process uses one: :func:`shared_forks`."""

    def __init__(self, env: dict[str, str], keep: int = PACK_THREADS) -> None:
        self.env = env
        self.keep = keep
        self.script = perl_script()
        self._idle: list[_Perl] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, args: list[str], cwd: Path, timeout: float) -> tuple[int, str] | None:
        """(exit status, output) of ``dpkg-source <args>`` in ``cwd``; None when it must be run
        as a command (see the module's docstring).  :class:`TimeoutError` past ``timeout``."""
        fields = [str(cwd.absolute()), *args]
        if self.script is None or self._closed or any("\t" in f or "\n" in f for f in fields):
            return None
        perl = self._take()
        if perl is None:
            return None
        fd, output = tempfile.mkstemp(prefix="dpkg-source-", suffix=".log")
        os.close(fd)
        try:
            status = self._ask(perl.process, [fields[0], output, *args], timeout)
            if status is None:
                return None
            text = Path(output).read_text(errors="replace")
        finally:
            Path(output).unlink(missing_ok=True)
        self._give_back(perl)
        if status < 0:  # fork failed: run it as a command
            return None
        if os.WIFSIGNALED(status):
            return -os.WTERMSIG(status), text
        return os.WEXITSTATUS(status), text

    def start(self, count: int) -> None:
        """Start Perls until ``count`` (at most ``keep``) are idle, without waiting for them to
        load their modules: a run given one still loading waits for it."""
        signature = script_signature(self.script)
        if signature is None:
            return
        with self._lock:
            missing = min(count, self.keep) - len(self._idle)
        for _ in range(missing):
            perl = self._start(signature)
            if perl is None:
                return
            self._give_back(perl)

    def idle_pids(self) -> list[int]:
        """The process ids of the idle Perls."""
        with self._lock:
            return [perl.process.pid for perl in self._idle]

    def _take(self) -> _Perl | None:
        """An idle Perl started from the script as it is now, or a new one; the idle ones started
        from another (or that died) are stopped.  None when the script is gone or Perl cannot
        start."""
        signature = script_signature(self.script)
        if signature is None:
            return None
        with self._lock:
            stale = [p for p in self._idle if p.signature != signature or p.process.poll() is not None]
            self._idle = [p for p in self._idle if p not in stale]
            perl = self._idle.pop() if self._idle else None
        for old in stale:
            self._stop(old.process)
        return perl or self._start(signature)

    def _start(self, signature: Signature) -> _Perl | None:
        assert self.script is not None
        try:
            process = subprocess.Popen(
                ["perl", "-e", SERVER, str(self.script), *LOADED_AT_RUN],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=self.env,
                process_group=0,  # a run past its timeout is killed with everything it started
            )
        except OSError:
            return None
        return _Perl(process, signature)

    def _ask(self, perl: subprocess.Popen[bytes], fields: list[str], timeout: float) -> int | None:
        """The run's wait status, None when the Perl is gone (it is then dropped)."""
        assert perl.stdin is not None and perl.stdout is not None
        try:
            perl.stdin.write(("\t".join(fields) + "\n").encode("utf-8", "surrogateescape"))
            perl.stdin.flush()
        except OSError:
            self._stop(perl)
            return None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._stop(perl, kill=True)
                raise TimeoutError(
                    f"dpkg-source {fields[2] if len(fields) > 2 else ''} took over {timeout:g} s"
                )
            ready, _w, _x = select.select([perl.stdout], [], [], left)
            if ready:
                break
        answer = perl.stdout.readline().strip()
        if not answer.lstrip(b"-").isdigit():
            self._stop(perl)
            return None
        return int(answer)

    def _give_back(self, perl: _Perl) -> None:
        """Kept idle, unless closed or ``keep`` are idle already (then stopped)."""
        with self._lock:
            if not self._closed and len(self._idle) < self.keep:
                self._idle.append(perl)
                return
        self._stop(perl.process)

    def _stop(self, perl: subprocess.Popen[bytes], *, kill: bool = False) -> None:
        """End one Perl: told by the end of its input (after its run), or killed with its runs."""
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(perl.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            assert perl.stdin is not None
            perl.stdin.close()
        try:
            perl.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(perl.pid, signal.SIGKILL)
            perl.wait()
        if perl.stdout is not None:
            perl.stdout.close()

    def close(self) -> None:
        """End every idle Perl; one still running ends after its run."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for perl in idle:
            self._stop(perl.process)


_shared: DpkgSourceForks | None = None
_shared_lock = threading.Lock()


def shared_forks(env: dict[str, str]) -> DpkgSourceForks:
    """The process's :class:`DpkgSourceForks`, of Perls started with ``env``.  Asked with another
    ``env``, it is a new one, and the previous one's Perls are stopped (its runs still going run
    to their end, then stop theirs): a process keeps the idle Perls of one environment alone."""
    global _shared  # noqa: PLW0603 - one set of Perls per process
    with _shared_lock:
        old = _shared
        if old is not None and old.env == env:
            return old
        _shared = new = DpkgSourceForks(env)
    if old is not None:
        old.close()
    return new


def close_shared() -> None:
    """Stop the process's Perls (at its exit: ``atexit``); the next :func:`shared_forks` starts
    anew."""
    global _shared
    with _shared_lock:
        old, _shared = _shared, None
    if old is not None:
        old.close()


def _forget_shared() -> None:
    """In a forked child: the parent's Perls are the parent's (their pipes carry its runs' lines),
    not the child's to use, stop or wait for; the child starts its own if it packs."""
    global _shared, _shared_lock
    _shared, _shared_lock = None, threading.Lock()


atexit.register(close_shared)
os.register_at_fork(after_in_child=_forget_shared)
