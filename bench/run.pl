#!/usr/bin/perl

# make bench (docs/performance.md), the edge against stock nginx in the
# same run, in three parts:
#
#   relay     stanza relay throughput, against stock proxy_pass;
#   sessions  session establishment (TCP, STARTTLS, SASL EXTERNAL, the
#             hand-off to the gateway) per second, against full TLS
#             handshakes on a stock "listen ... ssl" server;
#   memory    memory per idle authenticated stream, against idle
#             connections of stock proxy_pass.
#
#   perl bench/run.pl NGINX STREAM_SO MODULE_SO XMPP_BENCH RESULTS \
#       [EXPAT_ONLY [XMPP_SESSIONS [XMPP_IDLE [SCAN_ONLY]]]]
#
# EXPAT_ONLY, if given, also times expat alone on the same bytes in memory
# (bench/expat_only.c), for context: it is not part of the ratio; so does
# SCAN_ONLY with the module's own parser (bench/scan_only.c).
# XMPP_SESSIONS (bench/xmpp_sessions.c) and XMPP_IDLE (bench/xmpp_idle.c)
# are the clients of the sessions and memory parts; without them, these
# parts are left out.
#
# Environment: BENCH_PARTS (the parts to run, default
# "relay,sessions,memory"); relay: BENCH_STANZAS (stanzas per run,
# default 2000000), BENCH_SIZE (bytes per stanza, default 1024),
# BENCH_RUNS (runs per case, default 7), BENCH_PERF=FILE records a perf
# profile of the worker during one extra run of BENCH_PERF_CASE (edge, the
# default, or stock); sessions: BENCH_SESSIONS (sessions per run, default
# 2000), BENCH_PARALLEL (clients at once, default 8), BENCH_SESSION_RUNS
# (runs per case, default 5), BENCH_KEY (ec, the default: ECDSA P-256, or
# rsa: RSA 2048, for every certificate); memory: BENCH_IDLE_STREAMS
# (default 10000); BENCH_COUNT=1: relay and sessions also count the
# instructions nginx executes in user space, under callgrind (valgrind),
# per stanza and per session; BENCH_KEEP=1 keeps the nginx directory;
# BENCH_MAX_STEAL (percent, default 5): a relay or session run during
# which the hypervisor gave more than that share of the CPUs to other
# guests is run again, up to BENCH_RETRIES (default 2) times, and left out
# of the medians; with fewer than 3 undisturbed runs of a case the medians
# are of all runs and no verdict is given.

use warnings;
use strict;

use Cwd ();
use File::Temp qw/ tempdir /;
use IO::Socket::INET;
use IPC::Open2 qw/ open2 /;
use POSIX qw/ strftime :sys_wait_h /;
use Time::HiRes qw/ time sleep /;

select STDERR; $| = 1;
select STDOUT; $| = 1;

my ($nginx, $stream_so, $module_so, $bench, $results, $expat_only,
	$sessions_bin, $idle_bin, $scan_only) = @ARGV;
die "usage: $0 NGINX STREAM_SO MODULE_SO XMPP_BENCH RESULTS"
	. " [EXPAT_ONLY [XMPP_SESSIONS [XMPP_IDLE [SCAN_ONLY]]]]\n"
	unless defined $results;

($nginx, $stream_so, $module_so, $bench, $results, $expat_only,
	$sessions_bin, $idle_bin, $scan_only) =
	map { !defined || !length || m{^/} ? $_ : Cwd::getcwd() . "/$_" }
	($nginx, $stream_so, $module_so, $bench, $results, $expat_only,
	$sessions_bin, $idle_bin, $scan_only);

-x $nginx or die "no nginx at $nginx\n";
-f $stream_so or die "no stream module at $stream_so\n";
-f $module_so or die "no module at $module_so (make build)\n";
-x $bench or die "no $bench\n";

my %parts = map { $_ => 1 } split /[\s,]+/,
	$ENV{BENCH_PARTS} // 'relay,sessions,memory';

delete $parts{sessions} unless $sessions_bin && -x $sessions_bin;
delete $parts{memory} unless $idle_bin && -x $idle_bin;

my $count = $ENV{BENCH_STANZAS} || 2000000;
my $size = $ENV{BENCH_SIZE} || 1024;
my $runs = $ENV{BENCH_RUNS} || 7;

