package Test::XMPP::Servers;

# Real XMPP peers for the tests and the demo: dnsmasq (test DNS with SRV
# records, one instance per DNS view), Prosody and ejabberd (gateway or
# partner), and slixmpp clients that send and receive messages. Everything runs on
# loopback, on free ports, inside a test directory; no system service is
# touched. Every process started here is stopped by stop_all(), when the
# object goes away, at exit (also after die), on SIGINT/SIGTERM, and by
# the kernel if this process is killed outright (PR_SET_PDEATHSIG).
#
#   my $t = Test::Nginx->new();
#   my $xs = Test::XMPP::Servers->new($t);      # or ->new(dir => $dir)
#
#   my $world = $xs->dnsmasq(name => 'world', records => [
#       [ xmpp => 'contoso.example', $gateway_s2s_port ],
#       [ srv  => '_xmpp-server._tcp.x.example', 'host.x.example', 5269 ],
#       [ srv  => '_xmpps-server._tcp.x.example' ],     # "no such service"
#       [ a    => 'host.x.example', '127.0.0.1' ],
#   ]);
#   my $gw = $xs->prosody(name => 'gateway', domain => 'contoso.example',
#       port => $s2s_port, c2s_port => $c2s_port, dns => $world->port,
#       users => { alice => 'pw' });
#
#   $xs->send_message(from_jid => 'bob@fabrikam.example', password => 'pw',
#       c2s => $partner->c2s, to => 'alice@contoso.example', body => 'hi');
#   my @m = $xs->receive_message(jid => 'alice@contoso.example',
#       password => 'pw', c2s => $gw->c2s, timeout => 10);
#
# See demo/README.md and t/xmpp_real_direct.t for complete uses.

use warnings;
use strict;

use Carp qw/ croak /;
use File::Basename qw/ dirname /;
use File::Path qw/ make_path /;
use File::Spec;
use File::Temp qw/ tempdir /;
use IO::Socket::INET;
use JSON::PP ();
use POSIX qw/ WNOHANG /;
use Scalar::Util qw/ blessed weaken /;
use Time::HiRes qw/ time sleep /;

our $PYTHON = $ENV{TEST_XMPP_PYTHON} || '/usr/bin/python3';
our $LIBDIR = File::Spec->rel2abs(dirname(__FILE__) . '/../..');

my %live;		# pid => process object (weak), stopped at exit
my $owner = $$;

###############################################################################

# programs

