#!/usr/bin/perl

# Inbound federation end to end with real servers over TLS, the sibling of
# xmpp_real.t: a partner Prosody (fabrikam.example, s2s_secure_auth) and a
# partner ejabberd (litware.example, s2s_use_starttls: required), both with
# certificates from a CA made at test time, federate through the edge
# with a gateway Prosody (contoso.example), which the edge reaches by
# plaintext dialback as in xmpp_real.t. Both partners use SASL EXTERNAL.
# Prosody's partner policy is "tls required; sasl required; dialback off"
# (row 2 of the negotiation matrix: SASL over TLS only); ejabberd's is
# "tls required; sasl optional; dialback on" (row 7: SASL over TLS, else
# TLS dialback).
#
# The same partners with a certificate for another domain (wrong.example,
# same CA) get no SASL EXTERNAL and are refused: Prosody by the edge's
# policy (SASL required, no usable certificate: not-authorized), ejabberd
# because its dialback fallback needs TLS on the edge's verification
# stream too. Nothing reaches the gateway, the sender gets an error.
#
# Split-horizon DNS from two dnsmasq instances; slixmpp clients.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::Nginx qw/ port /;
use Test::XMPP::PKI;
use Test::XMPP::Servers;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/stream xmpp_federation/)
	->has_daemon('prosody')->has_daemon('dnsmasq');
Test::XMPP::Servers->has(qw/ prosody dnsmasq slixmpp /);

plan(skip_all => Test::XMPP::PKI::missing()) if Test::XMPP::PKI::missing();

my $xs = Test::XMPP::Servers->new($t);
my $d = $t->testdir();

my %p = map { $_ => Test::XMPP::Servers::free_port() }
	qw/ gw_s2s gw_c2s pt_s2s pt_c2s ej_s2s ej_c2s dns_world dns_gw /;

# the edge's two listeners come from the harness

my ($edge_public, $edge_internal) = (port(8080), port(8081));

# the test CA; the partners' certificates name their domains, the wrong
# ones another domain of the same CA

my $pki = Test::XMPP::PKI->new($d);
$pki->ca('ca');

my %cert = map {
	my ($name, $domain) = @$_;
	$name => $pki->cert($name, ca => 'ca', cn => $domain,
		dns => [ $domain ], key => 'ec')
} [ contoso => 'contoso.example' ], [ fabrikam => 'fabrikam.example' ],
	[ litware => 'litware.example' ], [ wrong => 'wrong.example' ];

my $ca = $pki->get('ca')->{cert};

# ejabberd takes certificate, key and chain in one file

for my $n (qw/ litware wrong /) {
	$cert{$n}{pem} = "$d/pki/$n.all.pem";
	open(my $fh, '>', $cert{$n}{pem}) or die "$cert{$n}{pem}: $!\n";
	print $fh map { $t->read_file("pki/$_") } "$n.crt", "$n.key", 'ca.crt';
	close $fh;
}

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    resolver 127.0.0.1:$p{dns_world} ipv6=off;

    log_format xmpp '\$xmpp_from|\$xmpp_to|\$xmpp_partner|\$xmpp_tls|'
                    '\$xmpp_auth|\$xmpp_stream_error';
    access_log %%TESTDIR%%/access.log xmpp;

    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "real servers tls test";

    xmpp_federation_partner fabrikam.example {
        type federated;
        tls required;
        sasl required;
        dialback off;
    }

    xmpp_federation_partner litware.example {
        type federated;
        tls required;
        sasl optional;
        dialback on;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:$p{gw_s2s};

        xmpp_federation_certificate $cert{contoso}{cert};
        xmpp_federation_certificate_key $cert{contoso}{key};
        xmpp_federation_trusted_certificate $ca;

        # a chain's verdict is kept: the names are still checked each
        # time, so the certificate for the wrong domain stays refused
        xmpp_federation_verify_cache 16;
    }

    server {
        listen 127.0.0.1:%%PORT_8081%%;
        allow 127.0.0.1;
        deny all;
        xmpp_federation outbound;
        xmpp_federation_pass 127.0.0.1:$p{gw_s2s};
    }
}

EOF

# ejabberd resolves SRV targets with getaddrinfo(): contoso.example, which
# the partners look up, names 127.0.0.1 itself

my $world = $xs->dnsmasq(name => 'world', port => $p{dns_world}, records => [
	[ xmpp => 'contoso.example', $edge_public, '127.0.0.1' ],
	[ xmpp => 'fabrikam.example', $p{pt_s2s} ],
	[ xmpp => 'litware.example', $p{ej_s2s} ],
]);

