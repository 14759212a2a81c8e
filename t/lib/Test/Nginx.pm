package Test::Nginx;

# Small nginx test harness for ngx_xmpp_federation_module.
# Same calling conventions as nginx-tests' Test::Nginx, own implementation.

use warnings;
use strict;

use base qw/ Exporter /;

our @EXPORT = qw/ port log_in log_out /;
our @EXPORT_OK = qw/ scaled /;

use File::Temp qw/ tempdir /;
use IO::Socket::INET;
use POSIX qw/ WNOHANG /;
use Scalar::Util qw/ weaken /;
use Time::HiRes qw/ time sleep /;
use Test::More ();

our $NGINX = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';

my %ports;	# logical port => { port => real port, lock => socket }
my %live;	# weak refs to harness objects, finished from END

###############################################################################

sub new {
	# a peer closing first must not kill the test and leave its daemons
	$SIG{PIPE} = 'IGNORE';

	my ($class) = @_;

	Test::More::BAIL_OUT("nginx binary $NGINX not executable")
		unless -x $NGINX;

	my $dir = tempdir('nginx-test-XXXXXXXXXX', TMPDIR => 1,
		CLEANUP => !$ENV{TEST_NGINX_LEAVE});

	# workers run as nobody when started by root; sanitizer reports
	# are written by workers, so the directory must be writable then
	chmod(($> == 0 && $ENV{TEST_NGINX_SANITIZE}) ? 0777 : 0755, $dir);

	my $self = bless {
		_pid => $$,
		_testdir => $dir,
		_daemons => [],
		_globals_in => {},
	}, $class;

	$live{"$self"} = $self;
	weaken($live{"$self"});

	return $self;
}

sub testdir {
	my ($self) = @_;
	return $self->{_testdir};
}

# timeouts are multiplied by TEST_NGINX_TIMEOUT (e.g. 5 under sanitizers)

sub scaled {
	my ($secs) = @_;
	return $secs * ($ENV{TEST_NGINX_TIMEOUT} || 1);
}

###############################################################################

# features

sub nginx_v {
	my ($self) = @_;
	$self->{_nginx_v} = `$NGINX -V 2>&1` // ''
		unless defined $self->{_nginx_v};
	return $self->{_nginx_v};
}

sub modules_path {
	my ($self) = @_;
	return $1 if $self->nginx_v() =~ /--modules-path=(\S+)/;
	return '/usr/lib/nginx/modules';
}

sub has_module {
	my ($self, $feature) = @_;

	my $v = $self->nginx_v();
	my $g = $ENV{TEST_NGINX_GLOBALS} // '';

	if ($feature eq 'stream') {
		return 1 if $v =~ /--with-stream(?:\s|$)/;
		return $v =~ /--with-stream=dynamic/
			&& ($g =~ /ngx_stream_module/
				|| -e $self->modules_path()
					. '/ngx_stream_module.so');
	}

	if ($feature eq 'stream_ssl') {
		return $self->has_module('stream')
			&& $v =~ /--with-stream_ssl_module/;
	}

	if ($feature eq 'xmpp_federation') {
		return $g =~ /ngx_stream_xmpp_federation_module/
			|| $v =~ /xmpp_federation/;
	}

	if ($feature eq 'socket_ssl') {
		return eval { require IO::Socket::SSL; 1 };
	}

	return $v =~ /\Q$feature\E/;
}

sub has {
	my ($self, @features) = @_;

	for my $f (@features) {
		Test::More::plan(skip_all => "no $f available")
			unless $self->has_module($f);
	}

	return $self;
}