# a run during which the hypervisor gave more than this share of the CPUs
# to other guests measures them, not nginx: it is run again, up to
# BENCH_RETRIES times, and left out of the medians
my $max_steal = ($ENV{BENCH_MAX_STEAL} // 5) / 100;
my $retries = $ENV{BENCH_RETRIES} // 2;

my $dir = tempdir('xmpp-bench-XXXXXX', TMPDIR => 1,
	CLEANUP => !$ENV{BENCH_KEEP});

my (%port, @failures, @bad);
$port{$_} = free_port() for qw/ edge verify stock sink sink2 auth /;

my ($master, $worker, $errlog);
my $started = time();

$SIG{INT} = $SIG{TERM} = sub { stop_nginx(); exit 1; };
END { stop_nginx() if $master; }

###############################################################################

my $out = '';

$out .= sprintf "XMPP federation edge benchmark, %s\n",
	strftime('%Y-%m-%d %H:%M:%S %Z', localtime);
$out .= sprintf "nginx %s, %d CPUs, %s, %s\n", nginx_version(),
	ncpu(), cpu_model(), openssl_version();
$out .= sprintf "parts: %s\n", join ', ',
	grep { $parts{$_} } qw/ relay sessions memory /;

$out .= relay_part() if $parts{relay};
$out .= sessions_part() if $parts{sessions};
$out .= memory_part() if $parts{memory};

$out .= "\nnginx error logs: " . (@bad ? scalar(@bad)
	. " error lines, first: $bad[0]" : 'no errors') . "\n";
$out .= "\nFAILED RUNS (left out of the medians):\n  "
	. join("\n  ", @failures) . "\n" if @failures;
$out .= sprintf "\nmake bench took %.0f s\n", time() - $started;

print "\n$out";

open my $rfh, '>', $results or die "$results: $!\n";
print $rfh $out;
close $rfh;

print "\nwritten to $results\n";

exit(@bad || @failures ? 1 : 0);

###############################################################################
# relay throughput

sub relay_part {
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

	start_nginx('nginx.conf', 'error.log', 1,
		@port{qw/ edge verify stock /});

	my $mb = $count * $size / 1e6;
	my $idle = cpu_idle();

	printf "\n1. relay: %d stanzas of %d bytes (%.1f MB) per run,"
		. " %d runs per case\n", $count, $size, $mb, $runs;
	printf "nginx %s, 1 worker (pid %d), %d CPUs, %.0f%% idle before the"
		. " run\n", nginx_version(), $worker, ncpu(), $idle;

	# warm-up: page faults, first connections, CPU frequency

	run_case('edge', int($count / 10) || 1);
	run_case('stock', int($count / 10) || 1);

	my %all = (edge => [], stock => []);

	for my $i (1 .. $runs) {
		my @order = $i % 2 ? qw/ edge stock / : qw/ stock edge /;

		for my $case (@order) {
			undisturbed($all{$case}, sub {
				my $r = run_case($case, $count) or return;
				printf "  run %d %-5s %7.3f s  %8.1f MB/s  %9.0f"
					. " stanzas/s  CPU s: worker %6.3f"
					. " (%3.0f%%) client %6.3f sink %6.3f"
					. "  steal %2.0f%%  waiting %2.0f%%%s\n",
					$i, $case, $r->{seconds}, $r->{mbs},
					$r->{sps}, $r->{cpu},
					100 * $r->{cpu} / $r->{seconds},
					$r->{client}, $r->{sink},
					100 * $r->{steal}, 100 * $r->{wait},
					disturbed_tag($r);
				return $r;
			});
		}
	}

	my ($res, $busy) = keep_undisturbed(\%all, qw/ edge stock /);
	my %res = %$res;

	my $perf;

	if ($ENV{BENCH_PERF}) {
		$perf = perf_run($ENV{BENCH_PERF},
			$ENV{BENCH_PERF_CASE} || 'edge');
	}

	my ($expat, $scan);

	if ($expat_only) {
		$expat = in_memory("$expat_only $count $size 4096");
	}

	if ($scan_only) {
		$scan = in_memory("$scan_only $count $size");
	}

	stop_nginx();

	my $counted;

	if ($ENV{BENCH_COUNT}) {
		my $n = 100000;

		$counted = count_instructions('nginx.conf',
			[ @port{qw/ edge verify stock /} ],
			edge => [ $n, $bench, 'edge',
				@port{qw/ edge verify sink auth /}, $n, $size ],
			stock => [ $n, $bench, 'stock',
				@port{qw/ stock sink2 /}, $n, $size ]);
	}

	my %m;

	for my $case (qw/ edge stock /) {
		unless (@{$res{$case}}) {
			push @failures, "relay: no $case run succeeded";
			return "\nRELAY: no $case run succeeded\n";
		}

		for my $k (qw/ seconds mbs sps cpu cpumb usermb sysmb client
			sink steal wait /)
		{
			$m{$case}{$k} = median(map { $_->{$k} } @{$res{$case}});
		}
	}

	my $ratio = $m{edge}{mbs} / $m{stock}{mbs};
	my $cpu_ratio = $m{edge}{cpumb} / $m{stock}{cpumb};

	my $out = '';

	$out .= "\n== 1. Relay throughput: edge vs stock proxy_pass"
		. " (1 worker)\n\n";
	$out .= sprintf "%d stanzas x %d bytes = %.1f MB per run, median of %d"
		. " edge and %d stock runs (MB = 10^6 bytes)\n", $count, $size,
		$mb, scalar @{$res{edge}}, scalar @{$res{stock}};
	$out .= sprintf "CPUs idle in the second before the run: %.0f%%%s\n\n",
		$idle, $idle < 90 ? ' (other processes compete for the CPUs:'
			. ' expect noisy figures)' : '';
	$out .= sprintf "%-22s %12s %10s %14s %14s\n", 'case', 'stanzas/s',
		'MB/s', 'worker CPU s', 'CPU ms per MB';
	$out .= sprintf "%-22s %12.0f %10.1f %14.3f %14.3f\n",
		'edge (xmpp_federation)', $m{edge}{sps}, $m{edge}{mbs},
		$m{edge}{cpu}, 1000 * $m{edge}{cpumb};
	$out .= sprintf "%-22s %12.0f %10.1f %14.3f %14.3f\n",
		'stock proxy_pass', $m{stock}{sps}, $m{stock}{mbs},
		$m{stock}{cpu}, 1000 * $m{stock}{cpumb};
	$out .= sprintf "%-22s %12s %10.1f %14s %14.3f\n",
		'(expat alone, memory)', '', $expat->{mbs}, '',
		1000 * $expat->{cpumb} if $expat;
	$out .= sprintf "%-22s %12s %10.1f %14s %14.3f\n",
		'(scan alone, memory)', '', $scan->{mbs}, '',
		1000 * $scan->{cpumb} if $scan;
	$out .= "\n";
	$out .= sprintf "throughput ratio edge/stock: %.3f (target >= 0.9:"
		. " %s)\n", $ratio, $busy->{busy} ? 'no verdict, see below'
		: $ratio >= 0.9 ? 'met' : 'NOT met';
	$out .= busy_report($busy);
	$out .= sprintf "worker CPU per MB, edge/stock: %.2f"
		. " (stock proxy_pass = 1)\n", $cpu_ratio;
	$out .= sprintf "worker busy (CPU/elapsed): edge %.0f%%, stock"
		. " %.0f%%\n", 100 * $m{edge}{cpu} / $m{edge}{seconds},
		100 * $m{stock}{cpu} / $m{stock}{seconds};
	$out .= sprintf "worker user / system CPU ms per MB (clock ticks):"
		. " edge %.3f / %.3f, stock %.3f / %.3f\n",
		1000 * $m{edge}{usermb}, 1000 * $m{edge}{sysmb},
		1000 * $m{stock}{usermb}, 1000 * $m{stock}{sysmb};
	$out .= sprintf "load client / sink CPU (of elapsed): edge %.0f%% /"
		. " %.0f%%, stock %.0f%% / %.0f%%\n",
		100 * $m{edge}{client} / $m{edge}{seconds},
		100 * $m{edge}{sink} / $m{edge}{seconds},
		100 * $m{stock}{client} / $m{stock}{seconds},
		100 * $m{stock}{sink} / $m{stock}{seconds};
	$out .= steal_report(\%m, qw/ edge stock /);
	$out .= "\nruns (seconds, MB/s, worker CPU s, steal; * disturbed, left"
		. " out):\n";

	for my $case (qw/ edge stock /) {
		$out .= sprintf "  %-5s %s\n", $case, join '  ',
			map { sprintf '%.3f/%.1f/%.3f/%.0f%%%s', $_->{seconds},
				$_->{mbs}, $_->{cpu}, 100 * $_->{steal},
				$_->{disturbed} ? '*' : '' } @{$all{$case}};
	}

	$out .= "perf profile: $perf\n" if $perf;
	$out .= count_report($counted, 'stanza',
		edge => 'edge (xmpp_federation)', stock => 'stock proxy_pass')
		if $counted;

	return $out;
}

###############################################################################
# session establishment

sub sessions_part {
	my $n = $ENV{BENCH_SESSIONS} || 2000;
	my $par = $ENV{BENCH_PARALLEL} || 8;
	my $sruns = $ENV{BENCH_SESSION_RUNS} || 5;
	my $type = ($ENV{BENCH_KEY} // 'ec') eq 'rsa' ? 'rsa' : 'ec';

	my $pki = make_pki($type);

	$port{$_} = free_port()
		for qw/ tedge tfresh tverify tsink tstock ttickets tverified /;

	# the stock servers: the same certificate, protocols, ciphers and
	# curves as the edge; client certificates asked for; no session
	# cache; "return" sends one byte and closes

	my $stock = sub {
		my ($port, $extra) = @_;

		return <<"EOF";
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $pki/contoso.pem;
        ssl_certificate_key $pki/contoso.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers HIGH:!aNULL:!MD5;
        ssl_prefer_server_ciphers on;
        ssl_session_cache off;
$extra
        return "x";
    }
EOF
	};

	open my $fh, '>', "$dir/tls.conf" or die "$dir/tls.conf: $!\n";
	print $fh <<"EOF";
load_module $stream_so;
load_module $module_so;

daemon off;
worker_processes 1;
pid $dir/tls.pid;
error_log $dir/tls-error.log warn;

events {
    worker_connections 4096;
}

stream {
    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "benchmark secret, not a real one";

    xmpp_federation_partner fabrikam.example {
        type federated;
        tls required;
        sasl required;
        dialback off;
    }

    # the edge: STARTTLS, SASL EXTERNAL, then the hand-off to the gateway
    # on a gateway stream kept from an earlier session when there is one;
    # the verdict on the client's chain kept from an earlier session
    server {
        listen 127.0.0.1:$port{tedge};
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:$port{tsink};
        xmpp_federation_pass_keepalive 16;
        xmpp_federation_verify_cache 16;
        xmpp_federation_certificate $pki/contoso.pem;
        xmpp_federation_certificate_key $pki/contoso.key;
        xmpp_federation_trusted_certificate $pki/ca.pem;
    }

    # the same, with a new gateway stream (connection, dialback) and the
    # chain verified each time
    server {
        listen 127.0.0.1:$port{tfresh};
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:$port{tsink};
        xmpp_federation_certificate $pki/contoso.pem;
        xmpp_federation_certificate_key $pki/contoso.key;
        xmpp_federation_trusted_certificate $pki/ca.pem;
    }

    # the internal listener, where the gateway verifies the edge's key
    server {
        listen 127.0.0.1:$port{tverify};
        xmpp_federation outbound;
        xmpp_federation_pass 127.0.0.1:$port{tsink};
    }

    # stock nginx, the reference: the certificate is asked for, not checked
EOF
	print $fh $stock->($port{tstock}, <<"EOF");
        ssl_session_tickets off;
        ssl_verify_client optional_no_ca;
EOF
	print $fh "\n    # context: session tickets on, as the edge has them\n";
	print $fh $stock->($port{ttickets}, <<"EOF");
        ssl_session_tickets on;
        ssl_verify_client optional_no_ca;
EOF
	print $fh "\n    # context: the client certificate checked against"
		. " the CA\n";
	print $fh $stock->($port{tverified}, <<"EOF");
        ssl_session_tickets off;
        ssl_verify_client on;
        ssl_client_certificate $pki/ca.pem;
EOF
	print $fh "}\n";
	close $fh;

	start_nginx('tls.conf', 'tls-error.log', 1,
		@port{qw/ tedge tfresh tverify tstock ttickets tverified /});

	my @cases = qw/ edge fresh stock tickets verified /;
	my %all = map { $_ => [] } @cases;
	my %res;
	my $idle = cpu_idle();

	printf "\n2. sessions: %d per run, %d clients at once, %d runs per"
		. " case, %s keys, 1 worker (pid %d), %.0f%% idle before\n",
		$n, $par, $sruns, $type eq 'rsa' ? 'RSA 2048' : 'ECDSA P-256',
		$worker, $idle;

	# warm-up

	session_case($_, int($n / 10) || $par, $par, $pki) for @cases;

	for my $i (1 .. $sruns) {
		my @order = @cases[map { ($_ + $i - 1) % @cases } 0 .. $#cases];

		for my $case (@order) {
			undisturbed($all{$case}, sub {
				my $r = session_case($case, $n, $par, $pki)
					or return;
				printf "  run %d %-8s %6.3f s  %5.0f sessions/s"
					. "  worker %5.3f ms/session  p50 %6.2f ms"
					. "  CPU s: client %6.3f sink %6.3f  steal"
					. " %2.0f%%  waiting %2.0f%%%s\n", $i,
					$case, $r->{seconds}, $r->{rate},
					$r->{cpums}, $r->{p50}, $r->{client},
					$r->{sink}, 100 * $r->{steal},
					100 * $r->{wait}, disturbed_tag($r);
				return $r;
			});
		}
	}

	my ($res, $busy) = keep_undisturbed(\%all, @cases);
	%res = %$res;

	stop_nginx();

	my $counted;

	if ($ENV{BENCH_COUNT}) {
		my @cert = ("$pki/fabrikam.pem", "$pki/fabrikam.key");
		my $k = 200;

		$counted = count_instructions('tls.conf',
			[ @port{qw/ tedge tfresh tverify tstock tverified /} ],
			edge => [ $k, $sessions_bin, 'edge', $port{tedge},
				@port{qw/ tverify tsink /}, @cert, $k, 4 ],
			fresh => [ $k, $sessions_bin, 'edge', $port{tfresh},
				@port{qw/ tverify tsink /}, @cert, $k, 4 ],
			stock => [ $k, $sessions_bin, 'stock', $port{tstock},
				@cert, $k, 4 ],
			verified => [ $k, $sessions_bin, 'stock',
				$port{tverified}, @cert, $k, 4 ]);
	}

	my %m;

	for my $case (@cases) {
		unless (@{$res{$case}}) {
			push @failures, "sessions: no $case run succeeded";
			return "\nSESSIONS: no $case run succeeded\n";
		}

		for my $k (qw/ seconds rate cpums userms sysms p50 p99 client
			sink tickets steal wait /)
		{
			$m{$case}{$k} = median(map { $_->{$k} } @{$res{$case}});
		}
	}

	my $r0 = $res{edge}[0];
	my $ratio = $m{edge}{rate} / $m{stock}{rate};
	my $fresh_ratio = $m{fresh}{rate} / $m{stock}{rate};
	my $cpu_ratio = $m{stock}{cpums} / $m{edge}{cpums};

	my %label = (
		edge => 'edge: session',
		fresh => '(edge, nothing kept)',
		stock => 'stock TLS handshake',
		tickets => '(stock, tickets on)',
		verified => '(stock, verify on)',
	);

	my $out = '';

	$out .= "\n== 2. Session establishment: edge sessions vs stock TLS"
		. " handshakes (1 worker)\n\n";
	$out .= sprintf "%d per run, %d clients at once, median of %d runs;"
		. " %s keys; %s %s\n", $n, $par, scalar @{$res{edge}},
		$type eq 'rsa' ? 'RSA 2048' : 'ECDSA P-256', $r0->{proto},
		$r0->{cipher};
	$out .= sprintf "every handshake full: the client offers no session;"
		. " tickets per handshake, never\nused: edge %.1f, stock"
		. " %.1f (session IDs that the disabled cache does not"
		. " keep)\n", $m{edge}{tickets}, $m{stock}{tickets};
	$out .= "edge session: TCP, stream header, STARTTLS, TLS handshake"
		. " with a client certificate,\n  stream header, SASL"
		. " EXTERNAL, stream header, one stanza; established when the"
		. " gateway\n  has the stanza; then the partner's stream"
		. " ends. Hand-off: on a gateway stream kept from an\n  earlier"
		. " session (xmpp_federation_pass_keepalive 16); the chain's"
		. " verdict kept\n  from an earlier session"
		. " (xmpp_federation_verify_cache 16). (nothing kept): a new\n"
		. "  connection, stream header, db:result and the gateway's"
		. " db:verify, and the chain\n  verified, each time\n";
	$out .= "stock handshake: TCP, TLS handshake with the client"
		. " certificate (optional_no_ca), the one\n  byte of"
		. " \"return\", close; context: session tickets on, or the"
		. " certificate verified\n";
	$out .= sprintf "CPUs idle in the second before the runs: %.0f%%%s\n\n",
		$idle, $idle < 90 ? ' (other processes compete for the CPUs:'
			. ' expect noisy figures)' : '';
	$out .= sprintf "%-22s %11s %16s %11s %11s %9s %9s\n", 'case',
		'sessions/s', 'worker CPU ms', 'p50 ms', 'p99 ms', 'client s',
		'sink s';

	for my $case (@cases) {
		$out .= sprintf "%-22s %11.0f %16.3f %11.2f %11.2f %9.3f"
			. " %9.3f\n", $label{$case}, $m{$case}{rate},
			$m{$case}{cpums}, $m{$case}{p50}, $m{$case}{p99},
			$m{$case}{client}, $m{$case}{sink};
	}

	$out .= "\n";
	$out .= sprintf "session rate ratio edge/stock: %.3f (target >= 0.8:"
		. " %s)\n", $ratio, $busy->{busy} ? 'no verdict, see below'
		: $ratio >= 0.8 ? 'met' : 'NOT met';
	$out .= busy_report($busy);
	$out .= sprintf "  without xmpp_federation_pass_keepalive and"
		. " xmpp_federation_verify_cache: %.3f\n", $fresh_ratio;
	$out .= sprintf "worker CPU per session, edge/stock: %.2f; stock/edge"
		. " %.3f is the rate ratio\n  if the worker alone were the"
		. " limit\n", 1 / $cpu_ratio, $cpu_ratio;
	$out .= sprintf "worker busy (CPU/elapsed): edge %.0f%%, stock"
		. " %.0f%%\n",
		100 * $m{edge}{cpums} * $n / 1000 / $m{edge}{seconds},
		100 * $m{stock}{cpums} * $n / 1000 / $m{stock}{seconds};
	$out .= sprintf "worker user / system CPU ms per session (clock"
		. " ticks): edge %.3f / %.3f,\n  stock %.3f / %.3f, (stock,"
		. " verify on) %.3f / %.3f\n", map { $m{$_}{userms},
		$m{$_}{sysms} } qw/ edge stock verified /;
	$out .= steal_report(\%m, qw/ edge stock /);
	$out .= "\nruns (seconds, sessions/s, worker CPU ms per session, steal;"
		. " * disturbed, left out):\n";

	for my $case (@cases) {
		$out .= sprintf "  %-8s %s\n", $case, join '  ',
			map { sprintf '%.3f/%.0f/%.3f/%.0f%%%s', $_->{seconds},
				$_->{rate}, $_->{cpums}, 100 * $_->{steal},
				$_->{disturbed} ? '*' : '' } @{$all{$case}};
	}

	$out .= count_report($counted, 'session',
		edge => 'edge: session', fresh => '(edge, nothing kept)',
		stock => 'stock TLS handshake',
		verified => '(stock, verify on)')
		if $counted;

	return $out;
}

sub session_case {
	my ($case, $n, $par, $pki) = @_;

	my @cert = ("$pki/fabrikam.pem", "$pki/fabrikam.key");

	my %stock = (stock => 'tstock', tickets => 'ttickets',
		verified => 'tverified');

	my %edge = (edge => 'tedge', fresh => 'tfresh');

	my @cmd = $edge{$case}
		? ($sessions_bin, 'edge', $port{$edge{$case}},
			@port{qw/ tverify tsink /}, @cert, $n, $par)
		: ($sessions_bin, 'stock', $port{$stock{$case}}, @cert, $n,
			$par);

	my $c0 = worker_cpu($worker);
	my @t0 = worker_times($worker);
	my $w0 = worker_wait($worker);
	my @m0 = machine_ticks();
	my $line = `@cmd 2>$dir/xmpp_sessions.err`;
	my @m1 = machine_ticks();

	# the last connections close after the client is done
	sleep 0.2;
	my $w1 = worker_wait($worker);
	my $c1 = worker_cpu($worker);
	my @t1 = worker_times($worker);

	if ($? || $line !~ /seconds=([\d.]+)/) {
		my $err = slurp("$dir/xmpp_sessions.err") // '';
		$err =~ s/\s+$//;
		push @failures, "sessions: $case run of $n: "
			. ($err || 'xmpp_sessions exit ' . ($? >> 8));
		print "  $case run FAILED:\n    $err\n";
		return;
	}

	my $secs = $1;
	my %v = $line =~ /(\w+)=(\S+)/g;

	return {
		seconds => $secs,
		rate => $n / $secs,
		cpums => 1000 * ($c1 - $c0) / $n,
		userms => 1000 * ($t1[0] - $t0[0]) / $n,
		sysms => 1000 * ($t1[1] - $t0[1]) / $n,
		p50 => $v{lat_p50_ms},
		p99 => $v{lat_p99_ms},
		client => $v{client_cpu},
		sink => $v{sink_cpu},
		tickets => $v{tickets} / $n,
		steal => steal_share(\@m0, \@m1),
		wait => ($w1 - $w0) / $secs,
		proto => $v{proto},
		cipher => $v{cipher},
	};
}

# a test CA and two certificates from it, with the openssl command:
# contoso.example (the edge, and stock nginx) and fabrikam.example (the
# partner's client certificate), SAN DNS names, all of one key type

sub make_pki {
	my ($type) = @_;

	my $p = "$dir/pki";
	mkdir $p;

	my @key = $type eq 'rsa' ? ('-newkey', 'rsa:2048')
		: ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256');

	openssl($p, 'req', '-x509', '-new', @key, '-nodes',
		'-keyout', "$p/ca.key", '-out', "$p/ca.pem",
		'-subj', '/O=xmpp bench/CN=xmpp bench CA', '-days', '2',
		'-addext', 'basicConstraints=critical,CA:TRUE',
		'-addext', 'keyUsage=critical,keyCertSign,cRLSign');

	for my $name (qw/ contoso fabrikam /) {
		open my $fh, '>', "$p/$name.ext" or die "$p/$name.ext: $!\n";
		print $fh "subjectAltName=DNS:$name.example\n"
			. "basicConstraints=CA:FALSE\n"
			. "keyUsage=critical,digitalSignature"
			. ($type eq 'rsa' ? ',keyEncipherment' : '') . "\n"
			. "extendedKeyUsage=serverAuth,clientAuth\n";
		close $fh;

		openssl($p, 'req', '-new', @key, '-nodes',
			'-keyout', "$p/$name.key", '-out', "$p/$name.csr",
			'-subj', "/O=xmpp bench/CN=$name.example");
		openssl($p, 'x509', '-req', '-in', "$p/$name.csr",
			'-CA', "$p/ca.pem", '-CAkey', "$p/ca.key",
			'-CAcreateserial', '-days', '2', '-out', "$p/$name.pem",
			'-extfile', "$p/$name.ext");
	}

	return $p;
}

sub openssl {
	my ($p, @args) = @_;

	my $pid = fork() // die "fork: $!\n";

	if ($pid == 0) {
		open STDIN, '<', '/dev/null';
		open STDOUT, '>>', "$p/openssl.log" or POSIX::_exit(126);
		open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
		exec('openssl', @args) or POSIX::_exit(127);
	}

	waitpid($pid, 0);

	die "openssl @args failed, see $p/openssl.log:\n"
		. (slurp("$p/openssl.log") // '') if $?;
}

sub openssl_version {
	my $v = `openssl version 2>/dev/null` // '';
	$v =~ s/\s*\(.*//s;
	$v =~ s/\s+$//;
	return $v || 'no openssl command';
}

###############################################################################
# memory per idle stream

sub memory_part {
	my $n = $ENV{BENCH_IDLE_STREAMS} || 10000;

	# the hard limit of descriptors is what any process here can have;
	# a client and a sink process each may hold nearly N of them

	my $hard = `sh -c 'ulimit -Hn'` // '';
	$hard = $hard =~ /^(\d+)/ ? $1 : 1024;

	my $note = '';

	if ($n + 200 > $hard) {
		$note = sprintf " (scaled down from %d: the hard limit of open"
			. " files is %d)", $n, $hard;
		$n = $hard - 200;
	}

	# each nginx worker within the limit: the edge holds 2 sockets per
	# stream, so do the stock proxy; reuseport spreads the streams

	my $nw = POSIX::ceil((2 * $n + 1000) / ($hard - 200)) || 1;
	my $wc = POSIX::ceil(2 * $n / $nw * 1.1) + 200;
	$wc = $hard - 100 if $wc > $hard - 100;
	my $rp = $nw > 1 ? ' reuseport' : '';

	$port{$_} = free_port()
		for qw/ medge mpre mverify msink mauth mstock msink2 /;

	open my $fh, '>', "$dir/mem.conf" or die "$dir/mem.conf: $!\n";
	print $fh <<"EOF";
load_module $stream_so;
load_module $module_so;

daemon off;
worker_processes $nw;
worker_rlimit_nofile $hard;
worker_shutdown_timeout 2s;
pid $dir/mem.pid;
error_log $dir/mem-error.log warn;

events {
    worker_connections $wc;
}

stream {
    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "benchmark secret, not a real one";

    xmpp_federation_partner fabrikam.example {
        type federated;
        tls not_supported;
        sasl not_supported;
        dialback on;
        connection_limit 100000;
        server 127.0.0.1:$port{mauth};
    }

    # the edge
    server {
        listen 127.0.0.1:$port{medge}$rp;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:$port{msink};
    }

    # the same, with the stream header read in the preread phase
    server {
        listen 127.0.0.1:$port{mpre}$rp;
        xmpp_federation inbound;
        xmpp_federation_preread on;
        xmpp_federation_pass 127.0.0.1:$port{msink};
    }

    # the internal listener
    server {
        listen 127.0.0.1:$port{mverify}$rp;
        xmpp_federation outbound;
        xmpp_federation_pass 127.0.0.1:$port{msink};
    }

    # stock nginx
    server {
        listen 127.0.0.1:$port{mstock}$rp;
        proxy_pass 127.0.0.1:$port{msink2};
    }
}
EOF
	close $fh;

	my $lanes = 4;

	printf "\n3. memory: %d idle streams%s, %d worker%s, %d client"
		. " lanes\n", $n, $note, $nw, $nw > 1 ? 's' : '', $lanes;

	my %r;

	for my $case (qw/ edge preread stock /) {
		my @w = start_nginx('mem.conf', 'mem-error.log', $nw,
			@port{qw/ medge mpre mverify mstock /});

		sleep 0.5;
		my $before = memory_of(@w);

		my @cmd = $case eq 'stock'
			? ($idle_bin, 'stock', @port{qw/ mstock msink2 /}, $n,
				$lanes)
			: ($idle_bin, 'edge', $port{$case eq 'edge' ? 'medge'
				: 'mpre'}, @port{qw/ mverify msink mauth /},
				$n, $lanes);

		my $pid = open2(my $from, my $to, 'sh', '-c',
			"exec @cmd 2>$dir/xmpp_idle.err");

		my $line = <$from> // '';
		my $after;

		if ($line =~ /^ready streams=(\d+) seconds=([\d.]+)/) {
			my $secs = $2;

			# settled: nothing moves on the idle streams
			sleep 1;
			$after = memory_of(@w);
			$after->{seconds} = $secs;
		}

		close $to;
		waitpid($pid, 0);

		stop_nginx();

		unless ($after) {
			my $err = slurp("$dir/xmpp_idle.err") // '';
			$err =~ s/\s+$//;
			push @failures, "memory: $case: "
				. ($err || 'xmpp_idle exit ' . ($? >> 8));
			print "  $case FAILED:\n    $err\n";
			return "\nMEMORY: the $case streams did not open\n";
		}

		for my $k (qw/ rss anon pss data /) {
			$r{$case}{$k} = ($after->{$k} - $before->{$k}) / $n;
		}

		$r{$case}{seconds} = $after->{seconds};
		$r{$case}{fds} = $after->{fds};
		$r{$case}{before} = $before;
		$r{$case}{after} = $after;

		printf "  %-7s %d streams in %.1f s: RSS %+.0f KiB, PSS %+.0f"
			. " KiB, VmData %+.0f KiB (workers, all), descriptors"
			. " %s\n", $case, $n, $after->{seconds},
			$after->{rss} - $before->{rss},
			$after->{pss} - $before->{pss},
			$after->{data} - $before->{data}, $after->{fds};
	}

	my %ratio = map { $_ => $r{edge}{$_} / $r{stock}{$_} }
		qw/ rss pss anon data /;

	my $out = '';

	$out .= sprintf "\n== 3. Memory per idle authenticated stream: %d"
		. " streams%s, %d worker%s\n\n", $n, $note, $nw,
		$nw > 1 ? 's' : '';
	$out .= "edge: a stream from fabrikam.example authenticated by"
		. " dialback and handed to the\n  gateway (2 sockets: partner"
		. " and gateway), one 1 KB stanza relayed\n";
	$out .= "stock: a proxy_pass connection (2 sockets: client and"
		. " upstream), the same bytes passed,\n  a stream header"
		. " back\n";
	$out .= "per stream: (all workers after - before) / streams, all"
		. " idle; KiB = 1024 bytes;\n  kernel socket memory not"
		. " included\n\n";
	$out .= sprintf "%-22s %10s %10s %10s %16s %9s\n", 'case',
		'RSS KiB', 'PSS KiB', 'anon KiB', 'VmData KiB', 'setup s';

	my %label = (edge => 'edge (xmpp_federation)',
		preread => '(edge, preread on)',
		stock => 'stock proxy_pass');

	for my $case (qw/ edge preread stock /) {
		$out .= sprintf "%-22s %10.1f %10.1f %10.1f %16.1f %9.1f\n",
			$label{$case},
			@{$r{$case}}{qw/ rss pss anon data seconds /};
	}

	$out .= "\n";
	$out .= sprintf "memory ratio edge/stock, RSS: %.2f (target <= 2:"
		. " %s)\n", $ratio{rss}, $ratio{rss} <= 2 ? 'met' : 'NOT met';
	$out .= sprintf "  PSS %.2f, anonymous RSS %.2f, VmData (heap"
		. " allocated, touched or not) %.2f\n",
		@ratio{qw/ pss anon data /};
	$out .= sprintf "  with xmpp_federation_preread on, RSS: %.2f\n",
		$r{preread}{rss} / $r{stock}{rss};
	$out .= sprintf "worker RSS, all workers, before / with the streams:"
		. " edge %.1f / %.1f MiB, stock %.1f / %.1f MiB\n",
		$r{edge}{before}{rss} / 1024, $r{edge}{after}{rss} / 1024,
		$r{stock}{before}{rss} / 1024, $r{stock}{after}{rss} / 1024;
	$out .= sprintf "descriptors per worker with the streams: edge %s,"
		. " stock %s\n", $r{edge}{fds}, $r{stock}{fds};

	return $out;
}

# memory of the workers, summed, in KiB; descriptors of each

sub memory_of {
	my (@w) = @_;

	my %m = (rss => 0, anon => 0, pss => 0, data => 0);
	my @fds;

	for my $pid (@w) {
		my $st = slurp("/proc/$pid/status") // die "worker $pid gone\n";
		my $sm = slurp("/proc/$pid/smaps_rollup") // '';

		$m{rss} += $1 if $st =~ /^VmRSS:\s+(\d+)/m;
		$m{anon} += $1 if $st =~ /^RssAnon:\s+(\d+)/m;
		$m{data} += $1 if $st =~ /^VmData:\s+(\d+)/m;
		$m{pss} += $1 if $sm =~ /^Pss:\s+(\d+)/m;

		my @fd = glob "/proc/$pid/fd/*";
		push @fds, scalar @fd;
	}

	$m{fds} = join ' + ', @fds;

	return \%m;
}

###############################################################################
# relay helpers

# a parser alone on the relay's bytes in memory, for context: the median
# of three runs, as MB per second and ms per MB

sub in_memory {
	my ($cmd) = @_;

	my @t;

	for (1 .. 3) {
		my $line = `$cmd`;
		die "$cmd failed\n" if $? || $line !~ /seconds=([\d.]+)/;
		push @t, $1;
	}

	my $secs = median(@t);

	return { mbs => $count * $size / 1e6 / $secs,
		cpumb => $secs / ($count * $size / 1e6) };
}

sub run_case {
	my ($case, $n) = @_;

	my @cmd = $case eq 'edge'
		? ($bench, 'edge', @port{qw/ edge verify sink auth /}, $n, $size)
		: ($bench, 'stock', @port{qw/ stock sink2 /}, $n, $size);

	my $c0 = worker_cpu($worker);
	my @t0 = worker_times($worker);
	my $w0 = worker_wait($worker);
	my @m0 = machine_ticks();
	my $line = `@cmd 2>$dir/xmpp_bench.err`;
	my @m1 = machine_ticks();
	my $w1 = worker_wait($worker);
	my $c1 = worker_cpu($worker);
	my @t1 = worker_times($worker);

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
		usermb => ($t1[0] - $t0[0]) / ($bytes / 1e6),
		sysmb => ($t1[1] - $t0[1]) / ($bytes / 1e6),
		client => $client // 0,
		sink => $sink // 0,
		steal => steal_share(\@m0, \@m1),
		wait => ($w1 - $w0) / $secs,
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

# user and system time of a process, in seconds (clock ticks)

sub worker_times {
	my ($pid) = @_;

	open my $f, '<', "/proc/$pid/stat" or die "worker $pid gone\n";
	my $stat = <$f>;
	$stat =~ s/^.*\) //;
	my @f = split ' ', $stat;
	my $hz = POSIX::sysconf(POSIX::_SC_CLK_TCK());

	return ($f[11] / $hz, $f[12] / $hz);
}

# the machine's CPU ticks: (stolen by the hypervisor, all), from
# /proc/stat; and the time the worker waited to run, in seconds, from its
# scheduler statistics (0 if the kernel keeps none)

sub machine_ticks {
	my ($cpu) = (slurp('/proc/stat') // '') =~ /^cpu\s+(.*)$/m;
	my @f = split ' ', $cpu // '';
	my $all = 0;

	$all += $f[$_] // 0 for 0 .. 7;		# guest time is in user time

	return ($f[7] // 0, $all);
}

sub worker_wait {
	my ($pid) = @_;

	open my $f, '<', "/proc/$pid/schedstat" or return 0;
	my (undef, $wait) = split ' ', scalar <$f>;

	return ($wait // 0) / 1e9;
}

# the share of the CPUs the hypervisor took between two machine_ticks()

sub steal_share {
	my ($a, $b) = @_;
	my $all = $b->[1] - $a->[1];

	return $all > 0 ? ($b->[0] - $a->[0]) / $all : 0;
}

# a run, again while the hypervisor disturbs it and tries are left; every
# try is kept in @$list, marked

sub undisturbed {
	my ($list, $run) = @_;

	for my $try (0 .. $retries) {
		my $r = $run->() or return;
		$r->{disturbed} = $r->{steal} > $max_steal ? 1 : 0;
		push @$list, $r;
		return unless $r->{disturbed};
	}
}

sub disturbed_tag {
	my ($r) = @_;

	return '' unless $r->{disturbed};
	return sprintf '  DISTURBED (steal > %.0f%%)', 100 * $max_steal;
}

# the runs the medians are of: the undisturbed ones when each case has at
# least 3; else all of them, and the machine is said to be too busy for
# a verdict

sub keep_undisturbed {
	my ($all, @cases) = @_;
	my (%res, $short);

	for my $case (@cases) {
		$res{$case} = [ grep { !$_->{disturbed} } @{$all->{$case}} ];
		$short = 1 if @{$res{$case}} < 3;
	}

	my $n = 0;
	$n += grep { $_->{disturbed} } @{$all->{$_}} for @cases;

	return (\%res, { disturbed => $n, busy => 0 }) unless $short;

	return ({ map { $_ => $all->{$_} } @cases },
		{ disturbed => $n, busy => 1 });
}

# the line under the verdict: how the machine let the part run

sub busy_report {
	my ($busy) = @_;

	return '' unless $busy->{disturbed};

	return sprintf "  %d disturbed runs (hypervisor steal > %.0f%%) left out"
		. " of the medians\n", $busy->{disturbed}, 100 * $max_steal
		unless $busy->{busy};

	return sprintf "  MACHINE TOO BUSY: %d runs disturbed (hypervisor steal"
		. " > %.0f%%), fewer than\n  3 undisturbed runs of a case; the"
		. " medians are of all runs, not a verdict\n",
		$busy->{disturbed}, 100 * $max_steal;
}

# what the medians of a part owe to the machine: CPU time the hypervisor
# gave to other guests, and the worker ready to run but not running

sub steal_report {
	my ($m, $a, $b) = @_;

	return sprintf "hypervisor steal (of all CPUs) / worker waiting to"
		. " run (of elapsed): %s %.0f%% / %.0f%%, %s %.0f%% / %.0f%%\n",
		$a, 100 * $m->{$a}{steal}, 100 * $m->{$a}{wait},
		$b, 100 * $m->{$b}{steal}, 100 * $m->{$b}{wait};
}

# the worker processes of master PPID, once there are N of them

sub worker_pids {
	my ($ppid, $n) = @_;

	my @w;

	for (1 .. 100) {
		@w = ();

		for my $stat (glob '/proc/[0-9]*/stat') {
			open my $f, '<', $stat or next;
			my $l = <$f> // next;
			my ($pid, $rest) = $l =~ /^(\d+) \(.*\) (.*)$/ or next;
			my @f = split ' ', $rest;
			push @w, $pid if $f[1] == $ppid;
		}

		return sort { $a <=> $b } @w if @w >= $n;
		sleep 0.1;
	}

	return;
}

# Instructions that nginx (one process: master_process off) executes in
# user space, counted by callgrind: nginx is started afresh for each
# workload and once for none; the workload's count less the start's,
# divided by its units of work (stanzas, sessions).  Machine load does not
# change these figures.  WORK: name => [ units, command... ]

sub count_instructions {
	my ($conf, $ports, %work) = @_;

	my (%ir, %per);

	for my $name ('', sort keys %work) {
		my $file = "$dir/callgrind." . ($name || 'start');

		unlink "$dir/count-error.log";

		spawn_nginx($conf, 'count-error.log',
			[ 'valgrind', '--tool=callgrind', '--log-file='
				. "$dir/valgrind.log", "--callgrind-out-file=$file" ],
			'-g', 'master_process off;');

		wait_port($_, 60) for @$ports;

		if ($name) {
			my ($units, @cmd) = @{$work{$name}};

			if (system("@cmd >/dev/null 2>$dir/count.err") != 0) {
				my $err = slurp("$dir/count.err") // '';
				$err =~ s/\s+$//;
				push @failures, "count: $name: $err";
			}
		}

		# one process: TERM ends it as QUIT would; under valgrind a
		# signal can go unseen while no timer is set, and is sent again

		stop_nginx('TERM');

		my ($total) = (slurp($file) // '') =~ /^(?:summary|totals):\s*(\d+)/m
			or do {
				push @failures, "count: no callgrind totals in $file";
				return;
			};

		$ir{$name || 'start'} = $total;
	}

	for my $name (keys %work) {
		$per{$name} = ($ir{$name} - $ir{start}) / $work{$name}[0];
	}

	$per{start} = $ir{start};
	$per{units} = { map { $_ => $work{$_}[0] } keys %work };

	return \%per;
}

sub count_report {
	my ($c, $unit, %label) = @_;

	my $out = sprintf "\ninstructions in user space per %s (callgrind,"
		. " nginx alone, the start of %.1f M\ninstructions"
		. " subtracted):\n", $unit, $c->{start} / 1e6;

	for my $name (sort { $c->{$a} <=> $c->{$b} } keys %label) {
		$out .= sprintf "  %-24s %12.0f  (%d %ss)\n", $label{$name},
			$c->{$name}, $c->{units}{$name}, $unit;
	}

	if ($c->{verified}) {
		$out .= sprintf "  edge/stock: %.3f, edge/(stock, verify on):"
			. " %.3f\n", $c->{edge} / $c->{stock},
			$c->{edge} / $c->{verified};

	} else {
		$out .= sprintf "  edge - stock: %.0f per %s\n",
			$c->{edge} - $c->{stock}, $unit;
	}

	return $out;
}

# nginx with DIR/CONF, logging to DIR/LOG, once it listens on PORTS

sub start_nginx {
	my ($conf, $log, $nworkers, @ports) = @_;

	spawn_nginx($conf, $log, []);

	wait_port($_) for @ports;

	my @w = worker_pids($master, $nworkers)
		or die "no nginx worker process\n";

	$worker = $w[0];

	return @w;
}

# nginx with DIR/CONF, logging to DIR/LOG, as the last arguments of WRAP
# (a command, or none), with EXTRA arguments; $master is its process

sub spawn_nginx {
	my ($conf, $log, $wrap, @extra) = @_;

	$errlog = "$dir/$log";
	$master = fork() // die "fork: $!\n";

	if ($master == 0) {
		open STDIN, '<', '/dev/null';
		exec(@$wrap, $nginx, '-p', "$dir/", '-e', $errlog,
			'-c', "$dir/$conf", @extra)
			or die "exec $nginx: $!\n";
	}
}

# stops nginx; the errors it logged are kept for the summary

sub stop_nginx {
	my ($signal) = @_;

	return unless $master;

	kill $signal // 'QUIT', $master;

	my $gone = 0;

	for my $i (1 .. 100) {
		if (waitpid($master, WNOHANG) == $master) {
			$gone = 1;
			last;
		}

		kill $signal, $master if $signal && $i % 5 == 0;

		sleep 0.1;
	}

	unless ($gone) {
		kill 'KILL', $master;
		waitpid($master, 0);
	}

	$master = 0;

	my ($name) = $errlog =~ m{([^/]+)$};

	push @bad, map { "$name: $_" }
		grep { /\[(?:emerg|alert|crit|error)\]/ }
		split /\n/, slurp($errlog) // '';
}

sub free_port {
	my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1:0', Listen => 1,
		ReuseAddr => 1) or die "no free port: $!\n";
	return $s->sockport();
}

# listening, seen in /proc/net/tcp (a test connection would make the
# stock proxy try its upstream and log an error)

sub wait_port {
	my ($port, $secs) = @_;

	my $local = sprintf '0100007F:%04X', $port;

	for (1 .. ($secs // 5) * 20) {
		for (split /\n/, slurp('/proc/net/tcp') // '') {
			my @f = split ' ';
			return if $f[1] eq $local && $f[3] eq '0A';
		}

		die "nginx exited:\n" . (slurp($errlog) // '') . "\n"
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
