package Test::Nginx::Stream;

# TCP client for stream tests: stream(PeerAddr => ...) or stream('host:port').
# Same calling conventions as nginx-tests' Test::Nginx::Stream.

use warnings;
use strict;

use base qw/ Exporter /;

our @EXPORT = qw/ stream /;
our @EXPORT_OK = qw/ stream sock_read sock_write /;

use Errno qw/ EAGAIN EWOULDBLOCK EINTR /;
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw/ time /;

use Test::Nginx qw/ log_in log_out scaled /;

###############################################################################

# low level i/o on a non-blocking socket, plain or IO::Socket::SSL

sub _again {
	return $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
}

# one chunk: data, '' on EOF or reset, undef on timeout

sub sock_read {
	my ($s, $timeout) = @_;

	my $deadline = time() + $timeout;
	my $ssl = $s->isa('IO::Socket::SSL');

	while (1) {
		my $ready = $ssl && $s->pending();

		if (!$ready) {
			my $left = $deadline - time();
			return undef if $left <= 0;
			$ready = IO::Select->new($s)->can_read($left);
			next if !$ready && $! == EINTR;
			return undef unless $ready;
		}

		my $buf;
		my $n = $s->sysread($buf, 16384);

		return $buf if $n;
		return '' if defined $n;
		next if _again();

		# an error, ECONNRESET mostly, reads as the end
		return '';
	}
}

# everything or nothing: true when all data was written in time

sub sock_write {
	my ($s, $data, $timeout) = @_;

	local $SIG{PIPE} = 'IGNORE';

	my $deadline = time() + $timeout;
	my $ssl = $s->isa('IO::Socket::SSL');

	while (length $data) {
		my $n = $s->syswrite($data);

		if ($n) {
			substr($data, 0, $n, '');
			next;
		}

		return 0 if defined $n || !_again();

		my $left = $deadline - time();
		return 0 if $left <= 0;

		# TLS may need to read before it can write
		my $sel = IO::Select->new($s);
		IO::Select->select($ssl ? $sel : undef, $sel, undef, $left);
	}

	return 1;
}

###############################################################################

sub stream {
	return Test::Nginx::Stream->new(@_);
}

sub new {
	my $class = shift;

	unshift(@_, 'PeerAddr') if @_ == 1;
	my %args = @_;

	my $self = bless {}, $class;
	my $timeout = scaled(delete $args{timeout} // 3);
	my $ssl = delete $args{SSL};
	my %ssl_opts = map { $_ => delete $args{$_} } grep { /^SSL_/ } keys %args;

	my $s = IO::Socket::INET->new(
		Proto => 'tcp',
		Timeout => $timeout,
		%args
	);

	if (!$s) {
		log_in("connect failed: $@");
		return $self;
	}

	if ($ssl) {
		require IO::Socket::SSL;
		IO::Socket::SSL->start_SSL($s,
			SSL_verify_mode => IO::Socket::SSL::SSL_VERIFY_NONE(),
			Timeout => $timeout,
			%ssl_opts
		) or do {
			no warnings 'once';
			log_in("ssl failed: $IO::Socket::SSL::SSL_ERROR");
			return $self;
		};
	}

	$s->blocking(0);
	$self->{_socket} = $s;

	return $self;
}

sub DESTROY {
	my ($self) = @_;
	$self->close();
}

sub write {
	my ($self, $data, %opts) = @_;

	my $s = $self->{_socket} or return 0;
	my $t = scaled($opts{write_timeout} // $opts{timeout} // 3);

	log_out($data);
	return sock_write($s, $data, $t);
}

# what is available: data, '' on EOF, undef on timeout

sub read {
	my ($self, %opts) = @_;

	my $s = $self->{_socket} or return '';
	my $t = scaled($opts{read_timeout} // $opts{timeout} // 3);

	my $buf = sock_read($s, $t);
	log_in(!defined $buf ? '(timeout)' : length $buf ? $buf : '(eof)');

	return $buf;
}

# write, then read until EOF / timeout, or at most 'read' chunks,
# or 'length' bytes

sub io {
	my ($self, $data, %opts) = @_;

	$self->write($data, %opts) if defined $data && length $data;

	my $read = $opts{read};
	my $out = '';

	while (!defined $read || $read-- > 0) {
		my $buf = $self->read(%opts);
		last unless defined $buf && length $buf;

		$out .= $buf;
		last if defined $opts{length} && length($out) >= $opts{length};
	}

	return $out;
}

sub socket {
	my ($self) = @_;
	return $self->{_socket};
}

sub sockhost {
	my ($self) = @_;
	return $self->{_socket} ? $self->{_socket}->sockhost() : undef;
}

sub sockport {
	my ($self) = @_;
	return $self->{_socket} ? $self->{_socket}->sockport() : undef;
}

sub close {
	my ($self) = @_;

	my $s = delete $self->{_socket} or return;
	$s->close();
}

1;