my $gwdns = $xs->dnsmasq(name => 'gateway', port => $p{dns_gw}, xmpp => {
	'contoso.example' => $p{gw_s2s},
	'fabrikam.example' => $edge_internal,
	'litware.example' => $edge_internal,
});

$t->try_run('no xmpp_federation')->plan(27);

my $gw = $xs->prosody(name => 'gateway', domain => 'contoso.example',
	port => $p{gw_s2s}, c2s_port => $p{gw_c2s}, dns => $gwdns->port(),
	users => { alice => 'alice-pw' });

# a partner Prosody that federates only over TLS, with servers whose
# certificates it trusts (s2s_secure_auth)

sub partner_prosody {
	my ($name, $c, $extra) = @_;

	return $xs->prosody(name => $name, domain => 'fabrikam.example',
		port => $p{pt_s2s}, c2s_port => $p{pt_c2s}, dns => $world->port(),
		tls => { certificate => $c->{cert}, key => $c->{key},
			cafile => $ca },
		s2s_secure_auth => 1, extra => $extra,
		users => { bob => 'bob-pw' });
}

# a partner ejabberd that federates only over TLS

sub partner_ejabberd {
	my ($name, $c) = @_;

	return $xs->ejabberd(name => $name, domain => 'litware.example',
		port => $p{ej_s2s}, c2s_port => $p{ej_c2s}, dns => $world->port(),
		tls => { certfile => $c->{pem}, starttls => 'required',
			cafile => $ca },
		users => { carol => 'carol-pw' });
}

# what the edge logs (info level)

sub error_log {
	return $t->read_file('error.log');
}

# waits until the edge has logged it: the partner's s2s stream runs on
# its own, after the client's send

