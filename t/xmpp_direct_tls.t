#!/usr/bin/perl

# Direct TLS (XEP-0368): "listen ... ssl" of the stream SSL module with
# ALPN xmpp-server in front of "xmpp_federation inbound". The stream starts
# inside TLS: no <starttls/> offered (and refused if sent), SASL EXTERNAL
# judged against xmpp_federation_trusted_certificate, dialback over TLS,
# $xmpp_tls is "direct".

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::Nginx qw/ port scaled /;
use Test::Nginx::XMPP qw/ xmpp /;
use Test::XMPP::PKI;
use Test::XMPP::Peers qw/ :all /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/stream stream_ssl socket_ssl/);

plan(skip_all => Test::XMPP::PKI::missing()) if Test::XMPP::PKI::missing();

my $d = $t->testdir();

my $pki = Test::XMPP::PKI->new($d);

$pki->ca('root');
$pki->ca('evil');

my $edge = $pki->cert('edge', ca => 'root', cn => 'contoso.example',
	dns => [ 'contoso.example' ]);

$pki->cert('good', ca => 'root', key => 'ec',
	dns => [ 'fabrikam.example', 'strict.example' ]);
$pki->cert('wrong', ca => 'root', key => 'ec',
	cn => 'wrong.fabrikam.example', dns => [ 'litware.example' ]);
$pki->cert('untrusted', ca => 'evil', key => 'ec',
	dns => [ 'untrusted.fabrikam.example' ]);

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "a secret for the direct TLS tests";

    xmpp_federation_partner fabrikam.example {
        additional_domains wrong.fabrikam.example untrusted.fabrikam.example;
        type     federated;
        tls      required;
        sasl     optional;
        dialback on;
        server   127.0.0.1:%%PORT_8090%%;
    }

    xmpp_federation_partner strict.example {
        type     federated;
        tls      required;
        sasl     required;
        dialback off;
    }

    log_format x '\$remote_port|\$xmpp_from|\$xmpp_tls|\$xmpp_auth';

    server {
        listen               127.0.0.1:%%PORT_8080%% ssl;

        ssl_certificate      $edge->{cert};
        ssl_certificate_key  $edge->{key};
        ssl_protocols        TLSv1.2 TLSv1.3;
        ssl_verify_client    optional_no_ca;
        ssl_alpn             xmpp-server;

        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_trusted_certificate $d/pki/root.crt;

        access_log           $d/x.log x;
    }

    server {
        listen               127.0.0.1:%%PORT_8082%% ssl;

        ssl_certificate      $edge->{cert};
        ssl_certificate_key  $edge->{key};
        ssl_verify_client    optional;
        ssl_client_certificate $d/pki/root.crt;
        ssl_alpn             xmpp-server;

        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_trusted_certificate $d/pki/root.crt;
    }

    server {
        listen               127.0.0.1:%%PORT_8081%%;
        xmpp_federation      outbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
    }
}

EOF

$t->run_daemon(\&authoritative, port(8090));
$t->run_daemon(\&gateway, port(8091), port(8081), "$d/gateway.log");
$t->try_run('no xmpp_federation direct TLS')->plan(28);

$t->waitforsocket('127.0.0.1:' . port(8090));
$t->waitforsocket('127.0.0.1:' . port(8091));

###############################################################################

# a direct TLS connection (ALPN xmpp-server), with a client certificate
# or none, and the stream opened: (connection, features, header)