sub _which {
	my ($prog) = @_;

	return (-x $prog ? $prog : undef) if $prog =~ m!/!;

	for my $d (split(/:/, $ENV{PATH} // ''), qw!/usr/sbin /usr/bin /sbin!) {
		return "$d/$prog" if -f "$d/$prog" && -x _;
	}

	return undef;
}

sub _quiet {
	my (@cmd) = @_;

	my $pid = fork();
	return 0 unless defined $pid;

	if ($pid == 0) {
		open(STDOUT, '>', '/dev/null');
		open(STDERR, '>', '/dev/null');
		{ no warnings 'exec'; exec { $cmd[0] } @cmd; }
		POSIX::_exit(127);
	}

	waitpid($pid, 0);
	return $? == 0;
}

# where ejabberd's Erlang applications are (ERL_LIBS), or undef

sub _ejabberd_libs {
	my ($ebin) = glob('/usr/lib/*/ejabberd-*/ebin /usr/lib/erlang/lib/'
		. 'ejabberd-*/ebin');
	return undef unless defined $ebin && -d $ebin;
	return dirname(dirname($ebin));
}

# what is missing for a feature, or undef: prosody, dnsmasq, slixmpp,
# ejabberd, or any program name

sub missing {
	my ($class, @features) = @_;

	for my $f (@features) {
		if ($f eq 'prosody') {
			return 'prosody not found'
				unless _which('prosody') && _which('prosodyctl');

			# without lua-unbound Prosody falls back to net.dns,
			# which only reads /etc/resolv.conf: no test DNS then
			my $lua = _lua() or return 'lua for prosody not found';
			_quiet($lua, '-e', 'require "lunbound"')
				or return 'lua-unbound (lunbound) not found, '
					. 'prosody could not use the test DNS';

		} elsif ($f eq 'dnsmasq') {
			return 'dnsmasq not found' unless _which('dnsmasq');

		} elsif ($f eq 'slixmpp') {
			return "$PYTHON not found" unless -x $PYTHON;
			_quiet($PYTHON, '-c', 'import slixmpp')
				or return 'python3-slixmpp not found';

		} elsif ($f eq 'ejabberd') {
			return 'ejabberd not found'
				unless _which('erl') && _ejabberd_libs();

		} else {
			return "$f not found" unless _which($f);
		}
	}

	return undef;
}

# plan skip_all unless every feature is there (call before plan)

sub has {
	my ($class, @features) = @_;

	my $m = $class->missing(@features);

	if (defined $m) {
		require Test::More;
		Test::More::plan(skip_all => $m);
	}

	return $class;
}

sub _lua {
	my $p = _which('prosody') or return undef;

	open(my $fh, '<', $p) or return undef;
	my $line = <$fh> // '';
	close $fh;

	return _which($1) if $line =~ /^#!\s*\S*env\s+(\S+)/;
	return _which($1) if $line =~ /^#!\s*(\S+)/;
	return undef;
}

###############################################################################

sub new {
	my ($class, @args) = @_;

	my ($t, %opts);
	if (@args % 2) {
		$t = shift @args;
	}
	%opts = @args;

	my $dir = $opts{dir};

	if (!defined $dir && $t) {
		$dir = $t->testdir();
	}

	if (!defined $dir) {
		$dir = tempdir('xmpp-servers-XXXXXXXXXX', TMPDIR => 1,
			CLEANUP => !$ENV{TEST_NGINX_LEAVE});
		chmod(0755, $dir);
	}

	make_path($dir) unless -d $dir;

	my $self = bless {
		dir => File::Spec->rel2abs($dir),
		t => $t,
		procs => [],
		clients => 0,
		verbose => $opts{verbose} // $ENV{TEST_NGINX_VERBOSE},
		pid => $$,
	}, $class;

	weaken($self->{t}) if $t;

	_install_signals();

	return $self;
}

sub testdir {
	my ($self) = @_;
	return $self->{dir};
}

sub _note {
	my ($self, $msg) = @_;

	return unless $self->{verbose};

	if ($INC{'Test/More.pm'}) {
		Test::More::note($msg);
	} else {
		print STDERR "# $msg\n";
	}
}

###############################################################################

# ports: free for TCP and UDP both, reserved until a server here takes it

my %reserved;		# port => [ tcp socket, udp socket ]

sub free_port {
	for (1 .. 100) {
		my $tcp = IO::Socket::INET->new(Proto => 'tcp',
			LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1)
			or next;
		my $port = $tcp->sockport();

		next if $reserved{$port};

		my $udp = IO::Socket::INET->new(Proto => 'udp',
			LocalAddr => '127.0.0.1', LocalPort => $port)
			or next;

		$reserved{$port} = [ $tcp, $udp ];
		return $port;
	}

	die "Can't find a free port\n";
}

sub release {
	my (@ports) = @_;
	delete $reserved{$_} for grep { defined } @ports;
}

###############################################################################

# processes

sub _pdeathsig {
	# the kernel kills the child when this process dies, even by SIGKILL
	my $nr = eval { package main; require 'syscall.ph'; SYS_prctl() };
	$nr //= 157 if (POSIX::uname())[4] eq 'x86_64';
	syscall($nr, 1, 9) if defined $nr;	# PR_SET_PDEATHSIG, SIGKILL
}

# fork and exec; output into files; returns the pid

sub _spawn {
	my ($self, %a) = @_;

	my $pid = fork();
	die "Can't fork: $!\n" unless defined $pid;

	if ($pid == 0) {
		eval {
			_pdeathsig();
			setpgrp(0, 0);
			chdir($a{cwd}) if $a{cwd};
			@ENV{keys %{$a{env}}} = values %{$a{env}} if $a{env};
			open(STDIN, '<', '/dev/null');
			open(STDOUT, '>>', $a{stdout}) or die;
			open(STDERR, '>>', $a{stderr} // $a{stdout}) or die;
		};
		my @cmd = @{$a{cmd}};
		{ no warnings 'exec'; exec { $cmd[0] } @cmd; }
		print STDERR "Can't exec $cmd[0]: $!\n";
		POSIX::_exit(127);
	}

	return $pid;
}

sub _register {
	my ($self, $proc) = @_;

	push @{$self->{procs}}, $proc;
	_track($proc);

	return $proc;
}

# every running process is stopped at exit (restarts get new pids)

sub _track {
	my ($proc) = @_;

	return unless $proc->{pid};

	$live{$proc->{pid}} = $proc;
	weaken($live{$proc->{pid}});
}

sub stop_all {
	my ($self) = @_;

	return $self if $self->{pid} != $$;

	_stop_procs(grep { defined } @{$self->{procs}});
	@{$self->{procs}} = ();

	return $self;
}

sub DESTROY {
	my ($self) = @_;
	local ($?, $!, $@);
	$self->stop_all();
}

# SIGTERM to all at once, then wait (5 s at most), then SIGKILL

sub _stop_procs {
	my (@procs) = @_;

	local ($?, $!);

	my %wait;
	for my $p (@procs) {
		my $pid = delete $p->{pid} or next;
		kill('TERM', $pid);
		$wait{$pid} = $p;
		delete $live{$pid};
	}

	my $deadline = time() + 5;

	while (%wait && time() < $deadline) {
		for my $pid (keys %wait) {
			my $r = waitpid($pid, WNOHANG);
			delete $wait{$pid}
				if $r == $pid || ($r == -1 && !kill(0, $pid));
		}
		sleep(0.02) if %wait;
	}

	for my $pid (keys %wait) {
		kill('KILL', $pid);
		waitpid($pid, 0);
	}
}

END {
	if ($$ == $owner) {
		local $?;
		_stop_procs(grep { defined } values %live);
	}
}

# SIGINT/SIGTERM (prove ^C, timeouts): exit, so that END stops everything

sub _install_signals {
	for my $sig (qw/ INT TERM HUP /) {
		next if defined $SIG{$sig} && $SIG{$sig} ne 'DEFAULT';
		$SIG{$sig} = sub {
			if ($$ != $owner) {
				# a forked helper (run_daemon): die of it as before
				$SIG{$sig} = 'DEFAULT';
				kill($sig, $$);
				return;
			}
			print STDERR "Test::XMPP::Servers: SIG$sig, stopping\n";
			exit(130);
		};
	}
}

# poll until $cond returns true or the process exits or time runs out

sub _wait_ready {
	my ($self, $proc, $secs, $cond, $what) = @_;

	my $deadline = time() + $secs;

	while (time() < $deadline) {
		return 1 if $cond->();

		if (!$proc->alive()) {
			my $st = $proc->{status} // -1;
			$proc->{pid} = undef;
			die "$proc->{kind} '$proc->{name}' exited (status $st) "
				. "before $what:\n" . $proc->diagnostics();
		}

		sleep(0.05);
	}

	my $diag = $proc->diagnostics();
	$proc->stop();
	die "$proc->{kind} '$proc->{name}' not ready ($what) "
		. "within $secs s:\n$diag";
}

sub _port_open {
	my ($port) = @_;
	return IO::Socket::INET->new(Proto => 'tcp',
		PeerAddr => "127.0.0.1:$port", Timeout => 1) ? 1 : 0;
}

sub _write {
	my ($path, $content) = @_;

	open(my $fh, '>', $path) or die "Can't create $path: $!\n";
	print $fh $content;
	close $fh or die "Can't write $path: $!\n";
}

sub _timeout {
	my ($secs) = @_;
	return $secs * ($ENV{TEST_NGINX_TIMEOUT} || 1);
}

###############################################################################

# dnsmasq: one DNS view
#
#   name    => 'world'           directory TESTDIR/dns-NAME
#   port    => P                 optional (default: free_port()); not
#                                Test::Nginx's port(): it holds the other
#                                protocol (UDP or TCP) of the same number,
#                                and dnsmasq needs both
#   records => [ ... ]           see _dns_lines()
#   xmpp    => { D => PORT }     shorthand for [ xmpp => D, PORT ] records
#                                (or D => [ PORT, TARGET ])
#   ip_targets => 1              xmpp records name 127.0.0.1 itself as
#                                SRV target: ejabberd resolves SRV targets
#                                with getaddrinfo(), i.e. the system's
#                                resolver, so it needs IP literals
#                                (Prosody takes them too)
#   local   => [ 'example' ]     domains answered only from the records
#                                (default: the top label of every record)

sub dnsmasq {
	my ($self, %a) = @_;

	my $name = $a{name} // 'dns';
	my $dir = "$self->{dir}/dns-$name";
	make_path($dir);

	my $port = $a{port} // free_port();

	my $proc = bless {
		kind => 'dnsmasq',
		name => $name,
		dir => $dir,
		port => $port,
		servers => $self,
		args => { %a },
		log => "$dir/dnsmasq.log",
		stderr => "$dir/stderr",
	}, 'Test::XMPP::Servers::Dnsmasq';

	$proc->_configure(%a);
	$proc->start();

	return $self->_register($proc);
}

###############################################################################

# Prosody
#
#   name     => 'gateway'          directory TESTDIR/NAME
#   domain   => 'contoso.example'  or domains => [ ... ] (VirtualHosts)
#   port     => P                  s2s port (default: free_port())
#   c2s_port => P                  c2s port (default: free_port())
#   dns      => P                  dnsmasq port (its DNS view)
#   users    => { alice => 'pw', 'carol@other.example' => 'pw' }
#   extra    => '...lua...'        global options, before the VirtualHosts
#   host_extra => '...lua...'      inside every VirtualHost
#   modules  => [ ... ]            more modules_enabled
#   tls      => { certificate => F, key => F, cafile => F }
#                                  enable mod_tls with this certificate
#                                  (plain s2s/c2s stay allowed unless
#                                  extra says otherwise)
#   s2s_secure_auth => 1           s2s only with TLS and certificates
#                                  this server trusts (implies
#                                  s2s_require_encryption => 1, which also
#                                  works alone); without these options
#                                  both are false in the config: set them
#                                  here, not in extra (a duplicate option
#                                  in a long config path crashes Prosody
#                                  0.12's config warning)
#   log_level => 'debug'

sub prosody {
	my ($self, %a) = @_;

	my $name = $a{name} // 'prosody';
	my $dir = "$self->{dir}/$name";
	make_path("$dir/data", "$dir/certs");

	my @domains = $a{domains} ? @{$a{domains}} : ($a{domain});
	croak "prosody: domain required" unless defined $domains[0];

	my $proc = bless {
		kind => 'prosody',
		name => $name,
		dir => $dir,
		domains => \@domains,
		port => $a{port} // free_port(),
		c2s_port => $a{c2s_port} // free_port(),
		dns => $a{dns},
		servers => $self,
		args => { %a },
		config => "$dir/prosody.cfg.lua",
		log => "$dir/prosody.log",
		stderr => "$dir/stderr",
	}, 'Test::XMPP::Servers::Prosody';

	$proc->_configure();

	my $users = $a{users} // {};
	for my $u (sort keys %$users) {
		my ($user, $domain) = split(/@/, $u, 2);
		$proc->register($user, $users->{$u}, $domain);
	}

	$proc->start();

	return $self->_register($proc);
}

###############################################################################

# ejabberd (23.01), run as root straight from erl: no ejabberdctl, no su,
# no epmd (the node listens on its own distribution port on 127.0.0.1)
#
#   name, domain / domains, port (s2s), c2s_port, dns, users: as prosody()
#   extra    => '...yaml...'     top-level options appended (no duplicates
#                                of the keys written here)
#   modules  => '...yaml...'     more entries under modules:, indented
#   tls      => { certfile => F } (certificate and key in one PEM file):
#                                offer STARTTLS (s2s_use_starttls optional);
#                                starttls => 'required' (or 'true', 'false')
#                                for s2s_use_starttls, cafile => F for
#                                s2s_cafile (the CAs s2s peers chain to)
#   log_level => 'debug'

sub ejabberd {
	my ($self, %a) = @_;

	my $name = $a{name} // 'ejabberd';
	my $dir = "$self->{dir}/$name";
	make_path("$dir/spool", "$dir/logs");

	my @domains = $a{domains} ? @{$a{domains}} : ($a{domain});
	croak "ejabberd: domain required" unless defined $domains[0];

	$self->{cookie} //= join('', map { ('a' .. 'z')[rand 26] } 1 .. 20);

	(my $node = "ej-$name") =~ s/[^\w-]/_/g;

	my $proc = bless {
		kind => 'ejabberd',
		name => $name,
		dir => $dir,
		domains => \@domains,
		port => $a{port} // free_port(),
		c2s_port => $a{c2s_port} // free_port(),
		dist_port => free_port(),
		node => "$node\@localhost",
		cookie => $self->{cookie},
		dns => $a{dns},
		servers => $self,
		args => { %a },
		config => "$dir/ejabberd.yml",
		log => "$dir/logs/ejabberd.log",
		stderr => "$dir/logs/stderr",
	}, 'Test::XMPP::Servers::Ejabberd';

	$proc->_configure();
	$proc->start();
	$self->_register($proc);

	my $users = $a{users} // {};
	for my $u (sort keys %$users) {
		my ($user, $domain) = split(/@/, $u, 2);
		$proc->register($user, $users->{$u}, $domain);
	}

	return $proc;
}

###############################################################################

# clients (slixmpp with /usr/bin/python3)

sub _client_cmd {
	my ($self, $script, %a) = @_;

	my $jid = $a{from_jid} // $a{jid} or croak "jid required";
	my $c2s = $a{c2s} or croak "c2s (host:port) required";
	$c2s = $c2s->c2s() if blessed($c2s) && $c2s->can('c2s');

	my @cmd = ($PYTHON, "$LIBDIR/$script",
		'--jid', $jid,
		'--password', $a{password} // croak("password required"),
		'--server', $c2s,
		'--timeout', _timeout($a{timeout} // 15));

	push @cmd, '--tls' if $a{tls};
	push @cmd, '--ca', $a{ca} if $a{ca};
	push @cmd, '--debug' if $a{debug};

	return @cmd;
}

sub _client_files {
	my ($self, $what) = @_;

	my $n = ++$self->{clients};
	my $dir = "$self->{dir}/clients";
	make_path($dir);

	return ("$dir/$n-$what.out", "$dir/$n-$what.err");
}

sub _events {
	my ($file) = @_;

	my @ev;
	open(my $fh, '<', $file) or return ();
	while (my $line = <$fh>) {
		next unless $line =~ /^\{/;
		my $e = eval { JSON::PP::decode_json($line) } or next;
		push @ev, $e;
	}
	close $fh;

	return @ev;
}

sub _slurp {
	my ($file) = @_;
	open(my $fh, '<', $file) or return '';
	local $/;
	my $s = <$fh>;
	return $s // '';
}

# run a client to its end; returns (exit status, events, stderr)

sub _run_client {
	my ($self, $what, $secs, @cmd) = @_;

	my ($out, $err) = $self->_client_files($what);
	$self->_note("client: @cmd[1 .. $#cmd]");

	my $pid = $self->_spawn(cmd => \@cmd, stdout => $out, stderr => $err);
	my $deadline = time() + $secs + 10;
	my $status;

	while (1) {
		if (waitpid($pid, WNOHANG) == $pid) {
			$status = $? >> 8;
			last;
		}
		if (time() > $deadline) {
			kill('KILL', $pid);
			waitpid($pid, 0);
			$status = -1;
			last;
		}
		sleep(0.02);
	}

	my @ev = _events($out);
	$self->_note("client $what: status $status\n" . _slurp($out)
		. _slurp($err));

	return ($status, \@ev, _slurp($err));
}

# send_message(from_jid, password, c2s, to, body,
#     [type, wait => secs to linger for a bounce, timeout, tls, ca])
# returns { ok => 1 if sent (and no bounce within wait), status (0 sent,
#           1 connection/timeout, 2 auth failed, 3 bounced), events => [...],
#           error => { condition, text, from } of a bounce, stderr }

sub send_message {
	my ($self, %a) = @_;

	my @cmd = $self->_client_cmd('xmpp_send.py', %a);
	push @cmd, '--to', $a{to} // croak("to required"),
		'--body', $a{body} // croak("body required");
	push @cmd, '--type', $a{type} if $a{type};
	push @cmd, '--wait', $a{wait} if $a{wait};

	my ($status, $ev, $err) = $self->_run_client('send',
		_timeout($a{timeout} // 15) + ($a{wait} // 0), @cmd);

	my ($bounce) = grep { $_->{event} eq 'error' } @$ev;

	return {
		ok => ($status == 0 && grep { $_->{event} eq 'sent' } @$ev)
			? 1 : 0,
		status => $status,
		events => $ev,
		error => $bounce,
		stderr => $err,
	};
}

# receive_message(jid, password, c2s, [count => 1, timeout => 15, tls, ca])
# logs in (offline messages are delivered at login), returns the messages
# with a body: ({ from, to, type, body, delayed }, ...); in scalar context
# the first one or undef

sub receive_message {
	my ($self, %a) = @_;

	my @cmd = $self->_client_cmd('xmpp_recv.py', %a);
	push @cmd, '--count', $a{count} // 1;

	my ($status, $ev, $err) = $self->_run_client('recv',
		_timeout($a{timeout} // 15), @cmd);

	my @m = grep { $_->{event} eq 'message' } @$ev;

	return wantarray ? @m : $m[0];
}

# receiver(jid, password, c2s, [count => 0, timeout => 60, tls]): a client
# that stays logged in, in the background; ->ready(secs), ->messages,
# ->wait_for(count, secs), ->stop

sub receiver {
	my ($self, %a) = @_;

	my @cmd = $self->_client_cmd('xmpp_recv.py', %a,
		timeout => $a{timeout} // 60);
	push @cmd, '--count', $a{count} // 0;

	my ($out, $err) = $self->_client_files('receiver');
	my $pid = $self->_spawn(cmd => \@cmd, stdout => $out, stderr => $err);

	my $r = bless {
		kind => 'receiver',
		name => $a{jid},
		pid => $pid,
		out => $out,
		stderr => $err,
		servers => $self,
	}, 'Test::XMPP::Servers::Receiver';

	$self->_register($r);
	$r->ready(_timeout(10)) unless defined $a{ready} && !$a{ready};

	return $r;
}

###############################################################################

package Test::XMPP::Servers::Process;

use POSIX qw/ WNOHANG /;
use Time::HiRes qw/ time sleep /;

sub pid { $_[0]{pid} }
sub name { $_[0]{name} }
sub dir { $_[0]{dir} }
sub port { $_[0]{port} }

sub alive {
	my ($self) = @_;

	my $pid = $self->{pid} or return 0;

	my $r = waitpid($pid, WNOHANG);
	if ($r == $pid) {
		$self->{status} = $?;
		return 0;
	}

	return 0 if $r == -1 && !kill(0, $pid);

	return 1;
}

sub stop {
	my ($self) = @_;
	Test::XMPP::Servers::_stop_procs($self);
	return $self;
}

sub log {
	my ($self) = @_;
	return Test::XMPP::Servers::_slurp($self->{log});
}

# wait until the log matches; returns the match or undef

sub wait_log {
	my ($self, $re, $secs) = @_;

	my $deadline = time() + Test::XMPP::Servers::_timeout($secs // 10);

	while (1) {
		my $log = $self->log();
		return $& if $log =~ $re;
		return undef if time() > $deadline;
		sleep(0.1);
	}
}

sub diagnostics {
	my ($self) = @_;

	my $s = '';
	for my $f (grep { defined } $self->{stderr}, $self->{log}) {
		my $c = Test::XMPP::Servers::_slurp($f);
		$c = substr($c, -4000) if length $c > 4000;
		$s .= "--- $f\n$c" if length $c;
	}

	return $s;
}

###############################################################################

package Test::XMPP::Servers::Dnsmasq;

use parent -norequire, 'Test::XMPP::Servers::Process';

use Carp qw/ croak /;

# records:
#   [ xmpp => D, PORT, TARGET?, IP? ]  _xmpp-server._tcp.D SRV 0 0 PORT
#       TARGET (default xmpp.D, with an A record IP, default 127.0.0.1;
#       an IP literal as TARGET gets no A record), and an empty
#       _xmpps-server._tcp.D ("no direct TLS")
#   [ srv => NAME, TARGET, PORT, PRIO?, WEIGHT? ]
#   [ srv => NAME ]                    no such service (target ".")
#   [ a => NAME, IP ]                  (also aaaa)
#   [ txt => NAME, TEXT ]
#   [ raw => 'dnsmasq option line' ]

sub _dns_lines {
	my ($records) = @_;

	my (@lines, %tld);

	for my $r (@$records) {
		my ($type, @v) = @$r;
		$type = lc $type;

		$tld{lc $1} = 1 if $type ne 'raw'
			&& defined $v[0] && $v[0] =~ /([^.]+)\.?$/;

		if ($type eq 'xmpp') {
			my ($d, $port, $target, $ip) = @v;
			$target //= "xmpp.$d";
			$ip //= '127.0.0.1';
			push @lines, "srv-host=_xmpp-server._tcp.$d,$target,$port";
			push @lines, "host-record=$target,$ip"
				unless $target =~ /^[\d.]+$|:/;
			push @lines, "srv-host=_xmpps-server._tcp.$d";

		} elsif ($type eq 'srv') {
			my ($n, $target, $port, $prio, $weight) = @v;
			push @lines, defined $target
				? "srv-host=$n,$target,$port,"
					. ($prio // 0) . ',' . ($weight // 0)
				: "srv-host=$n";

		} elsif ($type eq 'a' || $type eq 'aaaa') {
			push @lines, "host-record=$v[0],$v[1]";

		} elsif ($type eq 'txt') {
			push @lines, "txt-record=$v[0],\"$v[1]\"";

		} elsif ($type eq 'raw') {
			push @lines, $v[0];

		} else {
			croak "dnsmasq: unknown record type $type";
		}
	}

	return (\@lines, [ sort keys %tld ]);
}

sub _configure {
	my ($self, %a) = @_;

	my @records = @{$a{records} // []};
	my $x = $a{xmpp} // {};
	for my $d (sort keys %$x) {
		push @records, [ xmpp => $d,
			ref $x->{$d} ? @{$x->{$d}} : $x->{$d} ];
	}

	if ($a{ip_targets}) {
		@records = map {
			lc $_->[0] eq 'xmpp' && !defined $_->[3]
				? [ @$_[0 .. 2], $_->[4] // '127.0.0.1' ] : $_
		} @records;
	}

	my ($lines, $tlds) = _dns_lines(\@records);
	my @local = @{$a{local} // $tlds};
	@local = ('example') unless @local;

	$self->{records} = \@records;

	my $dir = $self->{dir};

	Test::XMPP::Servers::_write("$dir/dnsmasq.conf", join("\n",
		"# dnsmasq view '$self->{name}', written by Test::XMPP::Servers",
		"port=$self->{port}",
		"listen-address=127.0.0.1",
		"bind-interfaces",
		"no-resolv",
		"no-hosts",
		"no-poll",
		"user=root",
		"group=root",
		"cache-size=0",
		"pid-file=$dir/dnsmasq.pid",
		"log-queries",
		"log-facility=$dir/dnsmasq.log",
		(map { "local=/$_/" } @local),
		@$lines,
		''));

	return $self;
}

sub start {
	my ($self) = @_;

	my $s = $self->{servers};
	my $dir = $self->{dir};

	unlink("$dir/dnsmasq.pid");
	Test::XMPP::Servers::release($self->{port});

	$self->{pid} = $s->_spawn(
		cmd => [ Test::XMPP::Servers::_which('dnsmasq'), '-k',
			"--conf-file=$dir/dnsmasq.conf" ],
		stdout => $self->{stderr});
	$self->{status} = undef;
	Test::XMPP::Servers::_track($self);

	$s->_wait_ready($self, Test::XMPP::Servers::_timeout(10), sub {
		-s "$dir/dnsmasq.pid"
			&& Test::XMPP::Servers::_port_open($self->{port});
	}, "listening on port $self->{port}");

	$s->_note("dnsmasq '$self->{name}' on 127.0.0.1:$self->{port}");

	return $self;
}

# new records, same port: dnsmasq reads them only at start

sub reconfigure {
	my ($self, %a) = @_;

	$self->stop();
	$self->_configure(%{$self->{args}}, %a);
	$self->start();

	return $self;
}

sub conf {
	my ($self) = @_;
	return Test::XMPP::Servers::_slurp("$self->{dir}/dnsmasq.conf");
}

###############################################################################

package Test::XMPP::Servers::Prosody;

use parent -norequire, 'Test::XMPP::Servers::Process';

use Carp qw/ croak /;

sub domain { $_[0]{domains}[0] }
sub domains { @{$_[0]{domains}} }
sub s2s_port { $_[0]{port} }
sub c2s_port { $_[0]{c2s_port} }
sub c2s { "127.0.0.1:$_[0]{c2s_port}" }
sub s2s { "127.0.0.1:$_[0]{port}" }
sub config { $_[0]{config} }

sub _lua_str {
	my ($s) = @_;
	$s =~ s/(["\\])/\\$1/g;
	$s =~ s/\n/\\n/g;
	return "\"$s\"";
}

sub _configure {
	my ($self) = @_;

	my %a = %{$self->{args}};
	my $dir = $self->{dir};
	my $q = \&_lua_str;

	my @modules = (qw/ roster saslauth dialback disco ping posix /,
		@{$a{modules} // []});
	unshift @modules, 'tls' if $a{tls};

	my $dns = '';
	if (defined $self->{dns}) {
		$dns = "unbound = {\n"
			. "    resolvconf = false;\n"
			. "    hoststxt = false;\n"
			. "    forward = { " . $q->("127.0.0.1\@$self->{dns}")
			. " };\n"
			. "}\n";
	}

	my $tls = '';
	if (my $c = $a{tls}) {
		$tls = "ssl = {\n"
			. "    certificate = " . $q->($c->{certificate}) . ";\n"
			. "    key = " . $q->($c->{key}) . ";\n"
			. ($c->{cafile}
				? "    cafile = " . $q->($c->{cafile}) . ";\n"
				: '')
			. "}\n";
	}

	my $level = $a{log_level} // 'debug';

	my $secure_auth = $a{s2s_secure_auth} ? 'true' : 'false';
	my $require_encryption = $a{s2s_secure_auth}
		|| $a{s2s_require_encryption} ? 'true' : 'false';

	my $conf = <<"EOF";
-- Prosody '$self->{name}', written by Test::XMPP::Servers
daemonize = false
run_as_root = true
pidfile = ${\ $q->("$dir/prosody.pid")}
data_path = ${\ $q->("$dir/data")}
certificates = ${\ $q->("$dir/certs")}
log = { $level = ${\ $q->($self->{log})} }

interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
s2s_ports = { $self->{port} }
c2s_ports = { $self->{c2s_port} }
s2s_direct_tls_ports = { }
c2s_direct_tls_ports = { }
legacy_ssl_ports = { }

-- plaintext on loopback by default: dialback without TLS, PLAIN for the
-- clients
s2s_require_encryption = $require_encryption
s2s_secure_auth = $secure_auth
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"

modules_enabled = { ${\ join(', ', map { $q->($_) } @modules) } }

$dns$tls
EOF

	$conf .= "$a{extra}\n" if defined $a{extra};

	for my $d (@{$self->{domains}}) {
		$conf .= "\nVirtualHost " . $q->($d) . "\n";
		$conf .= "$a{host_extra}\n" if defined $a{host_extra};
	}

	Test::XMPP::Servers::_write($self->{config}, $conf);

	return $self;
}

# prosodyctl register; works while the server runs too (file storage)

sub register {
	my ($self, $user, $password, $domain) = @_;

	$domain //= $self->domain();

	my $out = "$self->{dir}/prosodyctl.log";
	my $pid = $self->{servers}->_spawn(
		cmd => [ Test::XMPP::Servers::_which('prosodyctl'),
			'--config', $self->{config},
			'register', $user, $domain, $password ],
		stdout => $out);

	waitpid($pid, 0);
	croak "prosodyctl register $user $domain failed (status $?):\n"
		. Test::XMPP::Servers::_slurp($out) if $?;

	return $self;
}

sub start {
	my ($self) = @_;

	my $s = $self->{servers};
	my $dir = $self->{dir};

	unlink("$dir/prosody.pid");
	Test::XMPP::Servers::release($self->{port}, $self->{c2s_port});

	$self->{pid} = $s->_spawn(
		cmd => [ Test::XMPP::Servers::_which('prosody'), '-F',
			'--config', $self->{config} ],
		stdout => $self->{stderr});
	$self->{status} = undef;
	Test::XMPP::Servers::_track($self);

	$s->_wait_ready($self, Test::XMPP::Servers::_timeout(15), sub {
		Test::XMPP::Servers::_port_open($self->{port})
			&& Test::XMPP::Servers::_port_open($self->{c2s_port});
	}, "listening on s2s $self->{port} and c2s $self->{c2s_port}");

	$s->_note("prosody '$self->{name}' (@{$self->{domains}}): "
		. "s2s 127.0.0.1:$self->{port}, c2s 127.0.0.1:$self->{c2s_port}");

	return $self;
}

sub restart {
	my ($self) = @_;
	$self->stop();
	return $self->start();
}

sub _data_dir {
	my ($self, $domain) = @_;

	my $enc = $domain;
	$enc =~ s/([^a-zA-Z0-9])/sprintf('%%%02x', ord($1))/ge;

	return "$self->{dir}/data/$enc";
}

# offline messages stored for a user (mod_offline, internal storage):
# ({ from, to, type, id, body, stamp }, ...) in arrival order

sub offline {
	my ($self, $user, $domain) = @_;

	my $file = $self->_data_dir($domain // $self->domain())
		. "/offline/$user.list";
	my $text = Test::XMPP::Servers::_slurp($file);

	my @m;
	pos($text) = 0;

	# the file is a sequence of item({ ... }); with a serialised stanza
	while ($text =~ /\G\s*item\(/gc) {
		# the last item may be half written
		my $st = eval { _lua_value(\$text) } or last;
		$text =~ /\G\s*\);/gc or last;

		next unless ref $st eq 'HASH' && ($st->{name} // '') eq 'message';

		my %m = map { $_ => $st->{attr}{$_} }
			grep { defined $st->{attr}{$_} } qw/ from to type id stamp /;

		for my $c (@{$st->{_}}) {
			next unless ref $c eq 'HASH' && ($c->{name} // '') eq 'body';
			$m{body} = join('', grep { !ref } @{$c->{_}});
			last;
		}

		push @m, \%m;
	}

	return @m;
}

# a Lua table constructor as util.serialization writes it: strings,
# numbers, booleans, nested tables; positional values go into {_}

sub _lua_value {
	my ($r) = @_;

	$$r =~ /\G\s*/gc;

	if ($$r =~ /\G"((?:[^"\\]|\\.)*)"/gcs) {
		return _lua_unescape($1);
	}

	if ($$r =~ /\G(-?[\d.]+(?:[eE][-+]?\d+)?)/gc) {
		return $1 + 0;
	}

	if ($$r =~ /\G(true|false|nil)\b/gc) {
		return $1 eq 'true' ? 1 : $1 eq 'false' ? 0 : undef;
	}

	if ($$r =~ /\G\{/gc) {
		my %t = (_ => []);

		while (1) {
			$$r =~ /\G\s*/gc;
			last if $$r =~ /\G\}/gc;

			if ($$r =~ /\G\[/gc) {
				my $k = _lua_value($r);
				$$r =~ /\G\s*\]\s*=/gc or die "lua: = expected\n";
				$t{$k} = _lua_value($r);

			} elsif ($$r =~ /\G([A-Za-z_]\w*)\s*=/gc) {
				my $k = $1;
				$t{$k} = _lua_value($r);

			} else {
				push @{$t{_}}, _lua_value($r);
			}

			$$r =~ /\G\s*[;,]?/gc;
		}

		return \%t;
	}

	die "lua: cannot parse at " . (pos($$r) // 0) . "\n";
}

sub _lua_unescape {
	my ($s) = @_;
	$s =~ s/\\(\d{1,3}|.)/
		$1 eq 'n' ? "\n" : $1 eq 't' ? "\t" : $1 eq 'r' ? "\r"
		: $1 =~ m!^\d! ? chr($1) : $1
	/gse;
	return $s;
}

# wait until COUNT offline messages are stored for the user

sub wait_offline {
	my ($self, $user, $count, $secs, $domain) = @_;

	$count //= 1;
	my $deadline = Time::HiRes::time()
		+ Test::XMPP::Servers::_timeout($secs // 10);

	while (1) {
		my @m = $self->offline($user, $domain);
		return @m if @m >= $count;
		return @m if Time::HiRes::time() > $deadline;
		Time::HiRes::sleep(0.1);
	}
}

###############################################################################

package Test::XMPP::Servers::Ejabberd;

use parent -norequire, 'Test::XMPP::Servers::Process';

use Carp qw/ croak /;
use POSIX qw/ WNOHANG /;
use Time::HiRes qw/ time sleep /;

sub domain { $_[0]{domains}[0] }
sub domains { @{$_[0]{domains}} }
sub s2s_port { $_[0]{port} }
sub c2s_port { $_[0]{c2s_port} }
sub c2s { "127.0.0.1:$_[0]{c2s_port}" }
sub s2s { "127.0.0.1:$_[0]{port}" }
sub config { $_[0]{config} }
sub node { $_[0]{node} }

sub _configure {
	my ($self) = @_;

	my %a = %{$self->{args}};
	my $dir = $self->{dir};
	my $level = $a{log_level} // 'debug';
	my $tls = $a{tls};

	my $hosts = join('', map { "  - \"$_\"\n" } @{$self->{domains}});
	my $starttls = $tls ? $tls->{starttls} // 'optional' : 'false';
	my $certfiles = $tls
		? "certfiles:\n  - \"$tls->{certfile}\"\n" : '';
	$certfiles .= "s2s_cafile: \"$tls->{cafile}\"\n"
		if $tls && $tls->{cafile};
	my $c2s_tls = $tls ? "    starttls: true\n" : '';
	my $modules = $a{modules} // '';
	my $extra = $a{extra} // '';

	Test::XMPP::Servers::_write($self->{config}, <<"YAML");
# ejabberd '$self->{name}', written by Test::XMPP::Servers
loglevel: $level
log_rotate_count: 0
hosts:
$hosts$certfiles
listen:
  -
    port: $self->{port}
    ip: "127.0.0.1"
    module: ejabberd_s2s_in
  -
    port: $self->{c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: false
$c2s_tls
# plaintext on loopback: dialback without TLS, PLAIN for the clients
s2s_use_starttls: $starttls
auth_method: internal
auth_password_format: plain

acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  s2s:
    allow: all
s2s_access: s2s
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"

modules:
  mod_admin_extra: {}
  mod_disco: {}
  mod_offline: {}
  mod_ping: {}
  mod_roster: {}
  mod_s2s_dialback: {}
$modules
$extra
YAML

	# the Erlang resolver: the test DNS only, and "localhost" for the
	# node name (without it the ctl node cannot reach the server); the
	# system's resolv.conf must go first, or its nameservers are asked
	# before ours (and answer NXDOMAIN)
	Test::XMPP::Servers::_write("$dir/inetrc", join('',
		"{resolv_conf, \"\"}.\n",
		"{hosts_file, \"\"}.\n",
		"{lookup, [file, dns]}.\n",
		"{host, {127,0,0,1}, [\"localhost\"]}.\n",
		(defined $self->{dns}
			? "{nameserver, {127,0,0,1}, $self->{dns}}.\n" : ''),
		"{timeout, 2000}.\n",
		"{retry, 2}.\n"));

	return $self;
}

sub _env {
	my ($self) = @_;

	my $dir = $self->{dir};

	return {
		EJABBERD_CONFIG_PATH => $self->{config},
		EJABBERD_LOG_PATH => $self->{log},
		ERL_INETRC => "$dir/inetrc",
		ERL_LIBS => Test::XMPP::Servers::_ejabberd_libs()
			// '/usr/lib/x86_64-linux-gnu',
		ERL_CRASH_DUMP => "$dir/logs/erl_crash.dump",
		ERL_CRASH_DUMP_BYTES => 0,
		HOME => $dir,
	};
}

sub _erl {
	my ($self, $node, @args) = @_;

	return (Test::XMPP::Servers::_which('erl'),
		'-sname', $node, '-setcookie', $self->{cookie},
		'-erl_epmd_port', $self->{dist_port}, '-start_epmd', 'false',
		@args);
}

sub start {
	my ($self) = @_;

	my $s = $self->{servers};
	my $dir = $self->{dir};

	Test::XMPP::Servers::release($self->{port}, $self->{c2s_port},
		$self->{dist_port});

	$self->{pid} = $s->_spawn(
		cmd => [ $self->_erl($self->{node},
			'-kernel', 'inet_dist_use_interface', '{127,0,0,1}',
			'-noinput', '+K', 'true',
			'-mnesia', 'dir', "\"$dir/spool\"",
			'-s', 'ejabberd') ],
		env => $self->_env(), cwd => $dir,
		stdout => $self->{stderr});
	$self->{status} = undef;
	Test::XMPP::Servers::_track($self);

	$s->_wait_ready($self, Test::XMPP::Servers::_timeout(30), sub {
		Test::XMPP::Servers::_port_open($self->{port})
			&& Test::XMPP::Servers::_port_open($self->{c2s_port});
	}, "listening on s2s $self->{port} and c2s $self->{c2s_port}");

	$s->_note("ejabberd '$self->{name}' (@{$self->{domains}}): "
		. "s2s 127.0.0.1:$self->{port}, c2s 127.0.0.1:$self->{c2s_port}");

	return $self;
}

sub restart {
	my ($self) = @_;
	$self->stop();
	return $self->start();
}

# an ejabberdctl command through a hidden node: (exit status, output)

sub ctl {
	my ($self, @cmd) = @_;

	my $dir = $self->{dir};
	my $out = "$dir/logs/ctl.out";
	unlink($out);

	my $n = ++$self->{ctl};
	my $pid = $self->{servers}->_spawn(
		cmd => [ $self->_erl("ctl$n-$$\@localhost",
			'-hidden', '-noinput', '-dist_listen', 'false',
			'-s', 'ejabberd_ctl',
			'-extra', $self->{node}, @cmd) ],
		env => $self->_env(), cwd => $dir, stdout => $out);

	my $deadline = time() + Test::XMPP::Servers::_timeout(30);
	my $status;

	while (1) {
		if (waitpid($pid, WNOHANG) == $pid) {
			$status = $? >> 8;
			last;
		}
		if (time() > $deadline) {
			kill('KILL', $pid);
			waitpid($pid, 0);
			$status = -1;
			last;
		}
		sleep(0.05);
	}

	return ($status, Test::XMPP::Servers::_slurp($out));
}

sub register {
	my ($self, $user, $password, $domain) = @_;

	my $deadline = time() + Test::XMPP::Servers::_timeout(30);
	my ($st, $out);

	# ejabberd opens its ports before mnesia has made every table: a
	# command that comes too early finds no "passwd" table yet

	while (1) {
		($st, $out) = $self->ctl('register', $user,
			$domain // $self->domain(), $password);

		last unless $st && $out =~ /no_exists|not_ready/
			&& time() < $deadline;

		sleep(0.5);
	}

	croak "ejabberd register $user failed (status $st): $out" if $st;

	return $self;
}

# messages stored offline for the user (mod_offline, mnesia), or undef

sub offline_count {
	my ($self, $user, $domain) = @_;

	my ($st, $out) = $self->ctl('get_offline_count', $user,
		$domain // $self->domain());

	return $st ? undef : $out =~ /(\d+)/ ? $1 : undef;
}

# wait until COUNT offline messages are stored for the user; the count

sub wait_offline {
	my ($self, $user, $count, $secs, $domain) = @_;

	$count //= 1;
	my $deadline = time() + Test::XMPP::Servers::_timeout($secs // 10);

	while (1) {
		my $n = $self->offline_count($user, $domain) // 0;
		return $n if $n >= $count || time() > $deadline;
		sleep(0.2);
	}
}

###############################################################################

package Test::XMPP::Servers::Receiver;

use parent -norequire, 'Test::XMPP::Servers::Process';

use Time::HiRes qw/ time sleep /;

sub events {
	my ($self) = @_;
	return Test::XMPP::Servers::_events($self->{out});
}

sub messages {
	my ($self) = @_;
	return grep { $_->{event} eq 'message' } $self->events();
}

# logged in (initial presence sent)?

sub ready {
	my ($self, $secs) = @_;

	my $deadline = time() + ($secs // 10);

	while (time() < $deadline) {
		my @e = $self->events();
		return 1 if grep { $_->{event} eq 'session' } @e;
		die "receiver $self->{name}: "
			. join(' ', map { $_->{event} } @e) . "\n"
			. Test::XMPP::Servers::_slurp($self->{stderr})
			if grep { $_->{event} =~ /^(failed_auth|connection_failed)$/ }
				@e;
		last unless $self->alive();
		sleep(0.05);
	}

	die "receiver $self->{name} did not log in:\n"
		. Test::XMPP::Servers::_slurp($self->{out})
		. Test::XMPP::Servers::_slurp($self->{stderr});
}

# wait for COUNT messages in all; returns the messages so far

sub wait_for {
	my ($self, $count, $secs) = @_;

	my $deadline = time() + Test::XMPP::Servers::_timeout($secs // 10);

	while (1) {
		my @m = $self->messages();
		return @m if @m >= $count || time() > $deadline
			|| !$self->alive();
		sleep(0.05);
	}
}

1;
