#!/usr/bin/perl

# SASL EXTERNAL for servers (XEP-0178) after STARTTLS: offered only when the
# partner's policy allows it and the client certificate chains to
# xmpp_federation_trusted_certificate and names the stream's "from" domain
# (DNS-ID, wildcard only as the whole left-most label, SRV-ID, XmppAddr,
# never the CN); authzid; the stream restart and the hand-off to the
# gateway; the fallback to dialback; "sasl required"; hostile certificates
# refused with the reason in the log.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use MIME::Base64 qw/ encode_base64 /;

use Test::Nginx qw/ port scaled /;
use Test::Nginx::XMPP qw/ xmpp /;
use Test::XMPP::PKI;
use Test::XMPP::Peers qw/ :all /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/stream socket_ssl/);

plan(skip_all => Test::XMPP::PKI::missing()) if Test::XMPP::PKI::missing();

my $d = $t->testdir();

# the PKI: our root, an intermediate pair below it, a CA nobody trusts

my $pki = Test::XMPP::PKI->new($d);

$pki->ca('root');
$pki->ca('evil');
$pki->intermediate('int1', ca => 'root');
$pki->intermediate('int2', ca => 'int1');

$pki->cert('edge', ca => 'root', cn => 'contoso.example',
	dns => [ 'contoso.example' ], key => 'ec');

# client certificates: name => [ ca, %cert options ]

my @good = qw/ fabrikam.example nosasl.example strict.example
	strictdb.example fallback.example /;

my %certs = (
	good => [ root => cn => 'dns-id', dns => \@good ],
	good_ec => [ root => cn => 'dns-id ec', dns => [ 'fabrikam.example' ],
		key => 'ec' ],
	wild => [ root => cn => 'wildcard', dns => [ '*.fabrikam.example' ] ],
	partial => [ root => cn => 'partial wildcard', dns => [ 'f*.example' ] ],
	srvid => [ root => cn => 'srv-id', srv => [ 'fabrikam.example' ] ],
	srvclient => [ root => cn => 'srv-id client',
		srv => [ '_xmpp-client.fabrikam.example' ] ],
	xmppaddr => [ root => cn => 'xmppaddr', xmpp => [ 'fabrikam.example' ] ],
	xmppuser => [ root => cn => 'xmppaddr user',
		xmpp => [ 'bob@fabrikam.example' ] ],
	cnonly => [ root => cn => 'cnonly.fabrikam.example' ],
	wrong => [ root => cn => 'wrong.fabrikam.example',
		dns => [ 'litware.example' ] ],
	expired => [ root => dns => [ 'expired.fabrikam.example' ],
		not_before => -30, not_after => -1 ],
	future => [ root => dns => [ 'future.fabrikam.example' ],
		not_before => 10, days => 30 ],
	untrusted => [ evil => dns => [ 'untrusted.fabrikam.example',
		'strict.example' ] ],
	deep1 => [ int1 => dns => [ 'deep.fabrikam.example' ] ],
	deep2 => [ int2 => dns => [ 'deep.fabrikam.example' ] ],
	revoked => [ root => dns => [ 'revoked.fabrikam.example' ] ],
);

for my $name (sort keys %certs) {
	my ($ca, %o) = @{$certs{$name}};
	$pki->cert($name, ca => $ca, key => 'ec', %o);
}

$pki->revoke('revoked');
my $crl = $pki->crl('root');

my $edge = $pki->get('edge');

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "a secret for the sasl tests";

    xmpp_federation_partner fabrikam.example {
        additional_domains corp.fabrikam.example a.b.fabrikam.example
                           cnonly.fabrikam.example wrong.fabrikam.example
                           expired.fabrikam.example future.fabrikam.example
                           untrusted.fabrikam.example deep.fabrikam.example
                           revoked.fabrikam.example;
        type     federated;
        tls      required;
        sasl     optional;
        dialback on;
        server   127.0.0.1:%%PORT_8090%%;
    }

    xmpp_federation_partner nosasl.example {
        type     federated;
        tls      required;
        sasl     not_supported;
        dialback on;
        server   127.0.0.1:%%PORT_8090%%;
    }

    xmpp_federation_partner strict.example {
        type     federated;
        tls      required;
        sasl     required;
        dialback off;
    }

    xmpp_federation_partner strictdb.example {
        type     federated;
        tls      required;
        sasl     required;
        dialback on;
        server   127.0.0.1:%%PORT_8090%%;
    }

    xmpp_federation_partner fallback.example {
        type     federated;
        tls      optional;
        sasl     required;
        dialback on;
        server   127.0.0.1:%%PORT_8090%%;
    }

    xmpp_federation_certificate         $edge->{cert};
    xmpp_federation_certificate_key     $edge->{key};
    xmpp_federation_trusted_certificate $d/pki/root.crt;

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
        xmpp_federation_verify_depth 1;
    }

    server {
        listen               127.0.0.1:%%PORT_8083%%;
        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_crl  $crl;
    }
}

