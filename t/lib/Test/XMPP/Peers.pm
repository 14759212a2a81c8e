package Test::XMPP::Peers;

# Scripted XMPP servers around the edge, to run with Test::Nginx's
# run_daemon() (as in t/xmpp_dialback.t, where they come from):
#
#   use Test::XMPP::Peers qw/ authoritative gateway /;
#
#   # the authoritative server of partner domains (the partner's "server"):
#   # answers <db:verify>, "goodkey" is valid, anything else invalid
#   $t->run_daemon(\&authoritative, port(8090));
#
#   # the gateway behind the edge (xmpp_federation_pass): verifies the
#   # edge's dialback key at the edge's internal listener (port 8081, an
#   # "xmpp_federation outbound" server), as ejabberd does (db:verify at
#   # once), logs everything it receives into the file; answers db:verify
#   # for its own key "gwkey"
#   $t->run_daemon(\&gateway, port(8091), port(8081), "$dir/gateway.log");
#
# Lines in the gateway's log: the stream header it received, the relayed
# bytes, and "VERIFY <type> <domain>" for each vouch it checked.
#
# And the partner's side of a negotiation, on a Test::Nginx::XMPP
# connection:
#
#   my $x = xmpp('127.0.0.1:' . port(8080));
#   my ($h, $f) = stream_open($x, from => 'fabrikam.example');
#   has_feature($f, 'starttls');          # also: required, external,
#                                         # dialback, mechanisms
#   tls($x, SSL_cert_file => ..., SSL_key_file => ...)   # 1: TLS is up
#   ($h, $f) = stream_open($x, from => 'fabrikam.example');
#   sasl_external($x)                     # '<success .../>' or failure
#   sasl_external($x, 'fabrikam.example') # with an authzid
#   sasl_failure($answer)                 # 'not-authorized', ...
#   dialback($x, 'fabrikam.example')      # the <db:result/> answer
#   wait_for_file($path, $text)           # 1 once the file holds $text

use warnings;
use strict;

use base qw/ Exporter /;

our @EXPORT_OK = qw/ authoritative gateway readuntil
	stream_open tls sasl_external sasl_failure dialback next_element
	has_feature
	wait_for_file log_lines $TLS_NS $SASL_NS $STREAMS_NS /;
our %EXPORT_TAGS = (all => \@EXPORT_OK);

use IO::Socket::INET;
use Socket qw/ SOL_SOCKET SO_RCVBUF /;
use MIME::Base64 qw/ encode_base64 /;
use Time::HiRes qw/ time sleep /;

use Test::Nginx qw/ scaled /;

our $TLS_NS = 'urn:ietf:params:xml:ns:xmpp-tls';
our $SASL_NS = 'urn:ietf:params:xml:ns:xmpp-sasl';
our $STREAMS_NS = 'urn:ietf:params:xml:ns:xmpp-streams';

###############################################################################

sub readuntil {
	my ($s, $re) = @_;
	my $buf = '';
	local $SIG{ALRM} = sub { die "timeout\n" };
	alarm 5;
	eval {
		while ($buf !~ $re) {
			my $n = $s->sysread($buf, 4096, length $buf);
			last unless $n;
		}
	};
	alarm 0;
	return $buf;
}

# a scripted authoritative server for partner domains: "goodkey" is valid

sub authoritative {
	my ($port) = @_;
	my $server = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$port",
		Listen => 16, Reuse => 1) or die $!;
	$SIG{CHLD} = 'IGNORE';

	while (my $c = $server->accept()) {
		next if fork();
		my $buf = readuntil($c, qr/<stream:stream[^>]*>/);
		exit 0 unless $buf =~ /<stream:stream/;
		my ($to) = $buf =~ /\bto='([^']*)'/;
		$c->syswrite("<?xml version='1.0'?><stream:stream"
			. " xmlns='jabber:server' xmlns:db='jabber:server:dialback'"
			. " xmlns:stream='http://etherx.jabber.org/streams'"
			. " id='auth1' from='$to' version='1.0'>"
			. "<stream:features/>");
		$buf = readuntil($c, qr/<\/db:verify>/);
		my ($from, $vto, $id, $key) = $buf =~
			/<db:verify from='([^']*)' to='([^']*)' id='([^']*)'>([^<]*)</;
		my $type = ($key // '') eq 'goodkey' ? 'valid' : 'invalid';
		$c->syswrite("<db:verify from='$vto' to='$from' id='$id'"
			. " type='$type'/>");
		readuntil($c, qr/<\/stream:stream>/);
		exit 0;
	}
}

# a scripted gateway: verifies the edge's key by dialback at the edge's
# internal listener, as ejabberd does (db:verify at once), and answers
# db:verify for its own key "gwkey" when the edge asks; with slow => 1 it
# has a small receive buffer and reads stanzas 2 KB at a time, 2 ms apart;
# with end_on => TEXT it ends its stream (</stream:stream>) half a second
# after a chunk it reads holds TEXT, and reads on until the edge closes

