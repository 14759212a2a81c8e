#!/usr/bin/perl

# STARTTLS (RFC 6120 section 5) on the public listener: the <starttls/>
# feature per partner policy, <proceed/> and the handshake with an RSA and
# an ECDSA certificate, the stream restart with a fresh id, plaintext
# pipelined behind <starttls/> forgotten, failed handshakes, "tls required"
# enforced, xmpp_federation_protocols, the end of TLS (the peer's
# close_notify ends the edge's drain; no ClientHello in time), and
# $xmpp_tls / $xmpp_auth.

use warnings;
use strict;

use Test::More;

use FindBin;
use IO::Select;
use Time::HiRes qw/ time /;
use lib "$FindBin::Bin/lib";

use Test::Nginx qw/ port scaled /;
use Test::Nginx::XMPP qw/ xmpp /;
use Test::XMPP::PKI;
use Test::XMPP::Peers qw/ :all /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/stream socket_ssl/);

plan(skip_all => Test::XMPP::PKI::missing()) if Test::XMPP::PKI::missing();

eval { require Net::SSLeay; 1 } or plan(skip_all => 'no Net::SSLeay');

my $d = $t->testdir();

# the edge's certificates, RSA and ECDSA, from a CA of our own

my $pki = Test::XMPP::PKI->new($d);
$pki->ca('root');
my $rsa = $pki->cert('edge-rsa', ca => 'root', cn => 'contoso.example',
	dns => [ 'contoso.example' ], xmpp => [ 'contoso.example' ]);
my $ec = $pki->cert('edge-ec', ca => 'root', cn => 'contoso.example',
	dns => [ 'contoso.example' ], key => 'ec');

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "a secret for the starttls tests";

    xmpp_federation_certificate     $rsa->{cert};
    xmpp_federation_certificate_key $rsa->{key};
    xmpp_federation_certificate     $ec->{cert};
    xmpp_federation_certificate_key $ec->{key};
    xmpp_federation_trusted_certificate $d/pki/root.crt;

    xmpp_federation_partner fabrikam.example {
        type     federated;
        tls      required;
        sasl     optional;
        dialback on;
        server   127.0.0.1:%%PORT_8090%%;
    }

    xmpp_federation_partner nodb.example {
        tls      required;
        sasl     optional;
        dialback off;
    }

    xmpp_federation_partner tailspin.example {
        type     federated;
        tls      optional;
        sasl     not_supported;
        dialback on;
        server   127.0.0.1:%%PORT_8090%%;
    }

    xmpp_federation_partner litware.example {
        type     federated;
        tls      not_supported;
        sasl     not_supported;
        dialback on;
        server   127.0.0.1:%%PORT_8090%%;
    }

    log_format x '\$remote_port|\$xmpp_from|\$xmpp_tls|\$xmpp_auth';

    server {
        listen               127.0.0.1:%%PORT_8080%%;
        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        access_log           $d/x.log x;
    }

    server {
        listen               127.0.0.1:%%PORT_8081%%;
        xmpp_federation      outbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
    }

    server {
        listen               127.0.0.1:%%PORT_8082%%;
        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_protocols TLSv1.3;
    }

    server {
        listen               127.0.0.1:%%PORT_8083%%;
        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_timeout 1s;
    }
}

EOF

$t->run_daemon(\&authoritative, port(8090));
$t->run_daemon(\&gateway, port(8091), port(8081), "$d/gateway.log");
$t->try_run('no xmpp_federation TLS')->plan(77);

$t->waitforsocket('127.0.0.1:' . port(8090));
$t->waitforsocket('127.0.0.1:' . port(8091));

###############################################################################