sub has_daemon {
	my ($self, $prog) = @_;

	my $found;
	if ($prog =~ m!/!) {
		$found = -f $prog && -x _;
	} else {
		$found = grep { -f "$_/$prog" && -x _ }
			split(/:/, $ENV{PATH} // '');
	}

	Test::More::plan(skip_all => "$prog not found") unless $found;

	return $self;
}

sub plan {
	my ($self, $n) = @_;

	# two automatic checks at the end: alerts, sanitizer reports
	Test::More::plan(tests => $n + 2);
	$self->{_planned} = 1;

	return $self;
}

###############################################################################

# files

sub read_file {
	my ($self, $name) = @_;

	open(my $fh, '<', "$self->{_testdir}/$name")
		or die "Can't open $name: $!\n";
	binmode $fh;
	local $/;
	my $data = <$fh>;
	close $fh;

	return $data // '';
}

sub write_file {
	my ($self, $name, $content) = @_;

	open(my $fh, '>', "$self->{_testdir}/$name")
		or die "Can't create $name: $!\n";
	binmode $fh;
	print $fh $content;
	close $fh or die "Can't write $name: $!\n";

	return $self;
}

sub write_file_expand {
	my ($self, $name, $content) = @_;

	my $dir = $self->{_testdir};

	$self->{_globals_in}{$name} = $content =~ /%%TEST_GLOBALS%%/ ? 1 : 0;

	$content =~ s/%%TEST_GLOBALS%%/$self->test_globals()/ge;
	$content =~ s/%%TEST_GLOBALS_STREAM%%/$ENV{TEST_NGINX_GLOBALS_STREAM} \/\/ ''/ge;
	$content =~ s/%%TESTDIR%%/$dir/g;
	$content =~ s/%%PORT_(\d+)_UDP%%/port($1, udp => 1)/ge;
	$content =~ s/%%PORT_(\d+)%%/port($1)/ge;

	return $self->write_file($name, $content);
}

sub test_globals {
	my ($self) = @_;

	my $dir = $self->{_testdir};
	my $g = $ENV{TEST_NGINX_GLOBALS} // '';
	my $s = "pid $dir/nginx.pid;\nerror_log $dir/error.log debug;\n";

	# a dynamic stream module must be loaded before modules using it
	if ($self->nginx_v() =~ /--with-stream=dynamic/
		&& $g !~ /ngx_stream_module/)
	{
		my $so = $self->modules_path() . '/ngx_stream_module.so';
		$s .= "load_module $so;\n" if -e $so;
	}

	return $s . $g . "\n";
}

###############################################################################

# ports

sub _bind {
	my ($proto, $port, $listen) = @_;

	return IO::Socket::INET->new(
		Proto => $proto,
		LocalAddr => '127.0.0.1',
		LocalPort => $port,
		($listen ? (Listen => 1) : ()),
	);
}

sub port {
	my ($num, %opts) = @_;

	return $ports{$num}{port} if $ports{$num};

	my ($proto, $other) = $opts{udp} ? ('udp', 'tcp') : ('tcp', 'udp');

	for (1 .. 100) {
		my $probe = _bind($proto, 0, $proto eq 'tcp') or next;
		my $port = $probe->sockport();

		next if grep { $_->{port} == $port } values %ports;

		# the same number in the other protocol is held open, so that
		# other test processes using this harness don't pick it too
		my $lock = _bind($other, $port, 0) or next;

		$ports{$num} = { port => $port, lock => $lock };
		return $port;
	}

	die "Can't find a free port for $num\n";
}

###############################################################################

# nginx control

sub _nginx_args {
	my ($self, $conf) = @_;

	my $dir = $self->{_testdir};
	my @args = ('-p', "$dir/", '-c', $conf, '-e', "$dir/error.log");

	# a config written without %%TEST_GLOBALS%% still gets pid and log
	push @args, '-g', "pid $dir/nginx.pid; error_log $dir/error.log debug;"
		unless $self->{_globals_in}{$conf};

	return @args;
}

sub _nginx_env {
	my ($self) = @_;

	my $dir = $self->{_testdir};
	my %env;

	$env{LD_PRELOAD} = $ENV{TEST_NGINX_PRELOAD}
		if $ENV{TEST_NGINX_PRELOAD};

	if ($ENV{TEST_NGINX_SANITIZE}) {
		$env{ASAN_OPTIONS} = "log_path=$dir/asan:detect_leaks=0"
			. ":abort_on_error=0:symbolize=1"
			. ($ENV{ASAN_OPTIONS} ? ":$ENV{ASAN_OPTIONS}" : '');
		$env{UBSAN_OPTIONS} = "log_path=$dir/ubsan:print_stacktrace=1"
			. ":halt_on_error=0"
			. ($ENV{UBSAN_OPTIONS} ? ":$ENV{UBSAN_OPTIONS}" : '');
	}

	return %env;
}

# fork and exec nginx with its environment, output into $out

sub _spawn_nginx {
	my ($self, $out, @args) = @_;

	my %env = $self->_nginx_env();

	my $pid = fork();
	die "Can't fork: $!\n" unless defined $pid;

	if ($pid == 0) {
		@ENV{keys %env} = values %env;
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>', $out) or POSIX::_exit(126);
		open(STDERR, '>&', \*STDOUT) or POSIX::_exit(126);
		{ no warnings 'exec'; exec { $NGINX } $NGINX, @args; }
		print STDERR "Can't exec $NGINX: $!\n";
		POSIX::_exit(127);
	}

	return $pid;
}

sub _log_size {
	my ($self) = @_;
	return -s "$self->{_testdir}/error.log" || 0;
}

sub _log_since {
	my ($self, $offset) = @_;
	my $log = eval { $self->read_file('error.log') } // '';
	return substr($log, $offset < length $log ? $offset : length $log);
}

sub run {
	my ($self, $conf) = @_;

	$conf //= 'nginx.conf';

	die "nginx already running\n" if $self->{_master};

	my $dir = $self->{_testdir};
	my $offset = $self->_log_size();

	unlink("$dir/nginx.pid");

	my $child = $self->_spawn_nginx("$dir/nginx.stderr",
		$self->_nginx_args($conf));

	# with daemon on the launcher exits with 0 and the daemon writes
	# the pid file; with daemon off the launcher is the master itself

	my ($status, $master);
	my $deadline = time() + scaled(10);

	while (time() < $deadline) {
		if (!defined $status && waitpid($child, WNOHANG) == $child) {
			$status = $?;
		}

		if (-s "$dir/nginx.pid") {
			my $p = $self->read_file('nginx.pid');
			if ($p =~ /^(\d+)\n/) {
				$master = $1;
				last;
			}
		}

		last if defined $status && $status != 0;
		sleep(0.02);
	}

	if (!$master) {
		if (!defined $status) {
			kill('KILL', $child);
			waitpid($child, 0);
		}

		my $err = eval { $self->read_file('nginx.stderr') } // '';
		die "nginx failed to start"
			. (defined $status ? " (status $status)" : ' (timeout)')
			. ":\n" . $err . $self->_log_since($offset);
	}

	$self->{_master} = $master;
	$self->{_child} = defined $status ? undef : $child;
	$self->{_started} = 1;

	return $self;
}

sub try_run {
	my ($self, $message) = @_;

	eval { $self->run(); };
	return $self unless $@;

	Test::More::diag($@) if $ENV{TEST_NGINX_VERBOSE};

	my $tb = Test::More->builder();

	if (!$tb->has_plan()) {
		Test::More::plan(skip_all => $message);
	}

	# already planned: skip what is left, end checks still follow
	my $left = $tb->expected_tests() - $tb->current_test()
		- ($self->{_planned} ? 2 : 0);
	$tb->skip($message) for 1 .. $left;
	exit(0);
}

sub test_config {
	my ($self, $conf) = @_;

	$conf //= 'nginx.conf';

	my $out = "$self->{_testdir}/nginx-t.out";
	my $pid = $self->_spawn_nginx($out, '-t', $self->_nginx_args($conf));

	my $deadline = time() + scaled(20);
	my $done;

	while (!($done = waitpid($pid, WNOHANG) == $pid)
		&& time() < $deadline)
	{
		sleep(0.02);
	}

	if (!$done) {
		kill('KILL', $pid);
		waitpid($pid, 0);
	}

	my $ok = $done && $? == 0;
	my $text = eval { $self->read_file('nginx-t.out') } // '';
	unlink($out);

	return ($ok ? 1 : 0, $text);
}

# process state without being its parent: gone, or a zombie

sub _alive {
	my ($pid) = @_;

	my $r = waitpid($pid, WNOHANG);
	return 0 if $r == $pid;
	return 0 unless kill(0, $pid);

	if (open(my $fh, '<', "/proc/$pid/stat")) {
		my $stat = <$fh> // '';
		close $fh;
		return 0 if $stat =~ /\)\s+[ZX]\s/;
	}

	return 1;
}

