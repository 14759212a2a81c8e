#!/usr/bin/perl

# make bench: stanza relay throughput through the edge against stock nginx
# proxy_pass, in one nginx, in the same run (docs/performance.md).
#
#   perl bench/run.pl NGINX STREAM_SO MODULE_SO XMPP_BENCH RESULTS \
#       [EXPAT_ONLY]
#
# EXPAT_ONLY, if given, also times expat alone on the same bytes in memory
# (bench/expat_only.c), for context: it is not part of the ratio.
#
# Environment: BENCH_STANZAS (stanzas per run, default 500000),
# BENCH_SIZE (bytes per stanza, default 1024), BENCH_RUNS (runs per case,
# default 5), BENCH_KEEP=1 keeps the nginx directory, BENCH_PERF=FILE
# records a perf profile of the worker during one extra run of
# BENCH_PERF_CASE (edge, the default, or stock).

use warnings;
use strict;

use Cwd ();
use File::Temp qw/ tempdir /;
use IO::Socket::INET;
use POSIX qw/ strftime :sys_wait_h /;
use Time::HiRes qw/ time sleep /;

select STDERR; $| = 1;
select STDOUT; $| = 1;

my ($nginx, $stream_so, $module_so, $bench, $results, $expat_only) = @ARGV;
die "usage: $0 NGINX STREAM_SO MODULE_SO XMPP_BENCH RESULTS"
	. " [EXPAT_ONLY]\n"
	unless defined $results;

($nginx, $stream_so, $module_so, $bench, $results, $expat_only) =
	map { !defined || m{^/} ? $_ : Cwd::getcwd() . "/$_" }
	($nginx, $stream_so, $module_so, $bench, $results, $expat_only);

-x $nginx or die "no nginx at $nginx\n";
-f $stream_so or die "no stream module at $stream_so\n";
-f $module_so or die "no module at $module_so (make build)\n";
-x $bench or die "no $bench\n";

my $count = $ENV{BENCH_STANZAS} || 500000;
my $size = $ENV{BENCH_SIZE} || 1024;
my $runs = $ENV{BENCH_RUNS} || 5;

my $dir = tempdir('xmpp-bench-XXXXXX', TMPDIR => 1,
	CLEANUP => !$ENV{BENCH_KEEP});

my (%port, @failures);
$port{$_} = free_port() for qw/ edge verify stock sink sink2 auth /;

###############################################################################

open my $fh, '>', "$dir/nginx.conf" or die "$dir/nginx.conf: $!\n";
print $fh <<"EOF";
load_module $stream_so;
load_module $module_so;

daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;

events {
    worker_connections 1024;
}

stream {
    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "benchmark secret, not a real one";

    xmpp_federation_partner fabrikam.example {
        type federated;
        tls not_supported;
        sasl not_supported;
        dialback on;
        server 127.0.0.1:$port{auth};
    }

    # the edge: partner -> edge -> gateway (the sink)
    server {
        listen 127.0.0.1:$port{edge};
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:$port{sink};
    }

    # the internal listener, where the gateway verifies the edge's key
    server {
        listen 127.0.0.1:$port{verify};
        xmpp_federation outbound;
        xmpp_federation_pass 127.0.0.1:$port{sink};
    }

    # stock nginx, the reference
    server {
        listen 127.0.0.1:$port{stock};
        proxy_pass 127.0.0.1:$port{sink2};
    }
}
EOF
close $fh;

my $master = fork() // die "fork: $!\n";

if ($master == 0) {
	open STDIN, '<', '/dev/null';
	exec($nginx, '-p', "$dir/", '-e', "$dir/error.log",
		'-c', "$dir/nginx.conf") or die "exec $nginx: $!\n";
}

$SIG{INT} = $SIG{TERM} = sub { stop_nginx(); exit 1; };
END { stop_nginx() if $master; }

wait_port($port{$_}) for qw/ edge verify stock /;

my $worker = worker_pid($master)
	or die "no nginx worker process\n";

###############################################################################

my $mb = $count * $size / 1e6;
my $idle = cpu_idle();