EOF

$t->run_daemon(\&authoritative, port(8090));
$t->run_daemon(\&gateway, port(8091), port(8081), "$d/gateway.log");
$t->try_run('no xmpp_federation SASL')->plan(66);

$t->waitforsocket('127.0.0.1:' . port(8090));
$t->waitforsocket('127.0.0.1:' . port(8091));

###############################################################################

sub peer {
	my ($port) = @_;
	return xmpp('127.0.0.1:' . port($port // 8080));
}

sub cert_opts {
	my ($name) = @_;

	return () unless defined $name;

	my $c = $pki->get($name) or die "no certificate $name\n";
	return (SSL_cert_file => $c->{chain}, SSL_key_file => $c->{key});
}

# a stream from $from, STARTTLS with the client certificate $cert (or
# none), the new stream: (connection, features after TLS, header after
# TLS, header before TLS); undef features when TLS or the new stream failed

sub after_tls {
	my ($from, $cert, %o) = @_;

	my $x = peer($o{port});
	my ($h1) = stream_open($x, from => $from);

	return ($x) unless tls($x, cert_opts($cert));

	my ($h2, $f2) = stream_open($x, from => $from);

	return ($x, $f2, $h2, $h1);
}

# is EXTERNAL offered to $from with $cert

sub offered {
	my (undef, $f) = after_tls(@_);
	return has_feature($f, 'external');
}

# EXTERNAL offered, authenticated, and the stream restarted: 1, or what
# went wrong

sub external {
	my ($from, $cert, %o) = @_;

	my ($x, $f) = after_tls($from, $cert, %o);

	return 'not offered: ' . ($f // $x->buffer())
		unless has_feature($f, 'external');

	my $r = sasl_external($x, $o{authzid});
	return "auth: " . ($r // '(nothing)') unless defined $r && $r
		eq "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>";

	my ($h, $f2) = stream_open($x, from => $from);
	return 'no stream after success: ' . $x->buffer() unless defined $f2;

	return 1;
}


my %port;

###############################################################################

# the whole way with a DNS-ID: EXTERNAL, success, a new stream, the gateway

my ($x, $f, $h2, $h1) = after_tls('fabrikam.example', 'good');
$port{external} = $x->sockport();

like($f, qr!<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>!,
	'DNS-ID: EXTERNAL offered');
ok(has_feature($f, 'dialback'), 'sasl optional, dialback on: dialback too');

is(sasl_external($x), "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
	'EXTERNAL with empty authzid: success');

my ($h3, $f3) = stream_open($x, from => 'fabrikam.example');
my @ids = map { $x->attr($_, 'id') // '' } $h1, $h2, $h3;

ok(defined $h3 && length $ids[2] && $ids[2] ne $ids[1] && $ids[2] ne $ids[0],
	'new stream id after SASL') or diag("ids @ids");
ok(defined $f3 && !has_feature($f3, 'mechanisms')
	&& !has_feature($f3, 'starttls'),
	'features after SASL: no mechanisms, no starttls');

$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='sasl1'><body>over SASL EXTERNAL</body></message>");
ok(wait_for_file("$d/gateway.log", "id='sasl1'"),
	'stanza after SASL reaches the gateway');
like($t->read_file('gateway.log'), qr/VERIFY valid fabrikam\.example/,
	'gateway verified the edge as fabrikam.example');
unlike($x->buffer(), qr/stream:error/, 'no stream error after SASL');

$x->send('</stream:stream>');
$x->closed();

# authzid

is(external('fabrikam.example', 'good',
	authzid => 'fabrikam.example'), 1, 'authzid equal to from: success');

($x, $f) = after_tls('fabrikam.example', 'good');
is(sasl_failure(sasl_external($x, 'other.example')), 'invalid-authzid',
	'authzid of another domain: invalid-authzid');

is(external('fabrikam.example', 'good_ec'), 1, 'ECDSA client certificate');
is(external('Fabrikam.Example', 'good'), 1,
	'from in other case: the DNS-ID matches');

# identities

is(external('corp.fabrikam.example', 'wild'), 1,
	'wildcard *.fabrikam.example for corp.fabrikam.example');
ok(!offered('fabrikam.example', 'wild'),
	'wildcard *.fabrikam.example not for fabrikam.example');
ok(!offered('a.b.fabrikam.example', 'wild'),
	'wildcard *.fabrikam.example not for a.b.fabrikam.example');
ok(!offered('fabrikam.example', 'partial'),
	'partial wildcard f*.example not accepted');
ok(!offered('corp.fabrikam.example', 'good'),
	'DNS-ID fabrikam.example not for corp.fabrikam.example');

is(external('fabrikam.example', 'srvid'), 1,
	'SRV-ID _xmpp-server.fabrikam.example');
ok(!offered('fabrikam.example', 'srvclient'),
	'SRV-ID _xmpp-client.fabrikam.example not accepted');

is(external('fabrikam.example', 'xmppaddr'), 1, 'XmppAddr fabrikam.example');
ok(!offered('fabrikam.example', 'xmppuser'),
	'XmppAddr bob@fabrikam.example not accepted for the domain');

# "from" with a trailing dot is the same domain, for every kind of name

is(external('fabrikam.example.', 'good'), 1,
	'from with a trailing dot: DNS-ID');

is(external('fabrikam.example.', 'srvid'), 1,
	'from with a trailing dot: SRV-ID');
is(external('fabrikam.example.', 'xmppaddr'), 1,
	'from with a trailing dot: XmppAddr');
is(external('fabrikam.example.', 'good', authzid => 'fabrikam.example'),
	1, 'from with a trailing dot: authzid without it');

ok(!offered('cnonly.fabrikam.example', 'cnonly'),
	'CN only, no subjectAltName: not accepted');
ok(!offered('wrong.fabrikam.example', 'wrong'),
	'certificate of another domain (CN naming ours): not accepted');

# no usable certificate: no EXTERNAL, <auth/> anyway refused, dialback

($x, $f) = after_tls('fabrikam.example', undef);
$port{fallback} = $x->sockport();

ok(defined $f && !has_feature($f, 'mechanisms'),
	'no client certificate: no mechanisms');
is(sasl_failure(sasl_external($x)), 'not-authorized',
	'no client certificate: auth anyway is not-authorized');
like(dialback($x, 'fabrikam.example'), qr/^<db:result [^>]*type='valid'/,
	'then TLS dialback');
$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='sasl-then-db'/></stream:stream>");
ok(wait_for_file("$d/gateway.log", "id='sasl-then-db'"),
	'TLS dialback after refused SASL: relayed');
$x->closed();

($x, $f) = after_tls('nosasl.example', 'good');
ok(defined $f && !has_feature($f, 'mechanisms'),
	'sasl not_supported: no mechanisms for a good certificate');
is(sasl_failure(sasl_external($x)), 'not-authorized',
	'sasl not_supported: auth anyway is not-authorized');

# sasl required

($x, $f, $h2) = after_tls('strict.example', undef);
ok(defined $h2 && !defined $f,
	'sasl required, dialback off, no certificate: header, no features');
is($x->stream_error(), 'not-authorized',
	'sasl required, dialback off, no certificate: not-authorized');
ok($x->closed(), 'sasl required, dialback off, no certificate: closed');

# the same refusal to a peer that has already gone: the stream error
# and the close that follows must not pull the session from under the
# header's handler (a use after free, seen by the sanitized run)

my $gone = 0;

for (1 .. 10) {
	$x = peer();
	stream_open($x, from => 'strict.example');
	next unless tls($x, cert_opts(undef));
	$x->open_stream(to => 'contoso.example', db => 1,
		from => 'strict.example');
	$x->close();
	$gone++;
}

is($gone, 10, 'sasl required, no certificate, peer gone: 10 streams');
my $refused = 0;

for (1 .. 50) {
	$refused = () = $t->read_file('error.log')
		=~ /SASL is required and the certificate is not usable/g;
	last if $refused >= 11;
	select(undef, undef, undef, 0.1);
}

is($refused, 11, 'peer gone: every one refused, and logged');

($x, $f, $h2) = after_tls('strict.example', 'untrusted');
is(defined $h2 && $x->stream_error(), 'not-authorized',
	'sasl required, dialback off, untrusted certificate: not-authorized');

($x, $f, $h2) = after_tls('strictdb.example', undef);
is(defined $h2 && $x->stream_error(), 'not-authorized',
	'tls and sasl required, dialback on, no certificate: not-authorized');

($x, $f) = after_tls('strict.example', 'good');
ok(has_feature($f, 'external') && !has_feature($f, 'dialback'),
	'sasl required, dialback off: EXTERNAL, no dialback');
is(sasl_external($x), "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
	'sasl required: success');

($x, $f) = after_tls('strictdb.example', 'good');
ok(has_feature($f, 'external') && !has_feature($f, 'dialback'),
	'tls and sasl required, dialback on: EXTERNAL, no dialback');

($x, $f) = after_tls('fallback.example', undef);
ok(defined $f && !has_feature($f, 'mechanisms') && has_feature($f, 'dialback'),
	'sasl required, tls optional, no certificate: dialback offered');
like(dialback($x, 'fallback.example'), qr/type='valid'/,
	'sasl required, tls optional, no certificate: TLS dialback');

($x, $f) = after_tls('fallback.example', 'good');
ok(has_feature($f, 'external') && has_feature($f, 'dialback'),
	'sasl required, tls optional, good certificate: EXTERNAL and dialback');

# hostile certificates

ok(!offered('expired.fabrikam.example', 'expired'), 'expired: refused');
ok(!offered('future.fabrikam.example', 'future'), 'not yet valid: refused');
ok(!offered('untrusted.fabrikam.example', 'untrusted'),
	'untrusted CA: refused');

is(external('deep.fabrikam.example', 'deep2'), 1,
	'two intermediates, default depth: accepted');
ok(!offered('deep.fabrikam.example', 'deep2', port => 8082),
	'two intermediates, verify depth 1: refused');
is(external('deep.fabrikam.example', 'deep1', port => 8082), 1,
	'one intermediate, verify depth 1: accepted');

is(external('revoked.fabrikam.example', 'revoked'), 1,
	'revoked, no CRL configured: accepted');
ok(!offered('revoked.fabrikam.example', 'revoked', port => 8083),
	'revoked, CRL: refused');
is(external('fabrikam.example', 'good', port => 8083), 1,
	'not revoked, CRL: accepted');

###############################################################################

# $xmpp_tls, $xmpp_auth

$x = undef;

my $line = log_lines("$d/x.log", \%port);

is($line->{external}, 'fabrikam.example|starttls|external',
	'log: starttls, external');
is($line->{fallback}, 'fabrikam.example|starttls|dialback',
	'log: starttls, dialback after refused SASL');

###############################################################################

# the reasons in the log

$t->stop();

my $log = $t->read_file('error.log');

sub reason {
	my ($domain, $re) = @_;
	return qr/SASL EXTERNAL not offered to "\Q$domain\E": (?:$re)/;
}

like($log, reason('expired.fabrikam.example', 'certificate has expired'),
	'log: expired');
like($log, reason('future.fabrikam.example', 'certificate is not yet valid'),
	'log: not yet valid');
like($log, reason('untrusted.fabrikam.example',
		'unable to get local issuer certificate'
		. '|unable to verify the first certificate'
		. '|self.signed certificate in certificate chain'),
	'log: untrusted CA');
like($log, reason('deep.fabrikam.example', 'certificate chain too long'),
	'log: chain too long');
like($log, reason('revoked.fabrikam.example', 'certificate revoked'),
	'log: revoked');
like($log, reason('wrong.fabrikam.example',
		'(?:the )?certificate does not name the domain'),
	'log: wrong domain');
like($log, reason('cnonly.fabrikam.example',
		'(?:the )?certificate does not name the domain'),
	'log: CN only');
like($log, reason('a.b.fabrikam.example',
		'(?:the )?certificate does not name the domain'),
	'log: wildcard on the wrong label');
like($log, reason('strict.example', 'no client certificate'),
	'log: no client certificate');

###############################################################################
