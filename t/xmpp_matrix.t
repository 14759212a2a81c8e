#!/usr/bin/perl

# Lync's negotiation matrix (DESIGN.md section 1, all 18 rows) at run time:
# one partner per valid row (r01.example ... r17.example) in one nginx, and
# two scripted partners that choose by the features they see:
#
#   peer A offers everything: STARTTLS, a client certificate naming every
#   row's domain, dialback with a key the authoritative server accepts;
#   it takes STARTTLS if offered, then SASL EXTERNAL if offered, else
#   dialback if offered, else it has no way in;
#
#   peer B offers only dialback without TLS: it takes dialback if offered
#   before TLS and STARTTLS is not required, else it has no way in (and
#   the edge must refuse the dialback it tries anyway).
#
# The method peer A ends up with is the first of the row's expected
# methods; peer B gets TCP dialback where the row lists it. Every
# authenticated session proves itself with a stanza at the gateway. The
# five invalid rows are refused by nginx -t.

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

my $t = Test::Nginx->new()->has(qw/stream socket_ssl/);

plan(skip_all => Test::XMPP::PKI::missing()) if Test::XMPP::PKI::missing();

my $d = $t->testdir();

# DESIGN.md section 1, in Lync's order: tls, sasl, dialback, expected

my @matrix = (
	[ qw/ required      required      on  /, 'SASL over TLS' ],
	[ qw/ required      required      off /, 'SASL over TLS' ],
	[ qw/ optional      required      on  /,
		'SASL over TLS, TLS dialback, TCP dialback' ],
	[ qw/ optional      required      off /, 'SASL over TLS' ],
	[ qw/ not_supported required      on  /, 'TCP dialback' ],
	[ qw/ not_supported required      off /, '-' ],
	[ qw/ required      optional      on  /, 'SASL over TLS, TLS dialback' ],
	[ qw/ required      optional      off /, 'SASL over TLS' ],
	[ qw/ optional      optional      on  /,
		'SASL over TLS, TLS dialback, TCP dialback' ],
	[ qw/ optional      optional      off /, 'SASL over TLS' ],
	[ qw/ not_supported optional      on  /, 'TCP dialback' ],
	[ qw/ not_supported optional      off /, '-' ],
	[ qw/ required      not_supported on  /, 'TLS dialback' ],
	[ qw/ required      not_supported off /, '-' ],
	[ qw/ optional      not_supported on  /, 'TLS dialback, TCP dialback' ],
	[ qw/ optional      not_supported off /, '-' ],
	[ qw/ not_supported not_supported on  /, 'TCP dialback' ],
	[ qw/ not_supported not_supported off /, '-' ],
);

my (@valid, @invalid);

for my $i (0 .. $#matrix) {
	my ($tls, $sasl, $db, $expected) = @{$matrix[$i]};

	my $row = {
		n => $i + 1,
		domain => sprintf('r%02d.example', $i + 1),
		tls => $tls, sasl => $sasl, dialback => $db,
		expected => $expected,
	};

	push @{$expected eq '-' ? \@invalid : \@valid}, $row;
}

sub partner_block {
	my ($r) = @_;

	return <<"EOF";
    xmpp_federation_partner $r->{domain} {
        description "row $r->{n}";
        type        federated;
        tls         $r->{tls};
        sasl        $r->{sasl};
        dialback    $r->{dialback};
        server      127.0.0.1:%%PORT_8090%%;
    }
EOF
}

# the PKI: the edge's certificate, peer A's certificate for every row

my $pki = Test::XMPP::PKI->new($d);
$pki->ca('root');
my $edge = $pki->cert('edge', ca => 'root', key => 'ec',
	dns => [ 'contoso.example' ]);
my $peer_a = $pki->cert('peer-a', ca => 'root', key => 'ec',
	cn => 'peer A', dns => [ map { $_->{domain} } @valid ]);

my $partners = join("\n", map { partner_block($_) } @valid);

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "a secret for the matrix tests";

$partners
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
}

EOF

# each invalid row alone, next to a valid one

for my $r (@invalid) {
	my $block = partner_block($r);
	my $ok_block = partner_block($valid[0]);

	$t->write_file_expand("row$r->{n}.conf", <<"EOF");

%%TEST_GLOBALS%%

events {
}

stream {
    xmpp_federation_local_domains contoso.example;

$ok_block
$block
    server {
        listen               127.0.0.1:%%PORT_8080%%;
        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
    }
}

EOF
}

$t->run_daemon(\&authoritative, port(8090));
$t->run_daemon(\&gateway, port(8091), port(8081), "$d/gateway.log");
$t->try_run('no xmpp_federation TLS')->plan(2 * @valid + @invalid + 5);

$t->waitforsocket('127.0.0.1:' . port(8090));
$t->waitforsocket('127.0.0.1:' . port(8091));

