#!/usr/bin/perl

# "xmpp_federation_preread on" in a server where the module is also the
# content handler ("xmpp_federation inbound"): the bytes the preread phase
# has read (the header, and whatever came with it) are the beginning of
# the stream the edge negotiates and relays, whole or in pieces; a header
# the preread phase refused ends the stream with its error.  nginx 1.25.5
# and later peek in the preread phase, earlier versions read: both leave
# the bytes to the content handler, which gives back the preread buffer.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use Time::HiRes qw/ time sleep /;

use Test::Nginx qw/ port scaled /;
use Test::Nginx::XMPP qw/ xmpp /;
use Test::XMPP::Peers qw/ authoritative gateway next_element
	wait_for_file /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/stream xmpp_federation/);

# 8080: inbound with the preread sniffer; 8081: the internal listener the
# gateway verifies the edge's key at

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "a long random secret for preread";

    xmpp_federation_partner fabrikam.example {
        tls      not_supported;
        sasl     not_supported;
        dialback on;
        server   127.0.0.1:%%PORT_8090%%;
    }

    log_format x '$remote_port|$xmpp_from|$xmpp_partner|$xmpp_auth|'
                 '$xmpp_stream_error';

    access_log %%TESTDIR%%/x.log x;

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        xmpp_federation inbound;
        xmpp_federation_preread on;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
    }

    server {
        listen 127.0.0.1:%%PORT_8081%%;
        xmpp_federation outbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
    }
}

EOF

my $d = $t->testdir();

$t->run_daemon(\&authoritative, port(8090));
$t->run_daemon(\&gateway, port(8091), port(8081), "$d/gateway.log");
$t->try_run('no xmpp_federation')->plan(9);

$t->waitforsocket('127.0.0.1:' . port(8090));
$t->waitforsocket('127.0.0.1:' . port(8091));

###############################################################################

my $HDR = Test::Nginx::XMPP->header(from => 'fabrikam.example',
	to => 'contoso.example', db => 1);
my $RESULT = "<db:result from='fabrikam.example' to='contoso.example'>"
	. "goodkey</db:result>";

sub msg {
	my ($id) = @_;
	return "<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
		. " id='$id'><body>through the preread phase</body></message>";
}

# the partner's stream, its first bytes written as given: the dialback
# answer, then a stanza that the gateway must receive as sent

sub session {
	my ($id, @first) = @_;

	my $x = xmpp('127.0.0.1:' . port(8080));

	for my $chunk (@first) {
		if (ref $chunk) {
			$x->send_slowly($$chunk, 0.002);
		} else {
			$x->send($chunk);
		}
	}

	$x->send($RESULT) unless grep { !ref && /db:result/ } @first;

	my $h = $x->read_header(timeout => 5)
		// return 'no stream header back';
	my $f = next_element($x, timeout => 5) // '(nothing)';
	return "features: $f" unless $f =~ /^<stream:features/;

	my $r = next_element($x, timeout => 8) // '(nothing)';
	return "dialback: $r" unless $r =~ /type=['"]valid['"]/;

	$x->send(msg($id));

	return wait_for_file("$d/gateway.log", msg($id)) ? 'delivered'
		: 'not delivered';
}

is(session('p1', $HDR), 'delivered', 'header alone, read by preread');
is(session('p2', $HDR . $RESULT), 'delivered',
	'header and db:result in one write');
is(session('p3', \$HDR), 'delivered', 'header byte by byte');
is(session('p4', substr($HDR, 0, 20), substr($HDR, 20) . $RESULT),
	'delivered', 'header in two writes, db:result with the second');

# a header the preread phase refuses: the content handler says why

my $x = xmpp('127.0.0.1:' . port(8080));
$x->send(Test::Nginx::XMPP->header(from => 'fabrikam.example',
	to => 'litware.example', db => 1));
is($x->stream_error(timeout => 5), 'host-unknown',
	'unknown local domain: host-unknown');
ok($x->closed(), 'closed after the stream error');
$x->close();

# what the log says of these streams

wait_for_file("$d/x.log", 'host-unknown');
$t->stop();

my $log = $t->read_file('x.log');
my @ok = $log =~ /^\d+\|fabrikam\.example\|fabrikam\.example\|dialback\|-$/mg;
is(scalar @ok, 4, 'four streams authenticated by dialback');
like($log, qr/^\d+\|fabrikam\.example\|[^|]*\|[^|]*\|host-unknown$/m,
	'the refused stream logged with its error');
unlike($t->read_file('gateway.log'), qr/litware/,
	'nothing of the refused stream reached the gateway');

###############################################################################
