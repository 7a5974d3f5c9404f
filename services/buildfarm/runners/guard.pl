# The builder's guard: a builder never outlives the worker that started it.
#
#   perl guard.pl <worker pid> -- <command>...
#
# Started by buildfarm.runners.process.run_streaming for every build command (its docstring
# says why and what the worker expects of it):
#
# * it asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG), and checks the
#   parent is still the one that started it (the worker may have died before the prctl);
# * it is a child subreaper (PR_SET_CHILD_SUBREAPER): every descendant that is orphaned, even
#   one that left the process group with setsid (sbuild's unshare helpers), is reparented to
#   it, so it can find and kill all of them through /proc;
# * when it is told to stop (SIGTERM, SIGINT, SIGHUP), or its parent dies, it sends SIGTERM to
#   every descendant, waits up to $GRACE_SECONDS and sends SIGKILL to what is left; when the
#   command ends by itself, what it left running is killed at once;
# * it exits as the command did: the same status, or the same signal, so the worker can tell a
#   builder killed by the system (the OOM killer, an operator) from a build that failed.
#
# Why Perl: it starts once for every build command, so its start is part of every step.  Perl
# is there wherever dpkg-dev is, and this script starts and runs in ~3 ms of CPU where the same
# guard in Python took 15-20 ms (the interpreter's start alone is 8 ms).  So it loads no module:
# no POSIX (8 ms), no Config (2-3 ms), no warnings, and no syscall.ph (13 ms) where %SYS below
# knows the system call numbers of the machine Perl runs as.  Linux only.

use strict;

my %SYS = (    # system call numbers (prctl, rt_sigprocmask) by ELF class and machine of Perl itself
    '2:62'  => [157, 14],     # x86_64
    '2:183' => [167, 135],    # aarch64
);
my %SIGNAL = (HUP => 1, INT => 2, TERM => 15);    # the same numbers on every Linux
my $PR_SET_PDEATHSIG       = 1;
my $PR_SET_DUMPABLE        = 4;
my $PR_SET_CHILD_SUBREAPER = 36;
my $WNOHANG                = 1;
my $GRACE_SECONDS          = 8;     # below the worker's own 10 s: the guard, not the group kill, ends it
my $KILL_ROUNDS            = 20;    # bound on rounds of "find descendants, kill them"
my $LOOK_SECONDS           = 0.5;   # the waiting guard's longest sleep: it looks at its parent then

# The ELF class and machine of the running Perl (its system calls' numbering), as "class:machine".
sub machine {
    open(my $exe, '<:raw', '/proc/self/exe') or return '';
    read($exe, my $head, 20) == 20 or return '';
    my ($class, $order) = unpack('x4 C C', $head);
    return $class . ':' . unpack($order == 1 ? 'v' : 'n', substr($head, 18, 2));
}
my $MACHINE = machine();

sub syscall_number {
    my ($index, $name) = @_;
    return $SYS{$MACHINE}[$index] if $SYS{$MACHINE};
    require 'syscall.ph';    # the slow way, where the number is not known here
    no strict 'refs';
    return &{"main::SYS_$name"}();
}

sub prctl {
    my ($option, $value) = @_;
    syscall(syscall_number(0, 'prctl'), $option, $value, 0, 0, 0) == 0
        or die "guard: prctl($option) failed: $!\n";
}

# No signal blocked, whatever the thread that started the guard had blocked: the guard must get
# its stop signals, and the command starts with none blocked.
sub unblock_signals {
    my $none = "\0" x 8;    # the kernel's sigset_t
    syscall(syscall_number(1, 'rt_sigprocmask'), 2, $none, 0, 8) == 0    # SIG_SETMASK
        or die "guard: rt_sigprocmask failed: $!\n";
}

# Every live process below $root (from /proc: the parent field of each stat).
sub descendants {
    my ($root) = @_;
    if (defined $ENV{BUILDFARM_GUARD_TRACE}) {    # a test counts the guard's looks through /proc
        if (open(my $trace, '>>', $ENV{BUILDFARM_GUARD_TRACE})) {
            print $trace "look\n";
            close $trace;
        }
    }
    my %children;
    opendir(my $proc, '/proc') or return ();
    for my $entry (readdir $proc) {
        next unless $entry =~ /^\d+$/;
        open(my $stat, '<', "/proc/$entry/stat") or next;    # gone meanwhile
        my $line = <$stat>;
        close $stat;
        # After the last ')': a command's name (in parentheses) may hold ') S 1' itself.
        next unless defined $line && $line =~ /^.*\)\s+(\S)\s+(\d+)/s;
        push @{ $children{$2} }, $entry if $1 ne 'Z';
    }
    closedir $proc;
    my @found;
    my @todo = ($root);
    while (@todo) {
        for my $child (@{ $children{ pop @todo } || [] }) {
            push @found, $child;
            push @todo,  $child;
        }
    }
    return @found;
}

