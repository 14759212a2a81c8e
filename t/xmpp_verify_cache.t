#!/usr/bin/perl

# xmpp_federation_verify_cache: the verdict on a client certificate chain
# kept from one stream to the next.  A chain that verified is not verified
# again while its entry lives; the key is every certificate the peer sent;
# the cache is bounded (least recently used out) and entries end after
# "valid"; chains that fail (revoked, expired, untrusted) are never kept
# and are refused every time; off by default.  STARTTLS and direct TLS.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::Nginx qw/ port /;
use Test::Nginx::XMPP qw/ xmpp /;
use Test::XMPP::PKI;
use Test::XMPP::Peers qw/ :all /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/stream socket_ssl/);

plan(skip_all => Test::XMPP::PKI::missing()) if Test::XMPP::PKI::missing();

my $d = $t->testdir();

my $pki = Test::XMPP::PKI->new($d);

$pki->ca('root');
$pki->ca('evil');
$pki->intermediate('int1', ca => 'root');

$pki->cert('edge', ca => 'root', cn => 'contoso.example',
	dns => [ 'contoso.example' ], key => 'ec');

my %certs = (
	good => [ root => dns => [ 'fabrikam.example' ] ],
	other => [ root => dns => [ 'fabrikam.example' ] ],
	revoked => [ root => dns => [ 'fabrikam.example' ] ],
	expired => [ root => dns => [ 'fabrikam.example' ],
		not_before => -30, not_after => -1 ],
	untrusted => [ evil => dns => [ 'fabrikam.example' ] ],
);

for my $name (sort keys %certs) {
	my ($ca, %o) = @{$certs{$name}};
	$pki->cert($name, ca => $ca, key => 'ec', %o);
}

$pki->revoke('revoked');
my $crl = $pki->crl('root');

# the good leaf, sent with a certificate the chain does not need

my $extra = $pki->bundle('good-extra.crt', 'good', 'int1');

my $edge = $pki->get('edge');

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "a secret for the cache tests";

    xmpp_federation_partner fabrikam.example {
        type     federated;
        tls      required;
        sasl     required;
        dialback off;
    }

    xmpp_federation_certificate         $edge->{cert};
    xmpp_federation_certificate_key     $edge->{key};
    xmpp_federation_trusted_certificate $d/pki/root.crt;

    # one chain kept, CRL checked
    server {
        listen               127.0.0.1:%%PORT_8080%%;
        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_crl  $crl;
        xmpp_federation_verify_cache 1;
    }

    server {
        listen               127.0.0.1:%%PORT_8081%%;
        xmpp_federation      outbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
    }

    # verdicts for three seconds
    server {
        listen               127.0.0.1:%%PORT_8082%%;
        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_verify_cache 4 valid=3s;
    }

    # the default: no cache
    server {
        listen               127.0.0.1:%%PORT_8083%%;
        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
    }

    # direct TLS
    server {
        listen               127.0.0.1:%%PORT_8084%% ssl;

        ssl_certificate      $edge->{cert};
        ssl_certificate_key  $edge->{key};
        ssl_verify_client    optional_no_ca;
        ssl_alpn             xmpp-server;

        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_verify_cache 4;
    }
}

EOF

$t->run_daemon(\&gateway, port(8091), port(8081), "$d/gateway.log");
$t->try_run('no xmpp_federation_verify_cache')->plan(30);

$t->waitforsocket('127.0.0.1:' . port(8091));

###############################################################################

sub cert_opts {
	my ($name) = @_;

	return (SSL_cert_file => $extra, SSL_key_file => $pki->get('good')->{key})
		if $name eq 'good-extra';

	my $c = $pki->get($name) or die "no certificate $name\n";
	return (SSL_cert_file => $c->{chain}, SSL_key_file => $c->{key});
}

# STARTTLS (or direct TLS) with the client certificate $cert, SASL
# EXTERNAL: 1 on <success/>, or what went wrong

