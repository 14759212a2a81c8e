package Test::Nginx::XMPP;

# Scripted XMPP server-to-server peer for dialogue tests:
#
#   my $x = xmpp(PeerAddr => '127.0.0.1:' . port(8080));
#   $x->open_stream(to => 'contoso.example', from => 'fabrikam.example');
#   my $hdr = $x->read_header();
#   my $features = $x->read_element('stream:features');

use warnings;
use strict;

use base qw/ Exporter /;

our @EXPORT = qw/ xmpp /;
our @EXPORT_OK = qw/ xmpp /;

use IO::Socket::INET;
use Time::HiRes qw/ time sleep /;

use Test::Nginx qw/ log_in log_out scaled /;
use Test::Nginx::Stream qw/ sock_read sock_write /;

our $STREAM_NS = 'http://etherx.jabber.org/streams';
our $STREAMS_ERR_NS = 'urn:ietf:params:xml:ns:xmpp-streams';

# attributes of a start tag, quoted values may hold '>'
my $ATTRS = qr/(?:\s+[^\s=\/>]+\s*=\s*(?:'[^']*'|"[^"]*"))*\s*/;

###############################################################################

sub xmpp {
	return Test::Nginx::XMPP->new(@_);
}

sub new {
	my $class = shift;

	unshift(@_, 'PeerAddr') if @_ == 1;
	my %args = @_;

	my $self = bless {
		_in => '',	# received, not consumed yet
		_all => '',	# everything received
		_eof => 0,
	}, $class;

	my $timeout = scaled(delete $args{timeout} // 3);

	my $s = IO::Socket::INET->new(
		Proto => 'tcp',
		Timeout => $timeout,
		%args
	);

	if (!$s) {
		$self->{error} = "connect failed: $@";
		log_in($self->{error});
		$self->{_eof} = 1;
		return $self;
	}

	$s->blocking(0);
	$self->{_socket} = $s;

	return $self;
}

sub DESTROY {
	my ($self) = @_;
	$self->close();
}

sub connected {
	my ($self) = @_;
	return defined $self->{_socket};
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

###############################################################################

# sending

sub send {
	my ($self, $data, %opts) = @_;

	my $s = $self->{_socket} or return 0;

	log_out($data);
	return sock_write($s, $data, scaled($opts{timeout} // 3));
}

# one byte at a time, $delay seconds apart

sub send_slowly {
	my ($self, $data, $delay) = @_;

	my $s = $self->{_socket} or return 0;

	$delay //= 0.01;
	log_out("(slowly) $data");

	for my $c (split(//, $data)) {
		sock_write($s, $c, scaled(3)) or return 0;
		sleep($delay) if $delay > 0;
	}

	return 1;
}

# opening stream header; a key given as undef leaves the attribute out

sub header {
	my ($self, %args) = @_;

	my %d = (
		version => '1.0',
		ns => 'jabber:server',
		stream_ns => $STREAM_NS,
		db => 0,
		xmldecl => 1,
	);
	%args = (%d, %args);

	my $h = $args{xmldecl} ? "<?xml version='1.0'?>" : '';
	$h .= '<stream:stream';
	$h .= " xmlns='$args{ns}'" if defined $args{ns};
	$h .= " xmlns:stream='$args{stream_ns}'" if defined $args{stream_ns};
	$h .= " xmlns:db='jabber:server:dialback'" if $args{db};

	for my $a (qw/ from to id version /) {
		$h .= " $a='$args{$a}'" if defined $args{$a};
	}

	$h .= " xml:lang='$args{lang}'" if defined $args{lang};
	$h .= ' ' . $args{extra} if defined $args{extra};

	return $h . '>';
}

sub open_stream {
	my ($self, %args) = @_;
	return $self->send($self->header(%args));
}

###############################################################################

# receiving

# one chunk into the buffer: 1 on data, 0 on EOF, undef on timeout

sub _fill {
	my ($self, $deadline) = @_;

	return 0 if $self->{_eof};

	my $s = $self->{_socket};
	if (!$s) {
		$self->{_eof} = 1;
		return 0;
	}

	my $left = $deadline - time();
	my $buf = sock_read($s, $left > 0 ? $left : 0);

	return undef unless defined $buf;

	if ($buf eq '') {
		log_in('(closed)');
		$self->{_eof} = 1;
		return 0;
	}

	log_in($buf);
	$self->{_in} .= $buf;
	$self->{_all} .= $buf;

	return 1;
}

# consume up to the end of the first match of $re:
# (consumed text, offset of the match in it), or () on timeout/EOF

sub _read_match {
	my ($self, $re, %opts) = @_;

	my $deadline = time() + scaled($opts{timeout} // 3);

	while (1) {
		if ($self->{_in} =~ $re) {
			my ($start, $end) = ($-[0], $+[0]);
			return (substr($self->{_in}, 0, $end, ''), $start);
		}

		return () unless $self->_fill($deadline);
	}
}

sub read_until {
	my ($self, $re, %opts) = @_;

	my ($text) = $self->_read_match($re, %opts);
	return $text;
}

sub read_element {
	my ($self, $name, %opts) = @_;

	my $re = qr/<\Q$name\E$ATTRS(?:\/>|>.*?<\/\Q$name\E\s*>)/s;

	my ($text, $start) = $self->_read_match($re, %opts);
	return undef unless defined $text;

	return substr($text, $start);
}

sub read_header {
	my ($self, %opts) = @_;

	my $re = qr/(?:<\?xml[^>]*\?>\s*)?<stream:stream$ATTRS>/s;

	my ($text, $start) = $self->_read_match($re, %opts);
	return undef unless defined $text;

	return substr($text, $start);
}

# condition of a stream error, e.g. 'host-unknown'; '' if none given

sub stream_error {
	my ($self, %opts) = @_;

	my $el = $self->read_element('stream:error', %opts);
	return undef unless defined $el;

	while ($el =~ /<(?:[\w.-]+:)?([\w.-]+)$ATTRS\/?>/g) {
		next if $1 eq 'error' || $1 eq 'text';
		return $1;
	}

	return '';
}

# true when the peer closed the connection within the timeout;
# data received meanwhile stays in the buffer

sub closed {
	my ($self, %opts) = @_;

	my $deadline = time() + scaled($opts{timeout} // 3);

	while (1) {
		my $r = $self->_fill($deadline);
		return 1 if defined $r && $r == 0;
		return 0 unless defined $r;
	}
}

# everything received on this connection, consumed or not

sub buffer {
	my ($self) = @_;
	return $self->{_all};
}

# received but not consumed yet

sub pending {
	my ($self) = @_;
	return $self->{_in};
}

# value of an attribute in the first tag of $text (a processing
# instruction such as <?xml ...?> is skipped)

sub attr {
	my ($self, $text, $name) = @_;

	return undef unless defined $text && defined $name;

	$text =~ s/<\?.*?\?>//gs;
	return undef unless $text =~ /(<[^\s\/>!?]+$ATTRS\/?>)/;

	my $tag = $1;
	return undef unless
		$tag =~ /\s\Q$name\E\s*=\s*(?:'([^']*)'|"([^"]*)")/;

	my $v = $1 // $2;
	my %ent = (lt => '<', gt => '>', amp => '&', apos => "'", quot => '"');
	$v =~ s/&(lt|gt|amp|apos|quot);/$ent{$1}/g;

	return $v;
}

###############################################################################

# TLS upgrade on the same connection, e.g. after <proceed/>

sub starttls {
	my ($self, %opts) = @_;

	my $s = $self->{_socket} or return 0;

	require IO::Socket::SSL;

	my $timeout = scaled(delete $opts{timeout} // 5);

	$self->{_in} = '';
	delete $self->{ssl_error};

	$s->blocking(1);

	my $ok = IO::Socket::SSL->start_SSL($s,
		SSL_verify_mode => IO::Socket::SSL::SSL_VERIFY_NONE(),
		Timeout => $timeout,
		%opts
	);

	if (!$ok) {
		no warnings 'once';
		$self->{ssl_error} = $IO::Socket::SSL::SSL_ERROR || "$!";
		log_in("starttls failed: $self->{ssl_error}");
	} else {
		log_in('starttls: ' . ($s->get_sslversion() // '') . ' '
			. ($s->get_cipher() // ''));
	}

	$s->blocking(0);

	return $ok ? 1 : 0;
}

sub ssl_error {
	my ($self) = @_;
	return $self->{ssl_error};
}

1;