printf "XMPP relay benchmark: %d stanzas of %d bytes (%.1f MB) per run,"
	. " %d runs per case\n", $count, $size, $mb, $runs;
printf "nginx %s, 1 worker (pid %d), %d CPUs, %.0f%% idle before the run\n",
	nginx_version(), $worker, ncpu(), $idle;

# warm-up: page faults, first connections, CPU frequency

run_case('edge', int($count / 10) || 1);
run_case('stock', int($count / 10) || 1);

my %res = (edge => [], stock => []);

for my $i (1 .. $runs) {
	my @order = $i % 2 ? qw/ edge stock / : qw/ stock edge /;

	for my $case (@order) {
		my $r = run_case($case, $count) or next;
		push @{$res{$case}}, $r;
		printf "  run %d %-5s %7.3f s  %8.1f MB/s  %9.0f stanzas/s"
			. "  CPU s: worker %6.3f (%3.0f%%) client %6.3f"
			. " sink %6.3f\n",
			$i, $case, $r->{seconds}, $r->{mbs}, $r->{sps},
			$r->{cpu}, 100 * $r->{cpu} / $r->{seconds},
			$r->{client}, $r->{sink};
	}
}

my $perf;

if ($ENV{BENCH_PERF}) {
	$perf = perf_run($ENV{BENCH_PERF}, $ENV{BENCH_PERF_CASE} || 'edge');
}

my $expat;

if ($expat_only) {
	my @t;

	for (1 .. 3) {
		my $line = `$expat_only $count $size 4096`;
		die "expat_only failed\n" if $? || $line !~ /seconds=([\d.]+)/;
		push @t, $1;
	}

	my $secs = median(@t);
	$expat = { mbs => $count * $size / 1e6 / $secs,
		cpumb => $secs / ($count * $size / 1e6) };
}

my $log = slurp("$dir/error.log");
my @bad = grep { /\[(?:emerg|alert|crit|error)\]/ } split /\n/, $log;

stop_nginx();
$master = 0;

###############################################################################

my %m;

for my $case (qw/ edge stock /) {
	die "no $case run succeeded:\n  " . join("\n  ", @failures) . "\n"
		unless @{$res{$case}};

	for my $k (qw/ seconds mbs sps cpu cpumb client sink /) {
		$m{$case}{$k} = median(map { $_->{$k} } @{$res{$case}});
	}
}

my $ratio = $m{edge}{mbs} / $m{stock}{mbs};
my $cpu_ratio = $m{edge}{cpumb} / $m{stock}{cpumb};

my $out = '';

$out .= sprintf "XMPP relay benchmark, %s\n",
	strftime('%Y-%m-%d %H:%M:%S %Z', localtime);
$out .= sprintf "nginx %s, 1 worker, %d CPUs, %s\n", nginx_version(),
	ncpu(), cpu_model();
$out .= sprintf "%d stanzas x %d bytes = %.1f MB per run, median of %d"
	. " edge and %d stock runs (MB = 10^6 bytes)\n", $count, $size, $mb,
	scalar @{$res{edge}}, scalar @{$res{stock}};
$out .= sprintf "CPUs idle in the second before the run: %.0f%%%s\n\n",
	$idle, $idle < 90 ? ' (other processes compete for the CPUs:'
		. ' expect noisy figures)' : '';
$out .= sprintf "%-22s %12s %10s %14s %14s\n", 'case', 'stanzas/s', 'MB/s',
	'worker CPU s', 'CPU ms per MB';
$out .= sprintf "%-22s %12.0f %10.1f %14.3f %14.3f\n",
	'edge (xmpp_federation)', $m{edge}{sps}, $m{edge}{mbs}, $m{edge}{cpu},
	1000 * $m{edge}{cpumb};
$out .= sprintf "%-22s %12.0f %10.1f %14.3f %14.3f\n",
	'stock proxy_pass', $m{stock}{sps}, $m{stock}{mbs}, $m{stock}{cpu},
	1000 * $m{stock}{cpumb};
