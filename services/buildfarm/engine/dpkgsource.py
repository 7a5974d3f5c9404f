"""``dpkg-source`` runs forked from a Perl that compiled its modules once.

``dpkg-source -b`` of a small tree spends most of its ~0.12 CPU s compiling the ~100 Perl
modules it loads, and a submit runs it for every tree it packs: it was most of a 40-package
submit.  :class:`DpkgSourceForks` keeps Perl processes (one per packing thread, for one submit)
that have loaded those modules and compiled the ``dpkg-source`` script itself (as a sub's body);
each run is a ``fork`` of one that runs that script once with the run's arguments and directory:
the same code on the same input, so the same source package (the tests compare the bytes), for
about a fifth of the CPU.  What a run of a trivial tree still spent (~0.034 CPU s) went to:
modules and tables it loaded itself (OpenPGP backends, Dpkg::Arch's tables: now loaded by the
Perl), compiling the script (~2.5 ms: now once), Perl's global destruction at its exit (skipped:
the child ends with ``_exit`` after the END blocks); what is left (~0.022 CPU s) is the fork,
the copy-on-write faults of the child, running the script, and tar and xz.

What it cannot run that way is run as a command, as before: ``dpkg-source`` that is not a Perl
script, an argument or directory holding a tab or a newline (the request line's separators), a
Perl that died.  A run past its timeout is killed with its Perl (its own process group) and is
the same :class:`TimeoutError` as a command's.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

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


def perl_script(command: str = "dpkg-source") -> Path | None:
    """The Perl script ``command`` is, or None (not found, not Perl)."""
    found = shutil.which(command)
    if found is None or shutil.which("perl") is None:
        return None
    try:
        with open(found, "rb") as handle:
            first = handle.readline(200)
    except OSError:
        return None
    return Path(found) if first.startswith(b"#!") and b"perl" in first else None


class DpkgSourceForks:
    """dpkg-source runs from preloaded Perls, with ``env`` (taken by each Perl as it starts)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.script = perl_script()
        self._idle: list[subprocess.Popen[bytes]] = []
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
            status = self._ask(perl, [fields[0], output, *args], timeout)
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

    def _take(self) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        assert self.script is not None
        try:
            return subprocess.Popen(
                ["perl", "-e", SERVER, str(self.script), *LOADED_AT_RUN],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=self.env,
                process_group=0,  # a run past its timeout is killed with everything it started
            )
        except OSError:
            return None

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

    def _give_back(self, perl: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(perl)
                return
        self._stop(perl)

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
        """End every Perl (a run still going ends first)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for perl in idle:
            self._stop(perl)