sub edge_logged {
	my ($re, $secs) = @_;

	my $deadline = time() + ($secs // 5);

	while (1) {
		return 1 if error_log() =~ $re;
		return 0 if time() > $deadline;
		select(undef, undef, undef, 0.1);
	}
}

sub authenticated {
	my ($how, $domain) = @_;
	return qr/\Q$how: "$domain" authenticated for "contoso.example"\E/;
}

sub not_offered {
	my ($domain) = @_;
	my $text = "SASL EXTERNAL not offered to \"$domain\": "
		. 'the certificate does not name the domain';
	return qr/\Q$text\E/;
}

sub count {
	my ($re) = @_;
	my @m = error_log() =~ /$re/g;
	return scalar @m;
}

# the access log: $xmpp_from|$xmpp_to|$xmpp_partner|$xmpp_tls|$xmpp_auth

sub access {
	my ($domain, $tls, $auth) = @_;
	return qr/^\Q$domain|contoso.example|$domain|$tls|$auth|\E/m;
}

###############################################################################

my $alice = $xs->receiver(jid => 'alice@contoso.example',
	password => 'alice-pw', c2s => $gw->c2s);

my ($r, @got);
my $delivered = 0;

# Prosody with a certificate for its domain: it trusts the edge's
# certificate, the edge trusts its client certificate: SASL EXTERNAL

my $pt = partner_prosody('fabrikam', $cert{fabrikam});

$r = $xs->send_message(from_jid => 'bob@fabrikam.example',
	password => 'bob-pw', c2s => $pt->c2s, to => 'alice@contoso.example',
	body => 'hello alice, over tls from prosody');
ok($r->{ok}, 'prosody: bob sent') or diag(explain($r));

@got = $alice->wait_for(++$delivered, 15);
is($got[-1] && $got[-1]{body}, 'hello alice, over tls from prosody',
	'prosody: alice received the message through the edge');
is($got[-1] && $got[-1]{from} =~ s!/.*!!r, 'bob@fabrikam.example',
	'prosody: from bob');

ok(edge_logged(authenticated('SASL EXTERNAL', 'fabrikam.example')),
	'prosody: authenticated at the edge by SASL EXTERNAL');
ok($pt->wait_log(qr/SASL EXTERNAL with contoso\.example succeeded/, 5),
	'prosody: its SASL EXTERNAL succeeded');
ok($gw->wait_log(qr/Incoming s2s connection /
		. qr/fabrikam\.example->contoso\.example complete/, 5),
	'prosody: gateway accepted the edge\'s vouching');

# the same Prosody with a certificate for wrong.example: no SASL EXTERNAL,
# and the partner's policy requires SASL: refused

$pt->stop();
$pt = partner_prosody('fabrikam-wrong', $cert{wrong});

$r = $xs->send_message(from_jid => 'bob@fabrikam.example',
	password => 'bob-pw', c2s => $pt->c2s, to => 'alice@contoso.example',
	body => 'wrong certificate', wait => 10);
is($r->{status}, 3, 'prosody, wrong certificate: the sender gets an error')
	or diag(explain($r));

ok(edge_logged(not_offered('fabrikam.example')),
	'prosody, wrong certificate: no SASL EXTERNAL');
ok(edge_logged(qr/XMPP stream error <not-authorized\/>: SASL is required/),
	'prosody, wrong certificate: refused by the edge, not-authorized');

@got = $alice->wait_for($delivered + 1, 1);
is(scalar(@got), $delivered, 'prosody, wrong certificate: not delivered');

# the same Prosody, certificates only (no dialback): refused

$pt->stop();
$pt = partner_prosody('fabrikam-certonly', $cert{wrong},
	"modules_disabled = { \"dialback\" }\n");

$r = $xs->send_message(from_jid => 'bob@fabrikam.example',
	password => 'bob-pw', c2s => $pt->c2s, to => 'alice@contoso.example',
	body => 'wrong certificate, no dialback', wait => 10);
is($r->{status}, 3,
	'prosody, wrong certificate only: the sender gets an error')
	or diag(explain($r));

@got = $alice->wait_for($delivered + 1, 1);
is(scalar(@got), $delivered, 'prosody, wrong certificate only: not delivered');
is(count(not_offered('fabrikam.example')), 2,
	'prosody, wrong certificate only: no SASL EXTERNAL');
is(count(qr/XMPP stream error <not-authorized\/>: SASL is required/), 2,
	'prosody, wrong certificate only: refused by the edge');

$pt->stop();

SKIP: {
	my $missing = Test::XMPP::Servers->missing('ejabberd');
	skip($missing, 10) if $missing;

	# ejabberd with a certificate for its domain: SASL EXTERNAL

	my $ej = partner_ejabberd('litware', $cert{litware});

	$r = $xs->send_message(from_jid => 'carol@litware.example',
		password => 'carol-pw', c2s => $ej->c2s,
		to => 'alice@contoso.example',
		body => 'hello alice, over tls from ejabberd');
	ok($r->{ok}, 'ejabberd: carol sent') or diag(explain($r));

	@got = $alice->wait_for(++$delivered, 15);
	is($got[-1] && $got[-1]{body}, 'hello alice, over tls from ejabberd',
		'ejabberd: alice received the message through the edge');
	is($got[-1] && $got[-1]{from} =~ s!/.*!!r, 'carol@litware.example',
		'ejabberd: from carol');

	ok(edge_logged(authenticated('SASL EXTERNAL', 'litware.example')),
		'ejabberd: authenticated at the edge by SASL EXTERNAL');
	ok($ej->wait_log(qr/Accepted outbound s2s EXTERNAL authentication /
			. qr/litware\.example -> contoso\.example/, 5),
		'ejabberd: its SASL EXTERNAL succeeded');

	# the same ejabberd with a certificate for wrong.example: no SASL
	# EXTERNAL, ejabberd falls back to dialback; the edge's stream to
	# verify the key has no TLS, and ejabberd (s2s_use_starttls:
	# required) ends it with <policy-violation/>: refused

	$ej->stop();
	$ej = partner_ejabberd('litware-wrong', $cert{wrong});

	$r = $xs->send_message(from_jid => 'carol@litware.example',
		password => 'carol-pw', c2s => $ej->c2s,
		to => 'alice@contoso.example',
		body => 'wrong certificate', wait => 10);
	is($r->{status}, 3,
		'ejabberd, wrong certificate: the sender gets an error')
		or diag(explain($r));

	@got = $alice->wait_for($delivered + 1, 1);
	is(scalar(@got), $delivered,
		'ejabberd, wrong certificate: not delivered');
	ok(edge_logged(not_offered('litware.example')),
		'ejabberd, wrong certificate: no SASL EXTERNAL');
	ok(edge_logged(
		qr/dialback: "litware\.example" refused for "contoso\.example"/),
		'ejabberd, wrong certificate: dialback refused at the edge');
	ok($ej->wait_log(qr/Use of STARTTLS required/, 5),
		'ejabberd, wrong certificate: no dialback without TLS');

	$ej->stop();
}

# the partners' streams have ended, all are logged

$alice->stop();
$xs->stop_all();
$t->stop();

my $log = $t->read_file('access.log');

like($log, access('fabrikam.example', 'starttls', 'external'),
	'access log: prosody, starttls and external');
like($log, qr/^fabrikam\.example\|contoso\.example\|fabrikam\.example\|starttls\|\|not-authorized$/m,
	'access log: prosody, wrong certificate, starttls and not-authorized');

SKIP: {
	skip('no ejabberd', 1) if Test::XMPP::Servers->missing('ejabberd');

	like($log, access('litware.example', 'starttls', 'external'),
		'access log: ejabberd, starttls and external');
}

###############################################################################