$out .= sprintf "%-22s %12s %10.1f %14s %14.3f\n",
	'(expat alone, memory)', '', $expat->{mbs}, '',
	1000 * $expat->{cpumb} if $expat;
$out .= "\n";
$out .= sprintf "throughput ratio edge/stock: %.3f (target >= 0.9: %s)\n",
	$ratio, $ratio >= 0.9 ? 'met' : 'NOT met';
$out .= sprintf "worker CPU per MB, edge/stock: %.2f"
	. " (stock proxy_pass = 1)\n", $cpu_ratio;
$out .= sprintf "worker busy (CPU/elapsed): edge %.0f%%, stock %.0f%%\n",
	100 * $m{edge}{cpu} / $m{edge}{seconds},
	100 * $m{stock}{cpu} / $m{stock}{seconds};
$out .= sprintf "load client / sink CPU (of elapsed): edge %.0f%% / %.0f%%,"
	. " stock %.0f%% / %.0f%%\n",
	100 * $m{edge}{client} / $m{edge}{seconds},
	100 * $m{edge}{sink} / $m{edge}{seconds},
	100 * $m{stock}{client} / $m{stock}{seconds},
	100 * $m{stock}{sink} / $m{stock}{seconds};
$out .= "\nruns (seconds, MB/s, worker CPU s):\n";

for my $case (qw/ edge stock /) {
	$out .= sprintf "  %-5s %s\n", $case, join '  ',
		map { sprintf '%.3f/%.1f/%.3f', $_->{seconds}, $_->{mbs},
			$_->{cpu} } @{$res{$case}};
}

$out .= "\nerror.log: " . (@bad ? scalar(@bad) . " error lines, first: $bad[0]"
	: 'no errors') . "\n";
$out .= "\nFAILED RUNS (wrong bytes at the sink, left out of the medians):\n  "
	. join("\n  ", @failures) . "\n" if @failures;
$out .= "perf profile: $perf\n" if $perf;

print "\n$out";

open $fh, '>', $results or die "$results: $!\n";
print $fh $out;
close $fh;

print "\nwritten to $results\n";

exit(@bad || @failures ? 1 : 0);

###############################################################################

sub run_case {
	my ($case, $n) = @_;

	my @cmd = $case eq 'edge'
		? ($bench, 'edge', @port{qw/ edge verify sink auth /}, $n, $size)
		: ($bench, 'stock', @port{qw/ stock sink2 /}, $n, $size);

	my $c0 = worker_cpu($worker);
	my $line = `@cmd 2>$dir/xmpp_bench.err`;
	my $c1 = worker_cpu($worker);

	if ($?) {
		# the sink says what arrived wrong: a relay fault, reported
		my $err = slurp("$dir/xmpp_bench.err") // '';
		$err =~ s/^xmpp_bench: no result from the sink\n//m;
		$err =~ s/\s+$//;
		push @failures, "$case run of $n stanzas: "
			. ($err || 'xmpp_bench exit ' . ($? >> 8));
		print "  $case run FAILED:\n    $err\n";
		return;
	}

	my ($secs) = $line =~ /seconds=([\d.]+)/
		or die "xmpp_bench: unexpected output: $line\n";
	my ($client) = $line =~ /client_cpu=([\d.]+)/;
	my ($sink) = $line =~ /sink_cpu=([\d.]+)/;

	my $bytes = $n * $size;
	my $cpu = $c1 - $c0;

	return {
		seconds => $secs,
		mbs => $bytes / 1e6 / $secs,
		sps => $n / $secs,
		cpu => $cpu,
		cpumb => $cpu / ($bytes / 1e6),
		client => $client // 0,
		sink => $sink // 0,
	};
}

# one more run with the worker sampled by perf (cpu-clock)