###############################################################################

my %port;

sub peer {
	my ($tag) = @_;
	my $x = xmpp('127.0.0.1:' . port(8080));
	$port{$tag} = $x->sockport();
	return $x;
}

# an authenticated stream proves itself: a stanza at the gateway, then
# the end of the stream

sub prove {
	my ($x, $domain, $tag, $method) = @_;

	my $id = "$domain-$tag";

	$x->send("<message from='bob\@$domain' to='alice\@contoso.example'"
		. " id='$id'><body>$method</body></message>");

	my $ok = wait_for_file("$d/gateway.log", "id='$id'");

	$x->send('</stream:stream>');
	$x->closed();

	return $ok ? $method : "$method, but the stanza did not arrive";
}

sub peer_a {
	my ($domain) = @_;

	my $x = peer("$domain-A");

	my ($h, $f) = stream_open($x, from => $domain);
	return 'refused: ' . $x->buffer() unless defined $f;

	my $tls = 0;

	if (has_feature($f, 'starttls')) {
		my $ok = tls($x, SSL_cert_file => $peer_a->{cert},
			SSL_key_file => $peer_a->{key});
		return 'STARTTLS failed: ' . ($x->{tls_answer} // '') unless $ok;

		($h, $f) = stream_open($x, from => $domain);
		return 'refused after TLS: ' . $x->buffer() unless defined $f;

		$tls = 1;
	}

	if ($tls && has_feature($f, 'external')) {
		my $r = sasl_external($x) // '(nothing)';
		return "SASL failed: $r" unless $r =~ /^<success /;

		($h, $f) = stream_open($x, from => $domain);
		return 'no stream after SASL: ' . $x->buffer() unless defined $f;

		return prove($x, $domain, 'A', 'SASL over TLS');
	}

	if (has_feature($f, 'dialback')) {
		my $r = dialback($x, $domain) // '(nothing)';
		return "dialback failed: $r" unless $r =~ /type='valid'/;

		return prove($x, $domain, 'A',
			$tls ? 'TLS dialback' : 'TCP dialback');
	}

	$x->close();
	return 'refused';
}

sub peer_b {
	my ($domain) = @_;

	my $x = peer("$domain-B");

	my ($h, $f) = stream_open($x, from => $domain);
	return 'refused: ' . $x->buffer() unless defined $f;

	my $offered = has_feature($f, 'dialback') && !has_feature($f, 'required');

	# dialback is tried anyway: the edge must refuse what it did not offer
	my $r = dialback($x, $domain);
	my $valid = defined $r && $r =~ /^<db:result [^>]*type='valid'/;

	if ($offered) {
		return 'dialback failed: ' . ($r // '(nothing)') unless $valid;
		return prove($x, $domain, 'B', 'TCP dialback');
	}

	$x->close();

	return $valid ? 'TCP dialback, although not offered' : 'refused';
}

###############################################################################

my %outcome;

for my $r (@valid) {
	my ($first) = split(/, /, $r->{expected});
	my $name = "row $r->{n} tls=$r->{tls} sasl=$r->{sasl}"
		. " dialback=$r->{dialback}";

	is($outcome{"$r->{domain}-A"} = peer_a($r->{domain}), $first,
		"$name: peer A gets $first");

	my $b = $r->{expected} =~ /TCP dialback/ ? 'TCP dialback' : 'refused';

	is($outcome{"$r->{domain}-B"} = peer_b($r->{domain}), $b,
		"$name: peer B (dialback only, no TLS) $b");
}

# $xmpp_tls and $xmpp_auth for some

my $line = log_lines("$d/x.log", {
	map { $_ => $port{$_} } qw/ r02.example-A r13.example-A r17.example-A
		r03.example-B r01.example-B /
});

is($line->{'r02.example-A'}, 'r02.example|starttls|external',
	'log: row 2, SASL over TLS');
is($line->{'r13.example-A'}, 'r13.example|starttls|dialback',
	'log: row 13, TLS dialback');
is($line->{'r17.example-A'}, 'r17.example||dialback',
	'log: row 17, TCP dialback');
is($line->{'r03.example-B'}, 'r03.example||dialback',
	'log: row 3, peer B, TCP dialback');
is($line->{'r01.example-B'}, 'r01.example||',
	'log: row 1, peer B refused, not authenticated');

# the invalid rows

for my $r (@invalid) {
	my ($ok, $out) = $t->test_config("row$r->{n}.conf");

	ok(!$ok && $out =~ /\[emerg\] [^\n]*\Q$r->{domain}\E/,
		"row $r->{n} tls=$r->{tls} sasl=$r->{sasl}"
		. " dialback=$r->{dialback}: nginx -t refuses")
		or diag($out);
}

###############################################################################