sub _wait_gone {
	my ($pid, $secs) = @_;

	my $deadline = time() + $secs;
	while (time() < $deadline) {
		return 1 unless _alive($pid);
		sleep(0.02);
	}

	return !_alive($pid);
}

sub stop {
	my ($self) = @_;

	my $pid = delete $self->{_master} or return $self;
	local $?;

	kill('TERM', $pid);

	if (!_wait_gone($pid, scaled(10))) {
		kill('KILL', $pid);
		_wait_gone($pid, 5);
	}

	if (my $child = delete $self->{_child}) {
		waitpid($child, 0) if $child != $pid;
	}

	return $self;
}

sub reload {
	my ($self) = @_;

	my $pid = $self->{_master} or return $self;
	my $offset = $self->_log_size();

	kill('HUP', $pid);

	# new workers are logged by the master; an error ends waiting too
	my $deadline = time() + scaled(5);
	while (time() < $deadline) {
		my $log = $self->_log_since($offset);
		last if $log =~ /start worker process \d+|\[emerg\]/;
		sleep(0.05);
	}

	return $self;
}

###############################################################################

# helper processes

sub run_daemon {
	my ($self, $code, @args) = @_;

	my $pid = fork();
	die "Can't fork: $!\n" unless defined $pid;

	if ($pid == 0) {
		if (ref $code eq 'CODE') {
			my $ok = eval { $code->(@args); 1 };
			print STDERR "daemon died: $@" unless $ok;
			POSIX::_exit($ok ? 0 : 1);
		}

		{ no warnings 'exec'; exec { $code } $code, @args; }
		print STDERR "Can't exec $code: $!\n";
		POSIX::_exit(127);
	}

	push @{$self->{_daemons}}, $pid;

	return $self;
}