sub perf_run {
	my ($file, $case) = @_;

	my $pid = fork() // die "fork: $!\n";

	if ($pid == 0) {
		open STDOUT, '>', '/dev/null';
		open STDERR, '>', "$file.log";
		exec('perf', 'record', '-e', 'cpu-clock', '-F', '4999', '-g',
			'-o', $file, '-p', $worker) or exit 127;
	}

	sleep 0.5;
	run_case($case, $count);
	kill 'INT', $pid;
	waitpid($pid, 0);

	return -s $file ? "$file ($case run, worker only)"
		: "perf failed, see $file.log";
}

# share of CPU time idle over one second, all CPUs

sub cpu_idle {
	my @a = (slurp('/proc/stat') // '') =~ /^cpu\s+(.*)$/m;
	sleep 1;
	my @b = (slurp('/proc/stat') // '') =~ /^cpu\s+(.*)$/m;

	return 100 unless @a && @b;

	my @x = split ' ', $a[0];
	my @y = split ' ', $b[0];
	my ($total, $idle) = (0, 0);

	for my $i (0 .. $#y) {
		my $d = $y[$i] - ($x[$i] // 0);
		$total += $d if $i < 8;		# guest time is in user time
		$idle += $d if $i == 3 || $i == 4;
	}

	return $total ? 100 * $idle / $total : 100;
}

sub worker_cpu {
	my ($pid) = @_;

	# nanoseconds on the CPU, if the kernel keeps scheduler statistics
	if (open my $f, '<', "/proc/$pid/schedstat") {
		my ($ns) = split ' ', scalar <$f>;
		return $ns / 1e9 if defined $ns && $ns > 0;
	}

	open my $f, '<', "/proc/$pid/stat" or die "worker $pid gone\n";
	my $stat = <$f>;
	$stat =~ s/^.*\) //;
	my @f = split ' ', $stat;
	return ($f[11] + $f[12]) / POSIX::sysconf(POSIX::_SC_CLK_TCK());
}

sub worker_pid {
	my ($ppid) = @_;

	for (1 .. 50) {
		for my $stat (glob '/proc/[0-9]*/stat') {
			open my $f, '<', $stat or next;
			my $l = <$f> // next;
			my ($pid, $rest) = $l =~ /^(\d+) \(.*\) (.*)$/ or next;
			my @f = split ' ', $rest;
			return $pid if $f[1] == $ppid;
		}
		sleep 0.1;
	}

	return;
}

sub stop_nginx {
	return unless $master;
	kill 'QUIT', $master;
	for (1 .. 50) {
		return if waitpid($master, WNOHANG) == $master;
		sleep 0.1;
	}
	kill 'KILL', $master;
	waitpid($master, 0);
}

sub free_port {
	my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1:0', Listen => 1,
		ReuseAddr => 1) or die "no free port: $!\n";
	return $s->sockport();
}

# listening, seen in /proc/net/tcp (a test connection would make the
# stock proxy try its upstream and log an error)

sub wait_port {
	my ($port) = @_;

	my $local = sprintf '0100007F:%04X', $port;

	for (1 .. 100) {
		for (split /\n/, slurp('/proc/net/tcp') // '') {
			my @f = split ' ';
			return if $f[1] eq $local && $f[3] eq '0A';
		}

		die "nginx exited:\n" . (slurp("$dir/error.log") // '') . "\n"
			if waitpid($master, WNOHANG) == $master;
		sleep 0.05;
	}

	die "nginx does not listen on $port\n";
}

sub median {
	my @v = sort { $a <=> $b } @_;
	return @v % 2 ? $v[$#v / 2] : ($v[@v / 2 - 1] + $v[@v / 2]) / 2;
}

sub nginx_version {
	my $v = `$nginx -v 2>&1`;
	return $v =~ m{nginx/(\S+)} ? $1 : 'unknown';
}

sub ncpu {
	my $n = () = slurp('/proc/cpuinfo') =~ /^processor\s*:/mg;
	return $n || 1;
}

sub cpu_model {
	my ($m) = slurp('/proc/cpuinfo') =~ /^model name\s*:\s*(.*)$/m;
	return $m // 'unknown CPU';
}

sub slurp {
	my ($file) = @_;
	open my $f, '<', $file or return;
	local $/;
	return <$f>;
}

###############################################################################