sub peer {
	my ($port) = @_;
	return xmpp('127.0.0.1:' . port($port // 8080));
}

sub pem {
	my ($path) = @_;
	open(my $fh, '<', $path) or die "$path: $!\n";
	local $/;
	return <$fh>;
}

# which of the edge's certificates the client was shown

my %edge_cert = (rsa => pem($rsa->{cert}), ecdsa => pem($ec->{cert}));

sub server_cert {
	my ($x) = @_;

	my $ssl = $x->socket()->_get_ssl_object() or return 'no tls';
	my $c = Net::SSLeay::get_peer_certificate($ssl) or return 'none';
	my $p = Net::SSLeay::PEM_get_string_X509($c);

	my ($k) = grep { $edge_cert{$_} eq $p } sort keys %edge_cert;
	return $k // 'unknown';
}

# a client context that only signs with these TLS 1.3 sigalgs
# (SSL_CTRL_SET_SIGALGS_LIST)

sub sigalgs {
	my ($list) = @_;
	return (SSL_create_ctx_callback => sub {
		Net::SSLeay::CTX_ctrl($_[0], 98, 0, $list);
	});
}

# a stream from $from through STARTTLS to the features after TLS:
# (connection, header before, features before, header after, features after)

sub through_tls {
	my ($from, %o) = @_;

	my $x = peer(delete $o{port});
	my ($h1, $f1) = stream_open($x, from => $from);
	my $ok = tls($x, %o);

	return ($x, $h1, $f1) unless $ok;

	my ($h2, $f2) = stream_open($x, from => $from);

	return ($x, $h1, $f1, $h2, $f2);
}

# everything after the features: the rest of what the edge sent

sub after_features {
	my ($x) = @_;
	return $x->buffer() =~ s/^.*<\/stream:features>//sr;
}

# how TCP ends under a TLS connection, read raw on a dup of its socket:
# 'eof', 'reset', or 'open' when nothing ended it within $secs

sub tcp_end {
	my ($sock, $secs) = @_;

	open(my $raw, '<&', fileno($sock)) or return "dup: $!";

	my $sel = IO::Select->new($raw);
	my $deadline = time() + $secs;

	while (time() < $deadline) {
		next unless $sel->can_read($deadline - time());

		my $n = sysread($raw, my $buf, 4096);
		return 'eof' if defined $n && $n == 0;
		return 'reset' unless defined $n;
	}

	return 'open';
}

my %port;	# access log lines by client port

###############################################################################

# the internal listener: no STARTTLS, even with certificates inherited

my ($x, $h, $f) = (peer(8081));
($h, $f) = stream_open($x, from => 'contoso.example',
	to => 'fabrikam.example');
ok(defined $f && !has_feature($f, 'starttls'),
	'internal listener: no starttls offered');
$x->send("<starttls xmlns='$TLS_NS'/>");
ok($x->closed(), 'internal listener: starttls anyway closes');
like(after_features($x), qr!^<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>!,
	'internal listener: starttls anyway gets <failure/>');

# row 8 (sasl optional, dialback off) without a usable certificate: no
# way is left after TLS

my @nodb = through_tls('nodb.example');
is(@nodb == 5 && $nodb[0]->stream_error(), 'not-authorized',
	'sasl optional, dialback off, no certificate: not-authorized after TLS');

# the <starttls/> feature per policy

$x = peer();
($h, $f) = stream_open($x, from => 'fabrikam.example');

like($f, qr!<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>!,
	'tls required: starttls with <required/>');
ok(defined $f && !has_feature($f, 'dialback'),
	'tls required: no dialback before TLS');
ok(defined $f && !has_feature($f, 'mechanisms'),
	'tls required: no SASL before TLS');

$x = peer();
($h, $f) = stream_open($x, from => 'tailspin.example');
like($f, qr!<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>!,
	'tls optional: starttls');
ok(defined $f && !has_feature($f, 'required'),
	'tls optional: starttls without <required/>');
ok(has_feature($f, 'dialback'), 'tls optional: dialback before TLS');

$x = peer();
$port{plain} = $x->sockport();
($h, $f) = stream_open($x, from => 'litware.example');
ok(defined $f && !has_feature($f, 'starttls'),
	'tls not_supported: no starttls');
ok(has_feature($f, 'dialback'), 'tls not_supported: dialback');

$x->send("<starttls xmlns='$TLS_NS'/>");
ok($x->closed(), 'tls not_supported: starttls anyway closes');
like(after_features($x), qr!^<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>(?:</stream:stream>)?$!,
	'tls not_supported: starttls anyway gets <failure/>');

###############################################################################

# STARTTLS: proceed, handshake, a new stream with a new id

my ($h1, $f1, $h2, $f2);
($x, $h1, $f1, $h2, $f2) = through_tls('fabrikam.example');

like($x->{tls_answer}, qr!^<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>$!,
	'proceed');
ok($x->socket()->isa('IO::Socket::SSL'), 'handshake');
like($h2, qr/<stream:stream\s/, 'header after TLS');

my $id1 = $x->attr($h1, 'id') // '';
my $id2 = $x->attr($h2, 'id') // '';
ok(length $id2 && $id1 ne $id2, 'new stream id after TLS')
	or diag("before '$id1', after '$id2'");
is($x->attr($h2, 'from'), 'contoso.example', 'header after TLS: from');
ok(defined $f2 && !has_feature($f2, 'starttls'), 'no starttls after TLS');
ok(has_feature($f2, 'dialback'), 'tls required: dialback after TLS');
ok(defined $f2 && !has_feature($f2, 'mechanisms'),
	'no client certificate: no SASL mechanisms');

# the edge's certificate by the client's abilities

($x) = through_tls('fabrikam.example', SSL_version => 'TLSv1_2',
	SSL_cipher_list => 'ECDHE-RSA-AES128-GCM-SHA256');
is(server_cert($x), 'rsa', 'TLSv1.2 RSA-only cipher list: RSA certificate');
is($x->socket() && $x->socket()->get_cipher(),
	'ECDHE-RSA-AES128-GCM-SHA256', 'TLSv1.2 RSA cipher');

($x) = through_tls('fabrikam.example', SSL_version => 'TLSv1_2',
	SSL_cipher_list => 'ECDHE-ECDSA-AES128-GCM-SHA256');
is(server_cert($x), 'ecdsa', 'TLSv1.2 ECDSA-only cipher list: ECDSA certificate');
is($x->socket() && $x->socket()->get_cipher(),
	'ECDHE-ECDSA-AES128-GCM-SHA256', 'TLSv1.2 ECDSA cipher');

($x) = through_tls('fabrikam.example', SSL_version => 'TLSv1_3',
	sigalgs('rsa_pss_rsae_sha256:rsa_pss_rsae_sha384'));
is(server_cert($x), 'rsa', 'TLSv1.3 RSA-only sigalgs: RSA certificate');

($x) = through_tls('fabrikam.example', SSL_version => 'TLSv1_3',
	sigalgs('ecdsa_secp256r1_sha256'));
is(server_cert($x), 'ecdsa', 'TLSv1.3 ECDSA-only sigalgs: ECDSA certificate');

# protocols: TLSv1.2 and TLSv1.3 by default

($x) = through_tls('fabrikam.example', SSL_version => 'TLSv1_2');
is($x->socket()->isa('IO::Socket::SSL') && $x->socket()->get_sslversion(),
	'TLSv1_2', 'default protocols: TLSv1.2');

($x, $h1, $f1, $h2, $f2) = through_tls('fabrikam.example',
	SSL_version => 'TLSv1_3');
is($x->socket()->isa('IO::Socket::SSL') && $x->socket()->get_sslversion(),
	'TLSv1_3', 'default protocols: TLSv1.3');
ok(defined $f2, 'TLSv1.3: stream after TLS');

# xmpp_federation_protocols TLSv1.3

$x = peer(8082);
stream_open($x, from => 'fabrikam.example');
is(tls($x, SSL_version => 'TLSv1_2'), 0,
	'protocols TLSv1.3: TLSv1.2-only client refused');
ok($x->closed(), 'protocols TLSv1.3: closed after the failed handshake');

($x, $h1, $f1, $h2, $f2) = through_tls('fabrikam.example', port => 8082);
ok(defined $f2 && $x->socket()->get_sslversion() eq 'TLSv1_3',
	'protocols TLSv1.3: TLSv1.3 client');

###############################################################################

# plaintext pipelined behind <starttls/> is forgotten

$x = peer();
stream_open($x, from => 'fabrikam.example');
my $ok = tls($x, after => "<message from='bob\@fabrikam.example'"
	. " to='alice\@contoso.example' id='piped'><body>x</body></message>");
ok($ok, 'pipelined plaintext: handshake');

($h, $f) = stream_open($x, from => 'fabrikam.example');
ok(defined $f && !has_feature($f, 'starttls'),
	'pipelined plaintext: new stream after TLS');

my $r = dialback($x, 'fabrikam.example');
like($r, qr/^<db:result [^>]*type='valid'/,
	'pipelined plaintext: no error, the stream goes on (TLS dialback)');

$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='after-tls'><body>y</body></message>");
ok(wait_for_file("$d/gateway.log", "id='after-tls'"),
	'stanza after TLS dialback relayed');
unlike($x->buffer(), qr/stream:error|not-authorized/,
	'pipelined plaintext: no error');
unlike($t->read_file('gateway.log'), qr/piped/,
	'pipelined plaintext: never relayed');

# the header and <starttls/> in one write

$x = peer();
$x->send(Test::Nginx::XMPP->header(to => 'contoso.example',
	from => 'fabrikam.example', db => 1) . "<starttls xmlns='$TLS_NS'/>");
$x->read_header();
$x->read_element('stream:features');
like(next_element($x), qr/^<proceed /, 'header and starttls pipelined: proceed');
ok($x->starttls() && defined((stream_open($x, from => 'fabrikam.example'))[1]),
	'header and starttls pipelined: stream after TLS');

# a failed handshake

$x = peer();
stream_open($x, from => 'fabrikam.example');
$x->send("<starttls xmlns='$TLS_NS'/>");
like(next_element($x), qr/^<proceed /, 'bad handshake: proceed');
$x->send("this is not a TLS client hello\r\n" x 4);
ok($x->closed(timeout => 5), 'bad handshake: closed');

# tls required: anything but starttls before TLS

$x = peer();
stream_open($x, from => 'fabrikam.example');
$x->send("<db:result from='fabrikam.example' to='contoso.example'>goodkey"
	. "</db:result>");
is($x->stream_error(), 'policy-violation',
	'tls required: dialback before TLS is a policy-violation');
ok($x->closed(), 'tls required: dialback before TLS closes');

$x = peer();
stream_open($x, from => 'fabrikam.example');
$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='early'><body>x</body></message>");
is($x->stream_error(), 'policy-violation',
	'tls required: stanza before TLS is a policy-violation');

$x = peer();
stream_open($x, from => 'fabrikam.example');
$x->send("<auth xmlns='$SASL_NS' mechanism='EXTERNAL'>=</auth>");
is($x->stream_error(), 'policy-violation',
	'tls required: SASL before TLS is a policy-violation');

$x = peer();
stream_open($x, from => 'tailspin.example');
is(sasl_failure(sasl_external($x)), 'not-authorized',
	'tls optional: SASL before TLS is not-authorized');

$x = peer();
stream_open($x, from => 'tailspin.example');
$x->send("<message from='bob\@tailspin.example' to='alice\@contoso.example'"
	. " id='early2'><body>x</body></message>");
is($x->stream_error(), 'not-authorized',
	'tls optional: stanza before authentication is not-authorized');

# starttls again inside TLS

($x, $h1, $f1, $h2, $f2) = through_tls('fabrikam.example');
$x->send("<starttls xmlns='$TLS_NS'/>");
ok($x->closed(), 'starttls inside TLS: the stream ends');
like(after_features($x),
	qr!^(?:<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>|<stream:error>.*</stream:error>)(?:</stream:stream>)?$!s,
	'starttls inside TLS: failure or stream error');

###############################################################################

# TLS dialback, $xmpp_tls and $xmpp_auth

$x = peer();
$port{tls_dialback} = $x->sockport();
stream_open($x, from => 'fabrikam.example');
tls($x);
stream_open($x, from => 'fabrikam.example');
like(dialback($x, 'fabrikam.example'), qr/type='valid'/, 'TLS dialback valid');
$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='tlsdb'/></stream:stream>");
ok(wait_for_file("$d/gateway.log", "id='tlsdb'"), 'TLS dialback: relayed');
$x->closed();

$x = peer();
$port{tls_only} = $x->sockport();
stream_open($x, from => 'tailspin.example');
tls($x);
stream_open($x, from => 'tailspin.example');
$x->send('</stream:stream>');
$x->closed();

$x = peer();
$port{tcp_dialback} = $x->sockport();
stream_open($x, from => 'litware.example');
like(dialback($x, 'litware.example'), qr/type='valid'/, 'TCP dialback valid');
$x->send('</stream:stream>');
$x->closed();

$x = peer();
$port{plain_end} = $x->sockport();
stream_open($x, from => 'tailspin.example');
$x->send('</stream:stream>');
$x->closed();

# the peer's TLS data after the edge's close_notify, once the edge has
# drained for its 5 s and shuts TLS down: no error of the edge's own

$x = peer();
stream_open($x, from => 'tailspin.example');
tls($x, SSL_version => 'TLSv1_2');
stream_open($x, from => 'tailspin.example');
$x->send('<<');
is($x->stream_error(), 'not-well-formed', 'after close_notify: stream error');
ok($x->read_until(qr!</stream:stream>!), 'after close_notify: stream closed');
select(undef, undef, undef, 5.5);
Net::SSLeay::write($x->socket()->_get_ssl_object(),
	"<message to='a\@contoso.example'/>");
select(undef, undef, undef, 0.5);
unlike($t->read_file('error.log'), qr/\[crit\].*SSL_shutdown/,
	'after close_notify: late data not logged as crit');

# the peer's close_notify after both ends of the stream: the edge closes
# the connection then, not when its 5 s drain is over (the peer keeps
# TCP open here, as a peer that waits for the edge to close first)

for my $v ('TLSv1_3', 'TLSv1_2') {
	$x = peer();
	stream_open($x, from => 'tailspin.example');
	tls($x, SSL_version => $v);
	stream_open($x, from => 'tailspin.example');
	$x->send('</stream:stream>');
	ok($x->read_until(qr!</stream:stream>!), "close_notify $v: the edge's end");

	my $port = $x->sockport();
	Net::SSLeay::shutdown($x->socket()->_get_ssl_object());
	my $start = time();

	# the session is over when its access log line is written

	ok(wait_for_file("$d/x.log", "\n$port|", 10),
		"close_notify $v: the session ends");
	my $elapsed = time() - $start;
	ok($elapsed < 3, "close_notify $v: at once, not after the drain")
		or diag("ended after $elapsed s");
	is(tcp_end($x->socket(), 5), 'eof', "close_notify $v: TCP ends");
}

# bytes that are not TLS after the edge's end: the drain stops there,
# without a word in the log above info

$x = peer();
stream_open($x, from => 'tailspin.example');
tls($x);
stream_open($x, from => 'tailspin.example');
$x->send('</stream:stream>');
ok($x->read_until(qr!</stream:stream>!), 'not TLS after the end: the end');
$port{garbage} = $x->sockport();
{
	open(my $raw, '>&', fileno($x->socket())) or die "dup: $!\n";
	syswrite($raw, "this is no TLS record\r\n" x 8);
}
ok(wait_for_file("$d/x.log", "\n$port{garbage}|", 10),
	'not TLS after the end: the session ends');
unlike($t->read_file('error.log'),
	qr/\[(?:crit|alert|emerg|error)\].*(?:SSL|drain)/,
	'not TLS after the end: nothing logged above info');

# the peer never sends its ClientHello: the establishment timeout (1s on
# 8083) ends the connection, and the log says why

$x = peer(8083);
stream_open($x, from => 'fabrikam.example');
$x->send("<starttls xmlns='$TLS_NS'/>");
like(next_element($x), qr/^<proceed /, 'no ClientHello: proceed');
ok($x->closed(timeout => 10), 'no ClientHello: closed');
ok(wait_for_file("$d/error.log", 'XMPP STARTTLS handshake timed out'),
	'no ClientHello: logged as a timeout');

$x = undef;

my $line = log_lines("$d/x.log", \%port);

is($line->{tls_dialback}, 'fabrikam.example|starttls|dialback',
	'log: STARTTLS and dialback');
is($line->{tls_only}, 'tailspin.example|starttls|',
	'log: STARTTLS, not authenticated');
is($line->{tcp_dialback}, 'litware.example||dialback',
	'log: dialback without TLS');
is($line->{plain_end}, 'tailspin.example||', 'log: neither');
is($line->{plain}, 'litware.example||',
	'log: starttls refused, tls empty');

###############################################################################