# Collect every exited child (orphans included); the command's wait status if it was one.
# Returns (status or undef, whether a child is left: live, or exited and not collected).
sub reap {
    my ($command_pid) = @_;
    my $status;
    while (1) {
        my $pid = waitpid(-1, $WNOHANG);
        return ($status, 0) if $pid < 0;    # ECHILD: no child at all
        return ($status, 1) if $pid == 0;   # children, none exited
        $status = $? if $pid == $command_pid;
    }
}

# Kill every descendant (SIGTERM and a grace period first if $gently); the command's status
# if it was collected meanwhile.  A command that ended by itself leaving nothing behind (the
# usual case) costs no look through /proc: a subreaper with no child has no descendant.
sub kill_all {
    my ($me, $command_pid, $gently) = @_;
    my $status;
    if (!$gently) {
        my ($found, $left) = reap($command_pid);
        $status = $found;
        return $status unless $left;
    } else {
        kill 'TERM', descendants($me);
        my $deadline = time + $GRACE_SECONDS;
        while (time < $deadline) {
            my ($found) = reap($command_pid);
            $status = $found if !defined $status;
            return $status unless descendants($me);
            select(undef, undef, undef, 0.1);
        }
    }
    for (1 .. $KILL_ROUNDS) {
        my @left = descendants($me);
        last unless @left;
        kill 'KILL', @left;
        select(undef, undef, undef, 0.05);
        my ($found) = reap($command_pid);
        $status = $found if defined $found;
    }
    my ($found) = reap($command_pid);
    return defined $found ? $found : $status;
}

# Exit as the command did (a signal is raised again on the guard itself, which dumps no core).
sub exit_like {
    my ($status, $stopped_by) = @_;
    my $signal = $stopped_by;
    $signal = $status & 127 if !defined $signal && defined $status && ($status & 127);
    if ($signal) {
        prctl($PR_SET_DUMPABLE, 0);    # raising SIGSEGV again must not dump the guard's core
        my %name = reverse %SIGNAL;    # the guard's handlers: the only signals it does not leave as they were
        $SIG{ $name{$signal} } = 'DEFAULT' if $name{$signal};
        kill $signal, $$;
        exit 128 + $signal;            # not reached for a deadly signal
    }
    exit(defined $status ? $status >> 8 : 1);
}

sub main {
    my ($parent, $dashes, @command) = @ARGV;
    if (!defined $dashes || $dashes ne '--' || !@command || $parent !~ /^\d+$/) {
        print STDERR "usage: guard.pl <parent pid> -- <command>...\n";
        exit 1;
    }
    my $stopped_by;
    # The handlers only record: a handler that died to end a blocking waitpid could do so just
    # after the waitpid had collected the command, and the command's status would be lost.
    for my $name (qw(TERM INT HUP)) {
        $SIG{$name} = sub { $stopped_by //= $SIGNAL{$name} };
    }
    $SIG{CHLD} = sub { };    # a child's end interrupts the sleep below (ignored by default, it would not)
    unblock_signals();
    prctl($PR_SET_CHILD_SUBREAPER, 1);
    prctl($PR_SET_PDEATHSIG, $SIGNAL{TERM});
    if (getppid() != $parent) {
        print STDERR "guard: the worker $parent died before the build started\n";
        exit 1;
    }
    my $command_pid = fork;
    if (!defined $command_pid) {
        print STDERR "guard: cannot fork: $!\n";
        exit 1;
    }
    if ($command_pid == 0) {
        $SIG{$_} = 'DEFAULT' for qw(TERM INT HUP CHLD);
        { exec { $command[0] } @command; }
        print STDERR "cannot run $command[0]: $!\n";
        exit 127;
    }
    my $status;
    while (1) {
        my ($found) = reap($command_pid);
        $status = $found if defined $found;
        last if defined $status || defined $stopped_by;
        if (getppid() != $parent) {    # no PDEATHSIG came (the parent thread outlived the process?)
            $stopped_by = $SIGNAL{TERM};
            last;
        }
        # Ended at once by a signal (a child's end, a stop).  One that comes between the reap
        # above and this sleep's system call (a few operations) waits for the next look.
        select(undef, undef, undef, $LOOK_SECONDS);
    }
    my $found = kill_all($$, $command_pid, defined $stopped_by);
    exit_like(defined $status ? $status : $found, $stopped_by);
}

main();