sub gateway {
	my ($port, $edge, $logfile, %o) = @_;
	my $server = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$port",
		Listen => 16, Reuse => 1) or die $!;
	$server->setsockopt(SOL_SOCKET, SO_RCVBUF, 4096) if $o{slow};
	$SIG{CHLD} = 'IGNORE';

	while (my $c = $server->accept()) {
		next if fork();

		open my $log, '>>', $logfile or die $!;
		$log->autoflush(1);

		my $buf = readuntil($c, qr/<stream:stream[^>]*>/);
		exit 0 unless $buf =~ /<stream:stream/;
		print $log $buf;
		my ($from) = $buf =~ /\bfrom='([^']*)'/;
		my ($to) = $buf =~ /\bto='([^']*)'/;
		my $id = 'gw' . int(rand(1e9));

		$c->syswrite("<?xml version='1.0'?><stream:stream"
			. " xmlns='jabber:server' xmlns:db='jabber:server:dialback'"
			. " xmlns:stream='http://etherx.jabber.org/streams'"
			. " id='$id' from='$to' version='1.0'><stream:features>"
			. "<dialback xmlns='urn:xmpp:features:dialback'/>"
			. "</stream:features>");

		my $rest = '';

		if ($buf =~ /<db:verify/ || 1) {
			$buf = readuntil($c, qr/<\/db:(result|verify)>/);
		}

		if ($buf =~ /<db:verify from='([^']*)' to='([^']*)' id='([^']*)'>([^<]*)</) {
			# the edge asks us about our own key
			my $type = $4 eq 'gwkey' ? 'valid' : 'invalid';
			$c->syswrite("<db:verify from='$2' to='$1' id='$3'"
				. " type='$type'/>");
			readuntil($c, qr/<\/stream:stream>/);
			exit 0;
		}

		my (@results) = $buf =~
			/<db:result from='([^']*)' to='([^']*)'>([^<]*)</;
		($rest) = $buf =~ /<\/db:result>(.*)$/s;
		print $log $rest // '';

		while (1) {
			my ($rfrom, $rto, $key) = @results;
			last unless defined $key;

			# dialback to "the partner domain": the edge's listener
			my $v = IO::Socket::INET->new("127.0.0.1:$edge") or die $!;
			$v->syswrite("<?xml version='1.0'?><stream:stream"
				. " xmlns='jabber:server'"
				. " xmlns:db='jabber:server:dialback'"
				. " xmlns:stream='http://etherx.jabber.org/streams'"
				. " from='$rto' to='$rfrom' version='1.0'>");
			readuntil($v, qr/<\/stream:features>/);
			$v->syswrite("<db:verify from='$rto' to='$rfrom' id='$id'>"
				. "$key</db:verify>");
			my $a = readuntil($v, qr/<db:verify[^>]*>/);
			my ($type) = $a =~ /type='([^']*)'/;
			$type //= 'none';
			print $log "\nVERIFY $type $rfrom\n";
			$v->syswrite("</stream:stream>");
			$v->close();

			$c->syswrite("<db:result from='$rto' to='$rfrom'"
				. " type='$type'/>");

			# further vouches and the stanzas
			@results = ();
			while (1) {
				sleep(0.002) if $o{slow};
				my $n = $c->sysread(my $chunk,
					$o{slow} ? 2048 : 65536);
				last unless $n;
				print $log $chunk;
				if (defined $o{end_on}
					&& index($chunk, $o{end_on}) >= 0)
				{
					# after the partner's stream is over
					sleep(0.5);
					$c->syswrite("</stream:stream>");
				}
				if ($chunk =~
					/<db:result from='([^']*)' to='([^']*)'>([^<]*)</)
				{
					@results = ($1, $2, $3);
					last;
				}
			}
			last unless @results;
		}

		exit 0;
	}
}

###############################################################################

# the partner's side

# sends a stream header (from, to contoso.example, with the dialback
# namespace), reads the answer: (header, features); the features are
# undef when something else came (a stream error stays in the buffer)

sub stream_open {
	my ($x, %o) = @_;

	my $timeout = delete $o{timeout};

	$x->open_stream(to => 'contoso.example', db => 1, %o);

	my $h = $x->read_header(defined $timeout ? (timeout => $timeout) : ());
	return (undef, undef) unless defined $h;

	# the features, or whatever came instead, which stays unread
	my $e = next_element($x, defined $timeout ? (timeout => $timeout) : ());
	return ($h, undef) unless defined $e;

	return ($h, $e) if $e =~ /^<stream:features[\s>\/]/;

	$x->{_in} = $e . $x->{_in};
	return ($h, undef);
}