sub direct {
	my ($from, $cert, %o) = @_;

	my $x = xmpp('127.0.0.1:' . port($o{port} // 8080));

	my @c;
	if (defined $cert) {
		my $c = $pki->get($cert);
		@c = (SSL_cert_file => $c->{chain}, SSL_key_file => $c->{key});
	}

	$x->starttls(SSL_hostname => 'contoso.example',
		SSL_alpn_protocols => [ 'xmpp-server' ], @c) or return ($x);

	my ($h, $f) = stream_open($x, from => $from);

	return ($x, $f, $h);
}

my %port;

###############################################################################

my ($x, $f, $h) = direct('fabrikam.example', 'good');
$port{external} = $x->sockport();

is($x->socket()->isa('IO::Socket::SSL') && $x->socket()->alpn_selected(),
	'xmpp-server', 'ALPN xmpp-server');
ok(defined $f && !has_feature($f, 'starttls'), 'direct TLS: no starttls');
like($f, qr!<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>!,
	'direct TLS: EXTERNAL offered');
ok(has_feature($f, 'dialback'), 'direct TLS, tls required: dialback offered');

is(sasl_external($x), "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
	'direct TLS: EXTERNAL success');

my $id1 = $x->attr($h, 'id') // '';
my ($h2, $f2) = stream_open($x, from => 'fabrikam.example');
my $id2 = $x->attr($h2, 'id') // '';

ok(length $id2 && $id1 ne $id2, 'direct TLS: new stream id after SASL');
ok(defined $f2 && !has_feature($f2, 'mechanisms'),
	'direct TLS: no mechanisms after SASL');

$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='direct1'><body>direct TLS</body></message></stream:stream>");
ok(wait_for_file("$d/gateway.log", "id='direct1'"),
	'direct TLS, SASL: stanza reaches the gateway');
$x->closed();

# <starttls/> inside direct TLS

($x, $f) = direct('fabrikam.example', 'good');
$x->send("<starttls xmlns='$TLS_NS'/>");
ok($x->closed(), 'starttls inside direct TLS: the stream ends');
like($x->buffer() =~ s/^.*<\/stream:features>//sr,
	qr!^(?:<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>|<stream:error>.*</stream:error>)(?:</stream:stream>)?$!s,
	'starttls inside direct TLS: failure or stream error');

# no client certificate: dialback over direct TLS

($x, $f) = direct('fabrikam.example', undef);
$port{dialback} = $x->sockport();

ok(defined $f && !has_feature($f, 'mechanisms'),
	'no client certificate: no mechanisms');
ok(has_feature($f, 'dialback'), 'no client certificate: dialback');
like(dialback($x, 'fabrikam.example'), qr/type='valid'/,
	'dialback over direct TLS');
$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='direct2'/></stream:stream>");
ok(wait_for_file("$d/gateway.log", "id='direct2'"),
	'dialback over direct TLS: relayed');
$x->closed();

# certificates that do not authenticate

($x, $f) = direct('untrusted.fabrikam.example', 'untrusted');
ok(defined $f && !has_feature($f, 'mechanisms'), 'untrusted CA: no EXTERNAL');
is(sasl_failure(sasl_external($x)), 'not-authorized',
	'untrusted CA: auth anyway is not-authorized');

($x, $f) = direct('wrong.fabrikam.example', 'wrong');
ok(defined $f && !has_feature($f, 'mechanisms'),
	'certificate of another domain: no EXTERNAL');

($x, $f, $h) = direct('strict.example', undef);
is(defined $h && $x->stream_error(), 'not-authorized',
	'sasl required, dialback off, no certificate: not-authorized');

($x, $f) = direct('strict.example', 'good');
ok(has_feature($f, 'external') && !has_feature($f, 'dialback'),
	'sasl required, dialback off: EXTERNAL only');

# ssl_verify_client optional with ssl_client_certificate

($x, $f) = direct('fabrikam.example', 'good', port => 8082);
ok(has_feature($f, 'external'),
	'ssl_verify_client optional: EXTERNAL offered');
is(sasl_external($x), "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
	'ssl_verify_client optional: success');

($x, $f) = direct('fabrikam.example', undef, port => 8082);
ok(defined $f && !has_feature($f, 'mechanisms'),
	'ssl_verify_client optional, no certificate: no EXTERNAL');

###############################################################################

$x = undef;

my $line = log_lines("$d/x.log", \%port);

is($line->{external}, 'fabrikam.example|direct|external',
	'log: direct, external');
is($line->{dialback}, 'fabrikam.example|direct|dialback',
	'log: direct, dialback');

$t->stop();

my $log = $t->read_file('error.log');

like($log, qr/SASL EXTERNAL not offered to "untrusted\.fabrikam\.example": (?:unable to get local issuer certificate|unable to verify the first certificate|self.signed certificate in certificate chain)/,
	'log: untrusted CA');
like($log, qr/SASL EXTERNAL not offered to "wrong\.fabrikam\.example": (?:the )?certificate does not name the domain/,
	'log: wrong domain');
like($log, qr/SASL EXTERNAL not offered to "strict\.example": no client certificate/,
	'log: no client certificate');
like($log, qr/SASL EXTERNAL not offered to "fabrikam\.example": no client certificate/,
	'log: no client certificate, dialback partner');

###############################################################################