sub stop_daemons {
	my ($self) = @_;
	local $?;

	while (my $pid = shift @{$self->{_daemons}}) {
		kill('TERM', $pid);
		next if _wait_gone($pid, 3);
		kill('KILL', $pid);
		waitpid($pid, 0);
	}

	return $self;
}

sub waitforsocket {
	my ($self, $peer, $secs) = @_;

	my $deadline = time() + ($secs // scaled(5));
	while (1) {
		my $s = IO::Socket::INET->new(Proto => 'tcp',
			PeerAddr => $peer, Timeout => 1);
		return 1 if $s;
		return 0 if time() >= $deadline;
		sleep(0.05);
	}
}

sub waitforfile {
	my ($self, $path, $secs) = @_;

	my $deadline = time() + ($secs // scaled(5));
	while (1) {
		return 1 if -e $path;
		return 0 if time() >= $deadline;
		sleep(0.05);
	}
}

###############################################################################

# shutdown and the automatic end checks

sub _finish {
	my ($self) = @_;

	return if $self->{_pid} != $$ || $self->{_finished}++;

	local ($?, $!, $@);

	$self->stop();
	$self->stop_daemons();

	my $dir = $self->{_testdir};
	my $log = eval { $self->read_file('error.log') } // '';
	my $tb = Test::More->builder();

	if ($self->{_planned} && $tb->expected_tests()) {
		my @alerts = $log =~ /^.*\[(?:alert|crit)\].*$/mg;
		Test::More::is(join("\n", @alerts), '', 'no alerts');

		my @reports;
		if ($ENV{TEST_NGINX_SANITIZE}) {
			for my $f (sort glob("$dir/asan.* $dir/ubsan.*")) {
				open(my $fh, '<', $f) or next;
				local $/;
				push @reports, "$f:\n" . (<$fh> // '');
			}
			my @lines = $log =~ /^.*(?:runtime error:|AddressSanitizer|LeakSanitizer).*$/mg;
			push @reports, "error.log:\n" . join("\n", @lines)
				if @lines;
		}
		Test::More::ok(!@reports, 'no sanitizer errors')
			or Test::More::diag(join("\n", @reports));
	}

	Test::More::diag("error.log:\n$log")
		if $ENV{TEST_NGINX_VERBOSE} && length $log;
	Test::More::diag("test directory kept: $dir")
		if $ENV{TEST_NGINX_LEAVE};
}

sub DESTROY {
	my ($self) = @_;
	$self->_finish();
}

# objects still referenced at exit (globals, closures) are finished here,
# before Test::More's own END block checks the plan

END {
	for my $t (values %live) {
		$t->_finish() if defined $t;
	}
}

###############################################################################

# logging, with TEST_NGINX_VERBOSE

sub _log {
	my ($prefix, $msg) = @_;

	return unless $ENV{TEST_NGINX_VERBOSE};

	$msg //= '(undef)';
	$msg = substr($msg, 0, 4096) . '...(' . length($msg) . ' bytes)'
		if length($msg) > 4096;
	$msg =~ s/([^\x20-\x7e\n])/sprintf('\\x%02x', ord($1))/ge;

	Test::More::note(join("\n", map { "$prefix $_" } split(/\n/, $msg)));
}

sub log_out { _log('>>', @_); }
sub log_in { _log('<<', @_); }

1;