# what the features offer

sub has_feature {
	my ($f, $what) = @_;

	return 0 unless defined $f;

	if ($what eq 'starttls') {
		return $f =~ m{<starttls xmlns=['"]\Q$TLS_NS\E['"]\s*(?:/>|>)}
			? 1 : 0;
	}

	if ($what eq 'required') {
		return $f =~ m{<starttls xmlns=['"]\Q$TLS_NS\E['"]\s*>\s*<required\s*/>}
			? 1 : 0;
	}

	if ($what eq 'mechanisms') {
		return $f =~ /<mechanisms\b/ ? 1 : 0;
	}

	if ($what eq 'external') {
		return $f =~ m{<mechanisms\s+xmlns=['"]\Q$SASL_NS\E['"]\s*>
				(?:(?!</mechanisms>).)*<mechanism>EXTERNAL</mechanism>}sx
			? 1 : 0;
	}

	if ($what eq 'dialback') {
		return $f =~ m{<dialback\s+xmlns=['"]urn:xmpp:features:dialback['"]}
			? 1 : 0;
	}

	die "has_feature: unknown '$what'\n";
}

# the next top-level element (or stream error, or end of stream), or
# undef on timeout / close

sub next_element {
	my ($x, %o) = @_;

	my $text = $x->read_until(qr{
		<([\w:.-]+)(?:\s+[^\s=/>]+\s*=\s*(?:'[^']*'|"[^"]*"))*\s*
			(?:/>|>.*?</\1\s*>)
		| </stream:stream>
	}sx, %o);

	return undef unless defined $text;

	$text =~ s/^\s+//;
	return $text;
}

# <starttls/>, <proceed/>, the handshake: 1 when TLS is up, 0 when the
# handshake failed, undef when no <proceed/> came (the answer is left in
# $x->{tls_answer})

sub tls {
	my ($x, %ssl) = @_;

	$x->send("<starttls xmlns='$TLS_NS'/>" . (delete $ssl{after} // ''));

	my $a = next_element($x);
	$x->{tls_answer} = $a;

	return undef unless defined $a
		&& $a =~ m{^<proceed\s+xmlns=['"]\Q$TLS_NS\E['"]\s*/>};

	return $x->starttls(SSL_hostname => 'contoso.example', %ssl);
}

# <auth mechanism='EXTERNAL'>: the answer, <success/> or <failure/> (or
# whatever else came next)

sub sasl_external {
	my ($x, $authzid) = @_;

	my $data = defined $authzid && length $authzid
		? encode_base64($authzid, '') : '=';

	$x->send("<auth xmlns='$SASL_NS' mechanism='EXTERNAL'>$data</auth>");

	return next_element($x);
}

# the condition of a SASL <failure/>, 'none' when nothing came, or
# 'not a failure: ...'

sub sasl_failure {
	my ($r) = @_;

	return 'none' unless defined $r;
	return $1 if $r =~ m{^<failure\s+xmlns=['"]\Q$SASL_NS\E['"]\s*>
		\s*<([\w-]+)\s*/>.*</failure>$}sx;
	return "not a failure: $r";
}

# <db:result> with a key ("goodkey" is what the scripted authoritative
# server accepts): the <db:result/> answer, or what came instead

sub dialback {
	my ($x, $from, $key, $to) = @_;

	$to //= 'contoso.example';
	$key //= 'goodkey';

	$x->send("<db:result from='$from' to='$to'>$key</db:result>");

	return next_element($x, timeout => 8);
}

# waits until the file holds the text: 1, or 0 after $secs

sub wait_for_file {
	my ($path, $what, $secs) = @_;

	my $deadline = time() + scaled($secs // 5);

	while (1) {
		my $text = '';
		if (open(my $fh, '<', $path)) {
			local $/;
			$text = <$fh> // '';
		}
		return 1 if index($text, $what) >= 0;
		return 0 if time() > $deadline;
		sleep(0.05);
	}
}

# lines of an access log written as '$remote_port|...': the rest of the
# line for each client port asked for ("-" read as empty), waiting for
# them up to $secs; { key => line }

sub log_lines {
	my ($path, $ports, $secs) = @_;

	my %line;
	my $deadline = time() + scaled($secs // 5);

	while (1) {
		my $log = '';
		if (open(my $fh, '<', $path)) {
			local $/;
			$log = <$fh> // '';
		}

		for my $k (keys %$ports) {
			next unless defined $ports->{$k};
			next unless $log =~ /^\Q$ports->{$k}\E\|(.*)$/m;
			$line{$k} = join '|', map { $_ eq '-' ? '' : $_ }
				split(/\|/, $1, -1);
		}

		last if keys %line == grep { defined } values %$ports;
		last if time() > $deadline;
		sleep(0.05);
	}

	return \%line;
}

1;