sub external {
	my ($cert, %o) = @_;

	my $x = xmpp('127.0.0.1:' . port($o{port} // 8080));
	my $f;

	if ($o{direct}) {
		$x->starttls(SSL_hostname => 'contoso.example',
			SSL_alpn_protocols => [ 'xmpp-server' ],
			cert_opts($cert)) or return 'no TLS';

	} else {
		stream_open($x, from => 'fabrikam.example');
		return 'no TLS' unless tls($x, cert_opts($cert));
	}

	(undef, $f) = stream_open($x, from => 'fabrikam.example');

	return 'not offered: ' . ($f // $x->buffer())
		unless has_feature($f, 'external');

	my $r = sasl_external($x);
	return "auth: " . ($r // '(nothing)') unless defined $r && $r
		eq "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>";

	$x->send('</stream:stream>');
	$x->closed();

	return 1;
}

# the authentications logged so far, and of them those of a chain
# verified earlier; the line is logged before <success/> is sent

sub verdicts {
	my $log = $t->read_file('error.log');

	my $all = () = $log =~ /SASL\ EXTERNAL:\ "fabrikam\.example"
		\ authenticated\ for\ "contoso\.example"/gx;
	my $cached = () = $log =~ /authenticated\ for\ "contoso\.example"
		\ \(certificate\ chain\ verified\ earlier\)/gx;

	return "$all/$cached";
}

###############################################################################

# one entry: kept, used, pushed out by another chain

is(external('good'), 1, 'first stream: accepted');
is(verdicts(), '1/0', 'first stream: the chain verified');

is(external('good'), 1, 'second stream, same chain: accepted');
is(verdicts(), '2/1', 'second stream: the verdict of the first');

is(external('other'), 1, 'another certificate: accepted');
is(verdicts(), '3/1', 'another certificate: verified');

is(external('good'), 1, 'the first again: accepted');
is(verdicts(), '4/1', 'the first again: verified, its entry was taken');

is(external('good'), 1, 'and once more');
is(verdicts(), '5/2', 'once more: kept again');

# the key is the whole chain as sent

is(external('good-extra'), 1, 'same leaf, one more certificate: accepted');
is(verdicts(), '6/2', 'same leaf, one more certificate: verified');

is(external('good-extra'), 1, 'that chain again: accepted');
is(verdicts(), '7/3', 'that chain again: kept');

# what fails is never kept

like(external('revoked'), qr/^not offered/, 'revoked: refused');
like(external('revoked'), qr/^not offered/, 'revoked again: refused');
like(external('expired'), qr/^not offered/, 'expired: refused');
like(external('expired'), qr/^not offered/, 'expired again: refused');
like(external('untrusted'), qr/^not offered/, 'untrusted: refused');
like(external('untrusted'), qr/^not offered/, 'untrusted again: refused');

is(verdicts(), '7/3', 'no failure authenticated');

# valid=3s: the two streams within it (a second is ngx_time()'s step)

external('good', port => 8082);
external('good', port => 8082);
is(verdicts(), '9/4', 'valid=3s: kept');

select undef, undef, undef, 4.2;

external('good', port => 8082);
is(verdicts(), '10/4', 'valid=3s, after 4s: verified again');

# off by default

external('good', port => 8083);
external('good', port => 8083);
is(verdicts(), '12/4', 'no xmpp_federation_verify_cache: never kept');

# direct TLS

is(external('good', port => 8084, direct => 1), 1, 'direct TLS: accepted');
is(external('good', port => 8084, direct => 1), 1, 'direct TLS again');
is(verdicts(), '14/5', 'direct TLS: the verdict kept');

# room for four: another chain does not push the first out

is(external('other', port => 8084, direct => 1), 1, 'direct TLS, another');
is(external('good', port => 8084, direct => 1), 1, 'direct TLS, the first');
is(verdicts(), '16/6', 'four places: the first kept beside another');

###############################################################################
